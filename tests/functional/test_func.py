"""torch.func (issue 17): grad, jacrev and per-sample gradients (vmap over grad) through
kron_linear, for every impl that runs on the CPU, against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from tests.reference import random_factors, reference_weight
from torch.utils._pytree import tree_leaves

from torchkron.functional import _calibration, _gemm, calibrate, kron_linear
from torchkron.functional.impls import fastkron as fastkron_impl
from torchkron.functional.impls import triton as triton_impl

CPU_IMPLS = ["auto", "permute", "bmm", "fused", "materialize"]
SHAPES = [(3, 4), (2, 3), (2, 2)]


@pytest.fixture(autouse=True, params=["blas", "onednn"])
def _gemm_backend(request, monkeypatch):
    """Each test with the default constants and with oneDNN on for every GEMM (a
    calibration that measured it faster), which torch.func must not reach."""
    if request.param == "onednn":
        if not _gemm.available():
            pytest.skip("no oneDNN in this build")
        monkeypatch.setattr(_gemm, "MIN_FLOPS", 0)
        cpu = {**calibrate.DEFAULTS["cpu"], "onednn_speedup": 2.0}
        _calibration.override({"devices": {"cpu": cpu}})
    else:
        _calibration.override({"devices": calibrate.DEFAULTS})
    yield
    _calibration.override(None)


def _problem(seed: int, rank: int = 2, batch: int = 5):
    factors = random_factors(SHAPES, rank, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 24, generator=g, dtype=torch.float64)
    bias = torch.randn(12, generator=g, dtype=torch.float64)
    return factors, x, bias


def _loss(y: torch.Tensor) -> torch.Tensor:
    return (y.sin() * y).sum()


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_grad_matches_reference(impl):
    factors, x, bias = _problem(0)

    def f(fs, x, b, impl=impl):
        return _loss(kron_linear(x, fs, b, impl=impl))

    def ref(fs, x, b):
        return _loss(x @ reference_weight(fs).T + b)

    got = torch.func.grad(f, argnums=(0, 1, 2))(factors, x, bias)
    want = torch.func.grad(ref, argnums=(0, 1, 2))(factors, x, bias)
    for a, b in zip(tree_leaves(got), tree_leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_jacrev_matches_reference(impl):
    factors, x, bias = _problem(1, rank=1, batch=3)
    jac = torch.func.jacrev(lambda fs, x: kron_linear(x, fs, bias, impl=impl), argnums=(0, 1))
    got = jac(factors, x)
    want = torch.func.jacrev(lambda fs, x: x @ reference_weight(fs).T + bias, argnums=(0, 1))(
        factors, x
    )
    for a, b in zip(tree_leaves(got), tree_leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


class _Layer(torch.nn.Module):
    def __init__(self, impl: str) -> None:
        super().__init__()
        self.impl = impl
        self.factors = torch.nn.ParameterList(random_factors(SHAPES, 2, seed=2))
        self.bias = torch.nn.Parameter(torch.randn(12, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kron_linear(x, list(self.factors), self.bias, impl=self.impl)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_per_sample_gradients_match_a_loop(impl):
    torch.manual_seed(2)
    layer = _Layer(impl)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(6, 24, dtype=torch.float64)

    def loss(p, xi):
        y = torch.func.functional_call(layer, p, (xi.unsqueeze(0),))
        return _loss(y)

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        layer.zero_grad()
        _loss(layer(x[i : i + 1])).backward()
        for name, p in layer.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-10, atol=1e-10)


def test_vmap_forward_matches_reference():
    factors, x, bias = _problem(3)
    for impl in CPU_IMPLS:
        y = torch.func.vmap(lambda xi, impl=impl: kron_linear(xi, factors, bias, impl=impl))(x)
        torch.testing.assert_close(y, x @ reference_weight(factors).T + bias)


@pytest.mark.skipif(not fastkron_impl.available(), reason="pyfastkron not installed")
def test_fastkron_refuses_torch_func_naming_the_way_out():
    # pyfastkron's native kernels read raw data pointers: no transform can see through.
    factors, x, _ = _problem(4, rank=1)
    factors = [f.float() for f in factors]
    msg = (
        r"kron_linear\(impl='fastkron'\): FastKron's kernels take plain tensors, so "
        r"torch.func transforms \(grad, vmap, jacrev, \.\.\.\) cannot see through them; "
        r"use impl='bmm' or 'fused' there"
    )
    with pytest.raises(RuntimeError, match=msg):
        torch.func.grad(lambda fs: kron_linear(x.float(), fs, impl="fastkron").sum())(factors)
    with pytest.raises(RuntimeError, match=msg):
        torch.func.vmap(lambda xi: kron_linear(xi, factors, impl="fastkron"))(x.float())


@pytest.mark.skipif(not triton_impl._triton_importable(), reason="triton not installed")
def test_triton_refuses_torch_func_naming_the_way_out(monkeypatch):
    # The kernels read raw pointers too; checked in the interpreter (CPU tensors).
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    factors, _, _ = _problem(5, rank=1)
    two = [f[:, :4, :4].contiguous() for f in factors[:2]]
    xs = torch.randn(3, 16, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=r"kron_linear_triton: the Triton kernels take plain tensors, so torch.func "
        r"transforms .* cannot see through them; use impl='bmm' \(or 'auto'\) instead",
    ):
        torch.func.grad(lambda fs: triton_impl.kron_linear_triton(xs, fs).sum())(two)
