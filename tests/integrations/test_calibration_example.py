"""kronify(calibration=...): the documented GPT-2 example, output errors, budgets."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from torchkron import KronLinear, kronify
from torchkron.factorization import nearest_kronecker, output_error, second_moment

DOC = Path(__file__).resolve().parents[2] / "docs" / "compress.md"


def _example_code() -> str:
    text = DOC.read_text()
    match = re.search(
        r"<!-- example: kronify-calibration -->\n```python\n(.*?)^```", text, re.S | re.M
    )
    assert match is not None, "docs/compress.md lost its kronify-calibration example"
    return match.group(1)


def test_documented_gpt2_example_runs():
    pytest.importorskip("transformers")
    scope: dict[str, object] = {}
    exec(compile(_example_code(), str(DOC), "exec"), scope)
    model, report = scope["model"], scope["report"]
    assert isinstance(model, nn.Module)
    converted = [m for m in model.modules() if isinstance(m, KronLinear)]
    assert len(converted) == 4  # c_fc and c_proj of both blocks
    assert all("output error on the calibration inputs" in r.note for r in report.replaced)
    assert report.params_after <= report.params_before / 1.5


def _inputs_of(
    model: nn.Module, names: list[str], batches: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, a, n=n: seen[n].append(a[0].detach())
        )
        for n in names
    ]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for n, xs in seen.items()}


def test_calibrated_layers_have_lower_output_error_on_the_calibration_inputs():
    torch.manual_seed(0)
    d, h = 16, 64
    mix = torch.randn(d, d) * torch.logspace(0, 1.5, d)  # anisotropic inputs
    net = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
    batches = [torch.randn(32, d) @ mix for _ in range(6)]
    names = ["0", "2"]
    inputs = _inputs_of(net, names, batches)
    plain, _ = kronify(copy.deepcopy(net), rank=2)
    aware, report = kronify(copy.deepcopy(net), rank=2, calibration=batches)
    strictly = 0
    for n in names:
        x = inputs[n].double()
        w = net.get_submodule(n).weight.detach().double()
        errs = []
        for model in (plain, aware):
            w_hat = model.get_submodule(n).weight.detach().double()
            errs.append(float(torch.linalg.norm(x @ (w - w_hat).mT) / torch.linalg.norm(x @ w.mT)))
        assert errs[1] <= errs[0] * (1 + 1e-6), n
        strictly += errs[1] < 0.99 * errs[0]
        row = next(r for r in report.replaced if r.name == n)
        assert row.approximation_error == pytest.approx(
            errs[1], rel=1e-4
        )  # the report shows output error
    assert strictly >= 1


def test_max_error_budget_measures_output_error_with_calibration():
    # Inputs x = (L1 (x) L2) e_i over a basis: E[x x^T] is exactly a Kronecker product,
    # so the K-FAC budget is the true output error.
    gen = torch.Generator().manual_seed(3)
    l1 = torch.randn(4, 4, generator=gen) * torch.tensor([1.0, 3.0, 10.0, 30.0])
    l2 = torch.randn(5, 5, generator=gen)
    x = torch.kron(l1, l2).mT.contiguous()  # (20, 20): rows are the inputs
    net = nn.Sequential(nn.Linear(20, 12, bias=False))
    moment = second_moment([x.double()])
    _, report = kronify(copy.deepcopy(net), shapes=[(3, 4), (4, 5)], max_error=0.3, calibration=[x])
    (row,) = report.replaced
    assert row.approximation_error <= 0.3 + 1e-3
    w = net[0].weight.detach()
    # The rank chosen is the smallest meeting the bound in output error, not weight error.
    for lower in range(1, row.rank):
        _, err = nearest_kronecker(w, [(3, 4), (4, 5)], lower, input_second_moment=moment)
        assert err > 0.3
    _, plain_report = kronify(copy.deepcopy(net), shapes=[(3, 4), (4, 5)], max_error=0.3)
    # In weight error the same bound needs a rank that stores more than the dense layer.
    assert not plain_report.replaced
    assert "left dense" in plain_report.skipped[0].reason
    assert output_error(w.double(), torch.zeros_like(w).double(), moment) == pytest.approx(1.0)


def test_calibration_needs_dense_init_and_batches():
    net = nn.Sequential(nn.Linear(16, 16))
    with pytest.raises(ValueError, match=r"calibration .* needs from_dense=True and tied=False"):
        kronify(net, from_dense=False, calibration=[torch.zeros(1, 16)])
    with pytest.raises(
        ValueError, match=r"calibration must be an iterable of batches .* got Tensor"
    ):
        kronify(net, calibration=torch.zeros(1, 16))
    with pytest.raises(ValueError, match=r"calibration yielded no batches"):
        kronify(net, calibration=[])
    assert isinstance(net[0], nn.Linear)  # unchanged after every error
