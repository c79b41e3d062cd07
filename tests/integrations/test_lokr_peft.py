"""PEFT's LoKr layers accelerated: outputs, gradients and PEFT's own behaviour unchanged."""

from __future__ import annotations

import copy
import doctest

import pytest

pytest.importorskip("peft")

import peft
import torch
from peft import LoKrConfig, get_peft_model, get_peft_model_state_dict
from torch import nn

from torchkron.integrations import peft as tkpeft
from torchkron.integrations.lokr import Acceleration, accelerate_peft, delta, lokr_delta
from torchkron.integrations.lokr.accelerate_peft import FactoredLoKrLinear


def base_model(act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(48, 96), act(), nn.Sequential(nn.Linear(96, 40)))
    return net


TARGETS = ["0", "2.0"]


def lokr(act: type[nn.Module] = nn.ReLU, **kw: object) -> nn.Module:
    kw = {"r": 4, "alpha": 3, "init_weights": False, "target_modules": TARGETS, **kw}
    return get_peft_model(base_model(act), LoKrConfig(**kw))  # type: ignore[arg-type]


def step(model: nn.Module, x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and every adapter gradient of one step, under one seed."""
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    y = model(x)
    (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum().backward()
    grads = [p.grad for _, p in sorted(model.named_parameters()) if p.requires_grad]
    return (y.detach(), x.grad, *grads)


def assert_rel(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], tol: float) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        if u is None or v is None:  # a module dropped by module_dropout gets no gradient
            assert u is None
            assert v is None
            continue
        err = ((u.double() - v.double()).norm() / v.double().norm().clamp_min(1e-30)).item()
        assert err <= tol, err


CONFIGS = {
    "default": {},
    "decompose_both": {"r": 2, "decompose_both": True},
    "whole factors": {"r": 64},
    "decompose_factor": {"decompose_factor": 4},
    "rank_dropout": {"rank_dropout": 0.5},
    "rank_dropout_scale": {"rank_dropout": 0.3, "rank_dropout_scale": True},
    "module_dropout": {"module_dropout": 0.5, "rank_dropout": 0.2},
}


# accelerate()'s options: the default (recompute=True: the chain's own backward keeps only
# its inputs), the state kept (recompute=False), and another impl under checkpointing.
OPTIONS = {
    "recompute": {},
    "saved": {"recompute": False},
    "fused, checkpointed": {"impl": "fused", "recompute": True},
}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_and_gradients_equal_peft(name, train, option):
    pm = lokr(**CONFIGS[name])
    pm.train(train)
    x = torch.randn(2, 5, 48)
    fast = copy.deepcopy(pm)
    report = tkpeft.accelerate(fast, **OPTIONS[option])
    assert report.accelerated == ("base_model.model.0", "base_model.model.2.0")
    assert all(type(m) is FactoredLoKrLinear for m in fast.modules() if hasattr(m, "lokr_w1"))
    # Several seeds: rank and module dropout draw the same rows/modules as PEFT.
    for seed in range(3):
        assert_rel(step(fast, x, seed), step(pm, x, seed), 1e-5)


def test_the_delta_is_never_built(monkeypatch):
    pm = lokr()
    tkpeft.accelerate(pm)
    calls = []
    monkeypatch.setattr(torch, "kron", lambda *a: calls.append(a))
    pm(torch.randn(3, 48)).sum().backward()
    assert calls == []


def test_rank_dropout_is_a_mask_on_output_features():
    # With p = 0.5 about half of the output features lose the whole delta.
    pm = lokr(rank_dropout=0.5)
    tkpeft.accelerate(pm)
    layer = pm.base_model.model[0]
    x = torch.randn(7, 48)
    with torch.no_grad():
        pm.eval()
        full = layer(x) - layer.base_layer(x)
        torch.manual_seed(3)
        pm.train()
        dropped = layer(x) - layer.base_layer(x)
        torch.manual_seed(3)
        torch.rand(1)  # PEFT's forward draws module dropout's number first, even at p = 0
        mask = (torch.rand(96) > 0.5).float()
    torch.testing.assert_close(dropped, full * mask, rtol=1e-5, atol=1e-6)
    assert 0 < mask.sum() < 96


def test_several_adapters_disable_and_merge_behave_as_in_peft():
    pm = lokr()
    pm.add_adapter("other", LoKrConfig(r=2, alpha=5, init_weights=False, target_modules=TARGETS))
    fast = copy.deepcopy(pm)
    tkpeft.accelerate(fast)
    x = torch.randn(4, 48)
    for model in (pm, fast):
        model.eval()
    with torch.no_grad():
        for adapters in ("default", "other", ["default", "other"]):
            for model in (pm, fast):
                model.base_model.set_adapter(adapters)
            assert_rel((fast(x),), (pm(x),), 1e-5)
        with fast.disable_adapter(), pm.disable_adapter():
            torch.testing.assert_close(fast(x), pm(x))
        plain = fast(x)
        for model in (pm, fast):
            model.merge_adapter()
        assert fast.base_model.model[0].merged
        assert_rel((fast(x),), (plain,), 1e-5)
        assert_rel((fast(x),), (pm(x),), 1e-6)
        for model in (pm, fast):
            model.unmerge_adapter()
        assert_rel((fast(x),), (plain,), 1e-5)


def test_state_dict_save_load_and_merge_and_unload_are_peft_s(tmp_path):
    pm = lokr(decompose_both=True, r=2)
    fast = copy.deepcopy(pm)
    tkpeft.accelerate(fast)
    assert fast.state_dict().keys() == pm.state_dict().keys()
    assert get_peft_model_state_dict(fast).keys() == get_peft_model_state_dict(pm).keys()
    fast.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(base_model(), tmp_path)
    tkpeft.accelerate(loaded)
    x = torch.randn(3, 48)
    with torch.no_grad():
        assert_rel((loaded(x),), (pm(x),), 1e-5)
        merged = copy.deepcopy(fast).merge_and_unload()
        assert type(merged[0]) is nn.Linear
        assert_rel((merged(x),), (pm(x),), 1e-5)
        unloaded = copy.deepcopy(fast).unload()
        assert_rel((unloaded(x),), (base_model()(x),), 1e-6)


def test_restore_gives_peft_s_class_back_and_accelerate_twice_is_harmless():
    pm = lokr()
    tkpeft.accelerate(pm)
    assert pm.base_model.model[0]._torchkron_recompute is True
    tkpeft.accelerate(pm, impl="fused", recompute=False)
    assert pm.base_model.model[0]._torchkron_impl == "fused"
    assert pm.base_model.model[0]._torchkron_recompute is False
    assert tkpeft.restore(pm) == ["base_model.model.0", "base_model.model.2.0"]
    layer = pm.base_model.model[0]
    assert type(layer) is peft.tuners.lokr.layer.Linear
    assert not hasattr(layer, "_torchkron_impl")
    assert not hasattr(layer, "_torchkron_recompute")
    assert tkpeft.restore(pm) == []


def test_conv_lokr_is_left_alone_and_listed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 16))
    pm = get_peft_model(net, LoKrConfig(r=2, target_modules=["0", "2"], init_weights=False))
    fast = copy.deepcopy(pm)
    report = tkpeft.accelerate(fast)
    assert report.accelerated == ("base_model.model.2",)
    assert list(report.skipped) == ["base_model.model.0"]
    assert (
        "on Conv2d: only LoKr on nn.Linear is accelerated" in report.skipped["base_model.model.0"]
    )
    assert "left alone: base_model.model.0" in str(report)
    x = torch.randn(2, 4, 6, 6)
    assert_rel(step(fast, x), step(pm, x), 1e-5)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_bfloat16_within_peft_s_own_rounding(option):
    # Tanh, not ReLU: a ReLU flipped by rounding would change a gradient by a whole row.
    pm = lokr(nn.Tanh).to(torch.bfloat16)
    fast = copy.deepcopy(pm)
    tkpeft.accelerate(fast, **OPTIONS[option])
    ref = copy.deepcopy(pm).double()  # the same (bf16-rounded) values, computed in float64
    x = torch.randn(6, 48).bfloat16().float()
    exact = step(ref, x.double())
    # The accelerated layer is no further from float64 than PEFT's own bf16 layer (+ slack).
    for a, p, e in zip(step(fast, x.bfloat16()), step(pm, x.bfloat16()), exact, strict=True):
        err_fast = ((a.double() - e).norm() / e.norm()).item()
        err_peft = ((p.double() - e).norm() / e.norm()).item()
        assert err_fast <= max(2 * err_peft, 1e-2), (err_fast, err_peft)


def test_errors_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match=r"accelerate: Sequential holds no PEFT LoKr layer\. Pass"):
        tkpeft.accelerate(base_model())
    with pytest.raises(ValueError, match=r"accelerate: unknown impl 'fast'; choose one of 'auto'"):
        tkpeft.accelerate(lokr(), impl="fast")
    with pytest.raises(ValueError, match=r"lokr_delta: w1 and w2 must be matrices, got shapes"):
        lokr_delta(torch.randn(2, 4), torch.randn(2, 2), torch.randn(1, 2, 2))


def test_lokr_delta_matches_float64_kron_and_passes_gradcheck():
    torch.manual_seed(0)
    w1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([0.0, 2.0] * 7 + [1.0], dtype=torch.float64)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    expected = x @ (scale * torch.kron(w1, w2) * mask[:, None]).T
    torch.testing.assert_close(lokr_delta(x, w1, w2, scale=scale, row_mask=mask), expected)
    torch.autograd.gradcheck(
        lambda x, w1, w2, s: lokr_delta(x, w1, w2, scale=s, row_mask=mask), (x, w1, w2, scale)
    )


def test_docstring_examples_run():
    globs = {"torch": torch, "nn": nn, "peft": peft}
    for module in (delta, accelerate_peft, tkpeft):
        result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
    assert str(Acceleration(("a",))) == "accelerated 1 LoKr layer(s)"
