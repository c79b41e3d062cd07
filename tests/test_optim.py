"""torchkron.optim: structure-aware parameter groups.

The property the multipliers exist for (one AdamW step moves a structured layer's
features about as much as a dense layer's, at every width) is measured on the cases of
``benchmarks/feature_updates.py``; the rest checks which tensor gets what and the errors.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from benchmarks import feature_updates
from torch import nn

from torchkron import KronLinear, LowRankLinear, MonarchLinear, lr_multipliers, param_groups


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("init", ["per-factor", "variance"])
@pytest.mark.parametrize("width", [64, 256, 1024])
def test_one_adamw_step_moves_features_like_a_dense_layer(width, init):
    ratios = feature_updates.update_ratios(width, init)
    assert set(ratios) == set(feature_updates.CASES)
    with_rule = {name: rule for name, (_, rule) in ratios.items()}
    outside = {name: round(r, 3) for name, r in with_rule.items() if not 0.5 <= r <= 2.0}
    assert not outside, f"width {width}, init={init}: not within 2x of dense: {outside}"
    if width == 1024:  # the rule is what does it: one rate for every tensor is far off
        plain = {name: p for name, (p, _) in ratios.items()}
        inside = {name: round(r, 3) for name, r in plain.items() if 0.5 <= r <= 2.0}
        assert not inside, f"width {width}, init={init}: within 2x without the rule: {inside}"


def test_the_plain_update_of_kronecker_factors_shrinks_with_width():
    # Without the rule a Kronecker layer's relative update falls like 1 / sqrt(width)
    # against dense's (its factors' fan-in is sqrt(width)): the drift the rule removes.
    small = feature_updates.update_ratios(64, "per-factor")["kron k=2 R=1"]
    large = feature_updates.update_ratios(1024, "per-factor")["kron k=2 R=1"]
    assert large[0] < small[0] / 3
    assert large[1] > small[1] / 2


def _rules(model, **kw):
    return {r.name: (r.multiplier, r.decay, r.kind) for r in lr_multipliers(model, **kw)}


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        # D / (fan_in * positions) * R ** (-1 / (2k)); factor_shapes(1024, 1024) = 32x32 (x) 32x32
        (KronLinear(1024, 1024), {"factor_0": 16.0, "factor_1": 16.0}),
        (KronLinear(1024, 1024, tied=True), {"tied_factor": 16.0}),
        (KronLinear(1024, 1024, rank=16), {"factor_0": 8.0, "factor_1": 8.0}),
        # [(16, 16), (8, 8), (8, 8)]
        (
            KronLinear(1024, 1024, num_factors=3),
            {"factor_0": 1024 / 48, "factor_1": 1024 / 24, "factor_2": 1024 / 24},
        ),
        (LowRankLinear(1024, 512, rank=32), {"v": 0.5, "u": 16.0}),
        (MonarchLinear(1024, 256, nblocks=16), {"blkdiag1": 8.0, "blkdiag2": 32.0}),
    ],
)
def test_factor_multipliers_follow_the_documented_formula(layer, expected):
    rules = _rules(layer)
    assert {n: m for n, (m, _, kind) in rules.items() if kind == "factor"} == pytest.approx(
        expected
    )
    assert rules["bias"] == (1.0, False, "vector")


def test_every_other_parameter_trains_at_lr_with_decay_on_matrices_only():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 64)
            self.norm = nn.LayerNorm(64)
            self.mlp = nn.Sequential(KronLinear(64, 256), nn.GELU(), nn.Linear(256, 64))
            self.gain = nn.Parameter(torch.tensor(1.0))
            self.head = nn.Linear(64, 100, bias=False)
            self.head.weight = self.emb.weight  # tied: listed once
            self.frozen = nn.Linear(64, 64)
            self.frozen.requires_grad_(False)

    net = Net()
    rules = _rules(net)
    assert rules == {
        "emb.weight": (1.0, False, "embedding"),
        "norm.weight": (1.0, False, "vector"),
        "norm.bias": (1.0, False, "vector"),
        "mlp.0.factor_0": (64 / (8 * 2), True, "factor"),
        "mlp.0.factor_1": (64 / (8 * 2), True, "factor"),
        "mlp.0.bias": (1.0, False, "vector"),
        "mlp.2.weight": (1.0, True, "dense"),
        "mlp.2.bias": (1.0, False, "vector"),
        "gain": (1.0, False, "vector"),
    }
    assert _rules(net, decay_embeddings=True)["emb.weight"] == (1.0, True, "embedding")


def test_param_groups_cover_each_parameter_once_at_lr_times_its_multiplier():
    model = nn.Sequential(
        KronLinear(256, 256, init="per-factor"),
        nn.LayerNorm(256),
        LowRankLinear(256, 256, rank=16),
        MonarchLinear(256, 64, nblocks=4),
        nn.Linear(64, 10),
    )
    groups = param_groups(model, lr=1e-3, weight_decay=0.1)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    params = dict(model.named_parameters())
    rules = {r.name: r for r in lr_multipliers(model)}
    for group in groups:
        assert len(group["params"]) == len(group["param_names"])
        for name, p in zip(group["param_names"], group["params"], strict=True):
            assert p is params[name]
            assert group["lr"] == pytest.approx(1e-3 * rules[name].multiplier)
            assert group["lr_multiplier"] == rules[name].multiplier
            assert group["weight_decay"] == (0.1 if rules[name].decay else 0.0)
    keys = [(g["lr_multiplier"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys))  # tensors with the same rate and decay share a group


def test_optimizers_and_schedules_keep_the_multipliers():
    torch.manual_seed(0)
    model = nn.Sequential(KronLinear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    for opt_cls in (torch.optim.AdamW, torch.optim.SGD):
        opt = opt_cls(param_groups(model, lr=1e-2, weight_decay=0.01))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
        assert [g["lr"] / g["lr_multiplier"] for g in opt.param_groups] == pytest.approx(
            [5e-3] * len(opt.param_groups)
        )
        model(torch.randn(8, 64)).square().mean().backward()
        opt.step()
        sched.step()
        restored = opt_cls(param_groups(model, lr=1e-2, weight_decay=0.01))
        restored.load_state_dict(opt.state_dict())
        assert [g["lr"] for g in restored.param_groups] == [g["lr"] for g in opt.param_groups]
        opt.zero_grad()


def test_rules_print_as_one_line_each():
    rule = lr_multipliers(nn.Sequential(KronLinear(1024, 1024, bias=False)))[0]
    assert str(rule) == "0.factor_0 (1x32x32, factor): lr x 16, decay"
    gain = lr_multipliers(nn.ParameterList([nn.Parameter(torch.tensor(2.0))]))[0]
    assert str(gain) == "0 (scalar, vector): lr x 1, no decay"


def test_bad_arguments_name_the_problem_and_the_fix():
    model = nn.Linear(4, 4)
    fix = r"pass the model itself, not model.parameters\(\)"
    not_module = "model must be a torch.nn.Module, got"
    with pytest.raises(TypeError, match=rf"param_groups: {not_module} generator; {fix}"):
        param_groups(model.parameters(), lr=1e-3)
    with pytest.raises(TypeError, match=rf"lr_multipliers: {not_module} list; {fix}"):
        lr_multipliers([model])
    example = r"e.g. param_groups\(model, lr=1e-3, weight_decay=0.1\)"
    for bad in (0, -1e-3, math.nan, math.inf, True, "1e-3"):
        message = rf"param_groups: lr must be a finite number > 0, got {re.escape(repr(bad))}"
        with pytest.raises(ValueError, match=rf"{message}; {example}"):
            param_groups(model, lr=bad)
    message = r"param_groups: weight_decay must be a finite number >= 0, got -0.1"
    with pytest.raises(ValueError, match=rf"{message}; {example}"):
        param_groups(model, lr=1e-3, weight_decay=-0.1)
    assert param_groups(model, lr=1e-3, weight_decay=0)[0]["weight_decay"] == 0.0
