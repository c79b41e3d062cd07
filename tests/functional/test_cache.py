"""The inference cache of W (issue 17): no stale entry from a racing write, one entry per
compute dtype, and no inference tensor ever handed to autograd."""

from __future__ import annotations

import pytest
import torch
from tests.reference import reference_weight

from torchkron.functional import _weight, kron_linear

pytestmark = pytest.mark.usefixtures("default_constants")


def _factors(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(2, 3, 4, generator=g, dtype=dtype)),
        torch.nn.Parameter(torch.randn(2, 5, 2, generator=g, dtype=dtype)),
    ]


def _reference(x: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    w = reference_weight([f.detach().double() for f in factors])
    return x.double() @ w.T


def test_a_write_landing_while_w_is_built_is_seen_by_the_next_call(monkeypatch):
    # A write that does not move the version counter (another thread writing through
    # .data, shared-memory Hogwild) lands after W was built from the old values and
    # before the cache entry is stored. The entry must not pass for the new values.
    factors = _factors()
    x = torch.randn(6, 8)
    real = _weight.materialize
    landed = []

    def racing_materialize(fs):
        w = real(fs)
        if not landed:
            factors[0].data.add_(1.0)  # the other thread's write; version unchanged
            landed.append(True)
        return w

    monkeypatch.setattr(_weight, "materialize", racing_materialize)
    version = factors[0]._version
    with torch.no_grad():
        kron_linear(x, factors, impl="materialize")
        assert landed
        assert factors[0]._version == version
        y = kron_linear(x, factors, impl="materialize")
    torch.testing.assert_close(y.double(), _reference(x, factors), rtol=1e-5, atol=1e-5)


def test_cache_is_keyed_on_the_compute_dtype():
    # One inference call under bf16 autocast used to leave a bfloat16 W in the cache,
    # which the next float32 call then fed to a float32 GEMM (a dtype error).
    factors = _factors()
    x = torch.randn(6, 8)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = kron_linear(x, factors, impl="materialize")
        full = kron_linear(x, factors, impl="materialize")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_again = kron_linear(x, factors, impl="materialize")
    assert low.dtype == torch.bfloat16
    assert full.dtype == torch.float32
    torch.testing.assert_close(full.double(), _reference(x, factors), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(low.double(), _reference(x, factors), rtol=2e-2, atol=5e-2)
    assert torch.equal(low, low_again)
    dtypes = sorted(str(k[1]) for k in _weight.WEIGHT_CACHE)
    assert dtypes == ["torch.bfloat16", "torch.float32"]


@pytest.mark.parametrize("impl", ["auto", "materialize"])
def test_evaluate_in_inference_mode_then_train_with_frozen_factors(impl):
    # "Evaluate, then fine-tune with LoRA": the Kronecker factors are frozen, so the
    # training forward may use the cached W; it must not be an inference tensor.
    factors = [f.requires_grad_(False) for f in _factors(3)]
    x = torch.randn(6, 8)
    with torch.inference_mode():
        y_eval = kron_linear(x, factors, impl=impl)
    xg = x.clone().requires_grad_()
    y = kron_linear(xg, factors, impl=impl)
    gy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, xg, gy)
    w = reference_weight([f.double() for f in factors])
    torch.testing.assert_close(y_eval.double(), x.double() @ w.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx.double(), gy.double() @ w, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # the entry built in inference mode serves it again
        torch.testing.assert_close(kron_linear(x, factors, impl=impl), y_eval)


def test_entry_built_in_inference_mode_is_a_normal_tensor():
    factors = _factors(4)
    with torch.inference_mode():
        kron_linear(torch.randn(2, 8), factors, impl="materialize")
    (entry,) = _weight.WEIGHT_CACHE.values()
    assert not entry.weight.is_inference()
    assert not any(s.is_inference() for s in entry.snapshot)
