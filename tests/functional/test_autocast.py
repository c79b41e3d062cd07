"""Training under torch.autocast (issue 17): every impl that runs on the CPU computes as
nn.Linear with W = kron(...) does under the same autocast: compute and output dtype, and
the dtype of every gradient."""

from __future__ import annotations

import pytest
import torch
from tests.reference import reference_weight

from torchkron.functional import _calibration, _gemm, calibrate, kron_linear, kron_weight
from torchkron.functional.impls import fastkron as fastkron_impl

CPU_IMPLS = ["auto", "permute", "bmm", "fused", "materialize"]
# CPU autocast supports both (torch.amp.autocast_mode.is_autocast_available("cpu"); fp16
# on the CPU since torch 2.4).
DTYPES = [torch.bfloat16, torch.float16]


pytestmark = pytest.mark.usefixtures("default_constants")


def _case(seed: int, shapes, rank: int, batch: int):
    g = torch.Generator().manual_seed(seed)
    factors = [torch.randn(rank, o, n, generator=g, requires_grad=True) for o, n in shapes]
    n_in = 1
    for _, n in shapes:
        n_in *= n
    n_out = 1
    for o, _ in shapes:
        n_out *= o
    x = torch.randn(batch, n_in, generator=g, requires_grad=True)
    bias = torch.randn(n_out, generator=g, requires_grad=True)
    gy = torch.randn(batch, n_out, generator=g)
    return factors, x, bias, gy


def _linear_reference(factors, x, bias, gy, dtype):
    """nn.Linear with the float32 W = kron(...) under the same autocast."""
    fs = [f.detach().clone().requires_grad_() for f in factors]
    xr = x.detach().clone().requires_grad_()
    br = bias.detach().clone().requires_grad_()
    w = reference_weight(fs)  # float32, built outside autocast like nn.Linear.weight
    with torch.autocast("cpu", dtype=dtype):
        y = torch.nn.functional.linear(xr, w, br)
    y.backward(gy.to(y.dtype))
    return y, xr.grad, br.grad, [f.grad for f in fs]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize(
    ("shapes", "rank"), [([(4, 5), (3, 6)], 2), ([(2, 3), (3, 2), (2, 2)], 1), ([(6, 7)], 3)]
)
def test_training_step_matches_nn_linear_under_autocast(dtype, impl, shapes, rank):
    assert torch.amp.autocast_mode.is_autocast_available("cpu")
    factors, x, bias, gy = _case(0, shapes, rank, 9)
    with torch.autocast("cpu", dtype=dtype):
        y = kron_linear(x, factors, bias, impl=impl)
    y.backward(gy.to(y.dtype))
    ref_y, ref_dx, ref_db, ref_df = _linear_reference(factors, x, bias, gy, dtype)
    # nn.Linear's dtypes: output in the compute dtype, each gradient in its tensor's.
    assert y.dtype == ref_y.dtype == dtype
    assert x.grad.dtype == ref_dx.dtype == torch.float32
    assert bias.grad.dtype == ref_db.dtype == torch.float32
    assert all(f.grad.dtype == torch.float32 for f in factors)
    # Values: bf16/fp16 rounding of the operands and of the chain's intermediate states.
    tol = {"rtol": 3e-2, "atol": 6e-2 if dtype == torch.bfloat16 else 2e-2}
    scale = max(1.0, ref_y.float().abs().max().item())
    torch.testing.assert_close(y.float() / scale, ref_y.float() / scale, **tol)
    torch.testing.assert_close(bias.grad, ref_db, **tol)
    gscale = max(1.0, ref_dx.abs().max().item())
    torch.testing.assert_close(x.grad / gscale, ref_dx / gscale, **tol)
    for f, rf in zip(factors, ref_df, strict=True):
        s = max(1.0, rf.abs().max().item())
        torch.testing.assert_close(f.grad / s, rf / s, **tol)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_inference_under_autocast_and_float64_passes_through(impl):
    factors, x, bias, _ = _case(1, [(4, 5), (3, 6)], 2, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = kron_linear(x, factors, bias, impl=impl)
        # Autocast leaves float64 alone (as for nn.Linear): computed in float64.
        f64 = [f.double() for f in factors]
        y64 = kron_linear(x.double(), f64, bias.double(), impl=impl)
    assert y.dtype == torch.bfloat16
    assert y64.dtype == torch.float64
    w = reference_weight(f64)
    ref = x.double() @ w.T + bias.double()
    torch.testing.assert_close(y64, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y.double(), ref, rtol=3e-2, atol=1e-1)


def test_kron_weight_keeps_the_factors_dtype_under_autocast():
    factors, *_ = _case(2, [(4, 5), (3, 6)], 2, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = kron_weight(factors)
    assert w.dtype == torch.float32  # as nn.Linear.weight under autocast
    torch.testing.assert_close(w, reference_weight([f.detach() for f in factors]))


@pytest.mark.skipif(not _gemm.available(), reason="no oneDNN in this build")
def test_onednn_stays_off_under_autocast(monkeypatch):
    calls = []
    real = _gemm.onednn_linear
    monkeypatch.setattr(_gemm, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_gemm, "MIN_FLOPS", 0)
    _calibration.override(
        {"devices": {"cpu": {**calibrate.DEFAULTS["cpu"], "onednn_speedup": 2.0}}}
    )
    factors, x, bias, gy = _case(3, [(4, 5), (3, 6)], 2, 64)
    for impl in ("bmm", "fused", "materialize"):
        kron_linear(x, factors, bias, impl=impl).backward(gy)  # float32: oneDNN runs
    assert calls
    calls.clear()
    for impl in ("bmm", "fused", "materialize"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = kron_linear(x, factors, bias, impl=impl)
        y.backward(gy.to(y.dtype))
        assert y.dtype == torch.bfloat16
    assert not calls


@pytest.mark.skipif(not fastkron_impl.available(), reason="pyfastkron not installed")
def test_fastkron_under_autocast_refuses_naming_the_dtype_and_the_way_out():
    factors, x, bias, _ = _case(4, [(4, 5), (3, 6)], 1, 3)
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(
            RuntimeError,
            match=r"kron_linear\(impl='fastkron'\): FastKron supports float32 and float64 "
            r"only, got torch.bfloat16, and torch.autocast computes this call in "
            r"torch.bfloat16; use impl='auto' \(or 'bmm'\) under autocast",
        ),
    ):
        kron_linear(x, factors, bias, impl="fastkron")
