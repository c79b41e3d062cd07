"""The chain's plain GEMMs on oneDNN (torchkron.functional._gemm): same numbers, same gradients."""

from __future__ import annotations

import math

import pytest
import torch
from tests.reference import random_factors, reference_weight

from torchkron.functional import _calibration, _gemm, calibrate, kron_linear

needs_onednn = pytest.mark.skipif(not _gemm.available(), reason="no oneDNN in this build")


def _calibrated(speedup: float) -> dict[str, object]:
    return {"devices": {"cpu": {**calibrate.DEFAULTS["cpu"], "onednn_speedup": speedup}}}


@pytest.fixture
def onednn_on(monkeypatch):
    """oneDNN on for every GEMM, however small; counts its calls."""
    calls: list[tuple[int, int, int]] = []
    real = _gemm.onednn_linear

    def spy(a, w, bias=None):
        calls.append((a.shape[0], a.shape[1], w.shape[0]))
        return real(a, w, bias)

    monkeypatch.setattr(_gemm, "onednn_linear", spy)
    monkeypatch.setattr(_gemm, "MIN_FLOPS", 0)
    _calibration.override(_calibrated(2.0))
    yield calls
    _calibration.override(None)


def test_off_by_default_and_below_the_measured_threshold():
    _calibration.override({"devices": calibrate.DEFAULTS})
    try:
        assert not _gemm.enabled()  # uncalibrated: PyTorch's own BLAS
        _calibration.override(_calibrated(1.05))
        assert not _gemm.enabled()  # a gain within noise is not taken
        _calibration.override(_calibrated(float("nan")))
        assert calibrate.constants("cpu")["onednn_speedup"] == 1.0  # insane: the default
    finally:
        _calibration.override(None)


@needs_onednn
def test_only_large_float32_cpu_gemms(monkeypatch):
    _calibration.override(_calibrated(2.0))
    try:
        big, w = torch.randn(4096, 64), torch.randn(64, 64)
        assert _gemm.MIN_FLOPS <= 2 * 4096 * 64 * 64
        assert _gemm.uses_onednn(big, w)
        assert not _gemm.uses_onednn(big[:8], w)  # too small to amortise a kernel build
        assert not _gemm.uses_onednn(big.double(), w.double())
        monkeypatch.setattr(_gemm, "available", lambda: False)
        assert not _gemm.uses_onednn(big, w)
    finally:
        _calibration.override(None)


@needs_onednn
def test_linear_matches_the_default_gemm(onednn_on):
    g = torch.Generator().manual_seed(0)
    a, w, b = (torch.randn(*s, generator=g) for s in [(300, 24), (48, 24), (48,)])
    torch.testing.assert_close(_gemm.linear(a, w, b), torch.addmm(b, a, w.t()))
    torch.testing.assert_close(_gemm.linear(a, w), a @ w.t())
    assert len(onednn_on) == 2
    # Where autograd must record the product, the default GEMM runs instead.
    _gemm.linear(a, w.clone().requires_grad_())
    assert len(onednn_on) == 2


CASES = [
    ([(4, 3), (3, 2)], 1),  # last step with rows before it: bias added afterwards
    ([(3, 3), (3, 3)], 1),  # square: the last GEMM adds the bias itself
    ([(2, 3), (4, 2)], 3),  # rank R: the joint plan
    ([(2, 2), (3, 1), (1, 3)], 2),  # three factors, a sum of rank-one chains
]


@needs_onednn
@pytest.mark.parametrize("impl", ["bmm", "fused", "materialize"])
@pytest.mark.parametrize(("shapes", "rank"), CASES)
def test_chain_on_onednn_matches_the_float64_reference(onednn_on, impl, shapes, rank):
    f64 = random_factors(shapes, rank, seed=1)
    n_in, n_out = math.prod(n for _, n in shapes), math.prod(o for o, _ in shapes)
    g = torch.Generator().manual_seed(2)
    x64 = torch.randn(7, 5, n_in, generator=g, dtype=torch.float64)
    b64 = torch.randn(n_out, generator=g, dtype=torch.float64)
    gy = torch.randn(7, 5, n_out, generator=g, dtype=torch.float64)
    leaves64 = [t.requires_grad_() for t in [x64, b64, *f64]]
    ref = x64 @ reference_weight(f64).T + b64
    want = torch.autograd.grad(ref, leaves64, gy)

    leaves = [t.detach().float().requires_grad_() for t in leaves64]
    x, b, *fs = leaves
    y = kron_linear(x, fs, b, impl=impl)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
    got = torch.autograd.grad(y, leaves, gy.float())
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), w, rtol=1e-4, atol=1e-4)
    assert onednn_on, "the chain never reached oneDNN"


@needs_onednn
@pytest.mark.parametrize("impl", ["bmm", "fused", "materialize"])
def test_double_backward_on_onednn_matches_the_default_gemm(onednn_on, impl):
    # create_graph=True must see every dependency: the oneDNN forward's backward falls
    # back to plain, differentiable operators.
    shapes, rank = [(4, 3), (3, 2)], 1
    base = [t.float() for t in random_factors(shapes, rank, seed=3)]
    x0 = torch.randn(6, 6, generator=torch.Generator().manual_seed(4))
    b0 = torch.randn(12, generator=torch.Generator().manual_seed(5))

    def second_derivatives() -> list[torch.Tensor]:
        x, b, *fs = [t.clone().requires_grad_() for t in [x0, b0, *base]]
        y = kron_linear(x, fs, b, impl=impl)
        grads = torch.autograd.grad(y.square().sum(), [x, *fs], create_graph=True)
        penalty = sum(gr.square().sum() for gr in grads)
        return list(torch.autograd.grad(penalty, [x, b, *fs]))

    with_onednn = second_derivatives()
    assert onednn_on
    _calibration.override(_calibrated(1.0))
    without = second_derivatives()
    for a, w in zip(with_onednn, without, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_cpu_autocast_keeps_pytorchs_gemm(onednn_on):
    x = torch.randn(64, 12)
    fs = [torch.randn(1, 4, 3), torch.randn(1, 3, 4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kron_linear(x, fs, impl="bmm")
    assert y.dtype == torch.bfloat16  # as nn.Linear under autocast
    assert not onednn_on
