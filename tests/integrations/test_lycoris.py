"""LyCORIS's LoKr modules accelerated: outputs and gradients equal LyCORIS's own."""

from __future__ import annotations

import copy
import doctest
import logging

import pytest

pytest.importorskip("lycoris")

import torch
from lycoris import create_lycoris
from torch import nn

from torchkron.integrations import lycoris as tkly
from torchkron.integrations.lokr.accelerate_lycoris import FactoredLokrModule

from .test_lokr_peft import OPTIONS as ACCELERATE_OPTIONS
from .test_lokr_peft import assert_rel

logging.getLogger("LyCORIS").setLevel(logging.ERROR)


def network(**kw: object) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 40))
    multiplier = float(kw.pop("multiplier", 1.0))  # type: ignore[arg-type]
    args = {"linear_dim": 4, "linear_alpha": 3, "algo": "lokr", **kw}
    net = create_lycoris(model, multiplier, **args)
    net.apply_to()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return model, net


def step(model: nn.Module, net: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    net.zero_grad(set_to_none=True)
    y = model(x)
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    return (y.detach(), x.grad, *[p.grad for _, p in sorted(net.named_parameters())])


OPTIONS = {
    "default": {},
    "factor": {"factor": 4},
    "decompose_both": {"decompose_both": True, "linear_dim": 2},
    "full_matrix": {"full_matrix": True},
    "rank_dropout": {"rank_dropout": 0.5},
    "rank_dropout_scale": {"rank_dropout": 0.3, "rank_dropout_scale": True},
    "module_dropout + scalar": {"module_dropout": 0.5, "use_scalar": True},
    "multiplier": {"multiplier": 0.6},
}


@pytest.mark.parametrize("option", list(ACCELERATE_OPTIONS))
@pytest.mark.parametrize("name", list(OPTIONS))
def test_outputs_and_gradients_equal_lycoris(name, option):
    model, net = network(**OPTIONS[name])
    fast_model = copy.deepcopy(model)
    # The deep copy of the model holds copies of the network's modules (as forwards).
    fast_net = fast_model[0].forward.__self__, fast_model[2].forward.__self__
    holder = nn.Module()
    holder.loras = nn.ModuleList(fast_net)
    report = tkly.accelerate(holder, **ACCELERATE_OPTIONS[option])
    assert report.accelerated == ("lycoris_0", "lycoris_2")
    assert all(type(m) is FactoredLokrModule for m in fast_net)
    x = torch.randn(2, 5, 48)
    for train in (True, False):
        model.train(train), fast_model.train(train), net.train(train), holder.train(train)
        for seed in range(3):
            assert_rel(step(fast_model, holder, x, seed), step(model, net, x, seed), 1e-5)


def test_the_delta_is_never_built(monkeypatch):
    model, net = network()
    tkly.accelerate(net)
    calls = []
    monkeypatch.setattr(torch, "kron", lambda *a: calls.append(a))
    model(torch.randn(3, 48)).sum().backward()
    assert calls == []


def test_dora_and_bypass_are_left_alone_with_why_and_restore_undoes():
    _, net = network(dora_wd=True)
    report = tkly.accelerate(net)
    assert report.accelerated == ()
    assert report.skipped["lycoris_0"].startswith(
        "weight_decompose (DoRA) rescales every row by the norm of the merged weight"
    )
    _, net = network(bypass_mode=True)
    assert "bypass_mode: LyCORIS already applies" in tkly.accelerate(net).skipped["lycoris_2"]
    model, net = network()
    x = torch.randn(3, 48)
    with torch.no_grad():
        before = model(x)
        tkly.accelerate(net, recompute=False)
        assert all(m._torchkron_recompute is False for m in net.loras)
        assert tkly.restore(net) == ["lycoris_0", "lycoris_2"]
        assert all(type(m).__name__ == "LokrModule" for m in net.loras)
        assert not any(hasattr(m, "_torchkron_recompute") for m in net.loras)
        torch.testing.assert_close(model(x), before)
    assert tkly.restore(net) == []


def test_conv_lokr_is_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(128, 16))
    net = create_lycoris(model, 1.0, linear_dim=2, linear_alpha=2, algo="lokr")
    report = tkly.accelerate(net)
    assert report.accelerated == ("lycoris_2",)
    assert "LoKr on Conv2d: only LoKr on nn.Linear" in report.skipped["lycoris_0"]


def test_errors_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match=r"accelerate: Linear holds no LyCORIS LoKr module\. Pass"):
        tkly.accelerate(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"accelerate: unknown impl 'x'; choose one of"):
        tkly.accelerate(network()[1], impl="x")


def test_docstring_examples_run():
    result = doctest.testmod(tkly, extraglobs={"nn": nn, "torch": torch})
    assert result.failed == 0
