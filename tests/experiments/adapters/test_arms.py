"""The adapters study's arms: LoKr budget matching (counted on built PEFT models), the
models each arm trains, and the learning-rate pick."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("peft")

from peft import LoKrConfig, get_peft_model

from torchkron.experiments.adapters import arms as arms_module
from torchkron.experiments.adapters.arms import (
    Arm,
    Candidate,
    adapted_model,
    closest,
    kron_shapes,
    lokr_candidates,
    study_arms,
    trainable,
)
from torchkron.experiments.adapters.report import picks
from torchkron.experiments.adapters.runner import extension_jobs, next_rate
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.mnist.variants import MLP, build_mlp, get_variant

TARGETS = ["hidden", "output"]


def _small() -> MLP:
    torch.manual_seed(0)
    return MLP(nn.Linear(16, 12), nn.Linear(12, 6))


def test_candidates_count_what_peft_builds_and_their_shapes_multiply_out():
    base = _small()
    found = lokr_candidates(base, factors=(-1, 2, 3, 4), ranks=range(1, 9))
    assert len(found) > 5
    seen = set()
    for c in found:
        model = get_peft_model(copy.deepcopy(base), LoKrConfig(**c.options, target_modules=TARGETS))
        assert (
            c.count
            == trainable(model)
            == sum(p.numel() for n, p in model.named_parameters() if "lokr_" in n)
        )
        for name, (w1, w2) in c.shapes.items():
            layer = base.get_submodule(name.rsplit(".", 1)[-1])
            assert (w1[0] * w2[0], w1[1] * w2[1]) == (layer.out_features, layer.in_features)
        key = tuple(sorted(c.shapes.items())), c.count
        assert key not in seen  # configs that build the same model are kept once
        seen.add(key)


def test_kron_shapes_reads_low_rank_factors_as_whole_matrices():
    model = get_peft_model(
        _small(), LoKrConfig(r=1, decompose_factor=-1, decompose_both=True, target_modules=TARGETS)
    )
    shapes = kron_shapes(model)
    assert shapes == {
        "base_model.model.hidden": ((3, 4), (4, 4)),
        "base_model.model.output": ((2, 3), (3, 4)),
    }


def _cand(count: int, w1: tuple[int, int], r: int) -> Candidate:
    return Candidate({"r": r}, count, {"layer": (w1, (5, 5))})


def test_closest_picks_the_nearest_true_kronecker_config():
    tiled = _cand(1000, (1, 4), 1)  # a 1-row factor: a tiled low-rank delta, not Kronecker
    low, high, tie = _cand(950, (2, 4), 2), _cand(1040, (2, 4), 3), _cand(1050, (2, 4), 4)
    assert not tiled.kronecker
    assert low.kronecker
    assert closest([tiled, low, high, tie], 1000) is high
    assert closest([tiled, low, high, tie], 1000 + 5) is high  # 1045: 5 from both, first wins
    assert closest([low, tie], 1000) is low
    with pytest.raises(UserError, match="No LoKr config makes a true Kronecker delta"):
        closest([tiled], 1000)


def test_study_arms_match_every_lora_budget_within_ten_percent(monkeypatch):
    # The search narrowed to the factors the full search picks (and the balanced one).
    monkeypatch.setattr(arms_module, "SEARCH_FACTORS", (-1, 6, 8, 112))
    arms = study_arms([1, 4, 16])
    assert [a.method for a in arms] == ["lora", "lokr"] * 3 + ["full", "scratch"]
    source = build_mlp(get_variant("original")).state_dict()
    for lora, lokr in zip(arms[0:6:2], arms[1:6:2], strict=True):
        budget = trainable(adapted_model(lora, source, 0))
        count = trainable(adapted_model(lokr, source, 0))
        assert lokr.budget == lora.name
        assert lokr.matching["budget_count"] == budget
        assert lokr.matching["count"] == count
        assert abs(count - budget) <= 0.1 * budget
    assert [a.name for a in arms[1:6:2]] == ["lokr-f112-r9-both", "lokr-f8-r23", "lokr-f6-r97"]
    assert arms[1].matching["balanced_max"] < trainable(adapted_model(arms[0], source, 0))


def test_adapted_models_start_at_the_source_and_train_what_they_should():
    torch.manual_seed(1)
    source = build_mlp(get_variant("original"))
    state = source.state_dict()
    x = torch.randn(5, 784)
    lora = adapted_model(Arm("lora-r2", "lora", {"r": 2}, "lora-r2"), state, 0)
    options = {"r": 3, "decompose_factor": 8, "decompose_both": False}
    lokr = adapted_model(Arm("lokr", "lokr", options, "lora-r2"), state, 0)
    for model in (lora, lokr):
        torch.testing.assert_close(model(x), source(x))  # zero deltas at init
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert any(n.endswith("hidden.base_layer.weight") for n in frozen)
        assert any(n.endswith("output.base_layer.bias") for n in frozen)
    # Both LoKr layers run accelerated (restore lists them), and compute PEFT's own delta:
    # compare with PEFT's forward once the factors are no longer at their init.
    from torchkron.integrations.peft import restore

    with torch.no_grad():
        for p in lokr.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    fast = lokr(x)
    assert restore(lokr) == ["base_model.model.hidden", "base_model.model.output"]
    torch.testing.assert_close(fast, lokr(x), rtol=1e-5, atol=1e-5)
    full = adapted_model(Arm("full", "full"), state, 0)
    assert trainable(full) == sum(p.numel() for p in source.parameters())
    torch.testing.assert_close(full(x), source(x))
    scratch = adapted_model(Arm("scratch", "scratch"), None, 0)
    assert not torch.allclose(scratch(x), source(x))
    with pytest.raises(UserError, match="Arm full adapts the source model, but none was given"):
        adapted_model(Arm("full", "full"), None, 0)


def _record(arm: str, lr: float, seed: int, val: float | None) -> dict:
    return {
        "arm": {"name": arm},
        "lr": lr,
        "seed": seed,
        "diverged": val is None,
        "history": {"val_accuracy": [] if val is None else [50.0, val]},
    }


def test_picks_take_the_best_validation_accuracy_of_the_tuning_seed():
    records = [
        _record("a", 1e-3, 0, 80.0),
        _record("a", 3e-3, 0, 85.0),
        _record("a", 1e-2, 0, None),  # diverged: never picked
        _record("a", 1e-4, 1, 99.0),  # a reported seed: not part of the search
        _record("b", 1e-3, 0, 70.0),
        _record("b", 3e-4, 0, 70.0),  # a tie: the smaller rate
        _record("c", 1e-3, 0, None),  # every rate diverged: no pick
    ]
    assert picks(records) == {"a": 3e-3, "b": 3e-4}


def test_next_rate_walks_the_one_three_ten_ladder():
    assert [next_rate(x, True) for x in (1e-2, 3e-2, 3e-4, 0.1)] == [3e-2, 0.1, 1e-3, 0.3]
    assert [next_rate(x, False) for x in (3e-4, 1e-3, 1e-2, 0.3)] == [1e-4, 3e-4, 3e-3, 0.1]


def test_an_arm_picked_at_an_edge_of_its_rates_tries_the_next_rate_beyond():
    arms = [Arm(name, "full") for name in ("top", "bottom", "inside", "beyond", "dead")]
    records = [
        _record("top", 1e-3, 0, 80.0),
        _record("top", 1e-2, 0, 85.0),
        _record("bottom", 1e-3, 0, 90.0),
        _record("bottom", 1e-2, 0, 85.0),
        _record("inside", 1e-3, 0, 80.0),
        _record("inside", 3e-3, 0, 90.0),
        _record("inside", 1e-2, 0, 85.0),
        _record("beyond", 1e-2, 0, 90.0),
        _record("beyond", 3e-2, 0, None),  # the step beyond diverged: 1e-2 is inside now
        _record("beyond", 1e-3, 0, 80.0),
        _record("dead", 1e-3, 0, None),
    ]
    jobs = extension_jobs(arms, records)
    assert [(j.arm.name, j.lr, j.seed) for j in jobs] == [("top", 3e-2, 0), ("bottom", 3e-4, 0)]
