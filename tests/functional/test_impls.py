"""Every kron_linear implementation against the torch.kron reference, in float64."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.reference import random_factors, reference_weight

from torchkron import KronLinear
from torchkron.experiments.bench.timing import cpu_memory_events, replayed_peak_bytes
from torchkron.functional import IMPLS, _calibration, calibrate, choose_impl, kron_linear
from torchkron.functional._plan import GROUP_MAX_SIZE, chain_plan_cached, group_sizes
from torchkron.functional.impls import fastkron as fastkron_impl

HAVE_FASTKRON = fastkron_impl.available()
# "fastkron" is tested only where pyfastkron is installed (the optional extra); "triton"
# runs on CUDA tensors only (its kernels are tested in tests/functional/test_triton.py; the
# errors of impl="triton" on CPU are in tests/functional/test_auto.py).
TESTED = [i for i in IMPLS if (i != "fastkron" or HAVE_FASTKRON) and i != "triton"]
needs_fastkron = pytest.mark.skipif(not HAVE_FASTKRON, reason="pyfastkron not installed")


@pytest.fixture(autouse=True)
def _default_calibration():
    """impl="auto" decides from the built-in constants, not this machine's calibration file."""
    _calibration.override({"devices": calibrate.DEFAULTS})
    yield
    _calibration.override(None)


shapes_st = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4)
lead_st = st.lists(st.integers(0, 3), min_size=0, max_size=2)


@pytest.mark.parametrize("impl", TESTED)
@given(shapes=shapes_st, rank=st.integers(1, 3), lead=lead_st, seed=st.integers(0, 2**16))
def test_forward_and_gradients_match_reference(impl, shapes, rank, lead, seed):
    factors = [f.requires_grad_() for f in random_factors(shapes, rank, seed=seed)]
    w = reference_weight(factors)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*lead, w.shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(w.shape[0], generator=g, dtype=torch.float64, requires_grad=True)
    y = kron_linear(x, factors, bias, impl=impl)
    ref = x @ w.T + bias
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    inputs = [x, bias, *factors]
    got = torch.autograd.grad(y, inputs, grad_out)
    want = torch.autograd.grad(ref, inputs, grad_out)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


GRAD_CASES = [
    ([(3, 4)], 2),
    ([(2, 3), (4, 2)], 1),
    ([(2, 3), (4, 2)], 3),
    ([(4, 2), (2, 3)], 3),
    ([(2, 2), (3, 1), (1, 3)], 2),
    ([(2, 1), (1, 2), (2, 2), (3, 2)], 2),
    ([(2, 2)] * 4, 1),  # small factors: merged into groups
]


@pytest.mark.parametrize("impl", TESTED)
@pytest.mark.parametrize(("shapes", "rank"), GRAD_CASES)
def test_gradcheck(impl, shapes, rank):
    factors = [f.requires_grad_() for f in random_factors(shapes, rank, seed=3)]
    n_in = math.prod(n for _, n in shapes)
    n_out = math.prod(o for o, _ in shapes)
    x = torch.randn(2, 3, n_in, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n_out, dtype=torch.float64, requires_grad=True)

    def fn(x, b, *f):
        return kron_linear(x, f, b, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, bias, *factors))
    if impl != "fastkron":  # pyfastkron's backward is not differentiable again
        assert torch.autograd.gradgradcheck(fn, (x, bias, *factors))
    else:
        with pytest.raises(RuntimeError, match=r"impl='fastkron'\) does not support double"):
            torch.autograd.gradgradcheck(fn, (x, bias, *factors))


@pytest.mark.parametrize("impl", ["bmm", "fused"])
def test_only_requested_gradients(impl):
    factors = random_factors([(3, 4), (2, 5)], 2, seed=0)
    factors[0].requires_grad_()
    x = torch.randn(6, 20, dtype=torch.float64)
    kron_linear(x, factors, impl=impl).sum().backward()
    assert factors[0].grad is not None
    assert factors[1].grad is None
    assert x.grad is None
    # Input only: the factors stay untouched.
    frozen = random_factors([(3, 4), (2, 5)], 1, seed=1)
    x.requires_grad_()
    kron_linear(x, frozen, impl=impl).sum().backward()
    w = reference_weight(frozen)
    torch.testing.assert_close(x.grad, w.sum(0).expand(6, -1))


def test_group_sizes_never_build_w():
    for outs, ins in [((8,) * 4, (8,) * 4), ((2,) * 6, (3,) * 6), ((16,) * 3, (16,) * 3)]:
        groups = group_sizes(outs, ins)
        assert sum(groups) == len(outs)
        assert len(groups) >= 2
        start = 0
        for size in groups:
            if size > 1:
                assert math.prod(outs[start : start + size]) * math.prod(
                    ins[start : start + size]
                ) <= max(GROUP_MAX_SIZE, math.prod(outs) * math.prod(ins))
            start += size
    # Large factors stay on their own.
    assert group_sizes((64, 64), (64, 64)) == (1, 1)
    assert group_sizes((8, 8, 8, 8), (8, 8, 8, 8)) == (2, 2)


def test_chain_plan_joint_rank_for_two_groups():
    plan = chain_plan_cached((25, 25), (28, 28), 4)
    assert plan.joint
    assert [s.m for s in plan.steps] == [4 * 25, 25]


def test_unknown_impl_and_missing_fastkron(monkeypatch):
    factors = random_factors([(2, 3), (2, 3)], 1)
    x = torch.zeros(2, 9, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"unknown impl 'nope'; choose one of 'auto'"):
        kron_linear(x, factors, impl="nope")
    monkeypatch.setattr(fastkron_impl, "_module", lambda: None)
    with pytest.raises(RuntimeError, match=r"impl='fastkron'.*pyfastkron is not installed"):
        kron_linear(x, factors, impl="fastkron")
    # auto never needs it.
    kron_linear(x, factors)


@needs_fastkron
def test_fastkron_rejects_bfloat16():
    factors = random_factors([(2, 3), (2, 3)], 1, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="float32 and float64 only"):
        kron_linear(torch.zeros(2, 9, dtype=torch.bfloat16), factors, impl="fastkron")


@needs_fastkron
@pytest.mark.parametrize("rank", [1, 2])
def test_fastkron_gradient_of_a_non_contiguous_input(rank):
    # pyfastkron 1.1.0 took "does the input need a gradient" from its own contiguous copy
    # of the input, made without autograd: a sliced (non-contiguous) input got none.
    factors = [f.requires_grad_() for f in random_factors([(3, 4), (2, 5)], rank, seed=6)]
    base = torch.randn(6, 30, dtype=torch.float64, requires_grad=True)
    x = base[:, 5:25]  # rows 30 apart: not contiguous
    assert not x.is_contiguous()
    y = kron_linear(x, factors, impl="fastkron")
    ref = x @ reference_weight(factors).T
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn(ref.shape, dtype=torch.float64)
    got = torch.autograd.grad(y, [base, *factors], g, allow_unused=True)
    want = torch.autograd.grad(ref, [base, *factors], g)
    for a, b in zip(got, want, strict=True):
        assert a is not None
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@needs_fastkron
def test_fastkron_float32_after_float64_in_one_process():
    # pyfastkron 1.1.0 shares one native handle per device between dtypes; a float32 call
    # after a float64 one must still give float32 results, not NaN. In a fresh process,
    # so that no earlier test has called it in either dtype.
    code = """
import torch
from tests.reference import random_factors, reference_weight
from torchkron.functional import kron_linear

for shapes in ([(3, 4), (2, 5)], [(8, 8), (8, 8)], [(25, 28), (25, 28)], [(4, 4)] * 3):
    f64 = [f.requires_grad_() for f in random_factors(shapes, 2, seed=7)]
    w = reference_weight([f.detach() for f in f64])
    g = torch.Generator().manual_seed(8)
    x64 = torch.randn(17, w.shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    kron_linear(x64, f64, impl="fastkron").sum().backward()
    for grad in (False, True):
        f32 = [f.detach().float().requires_grad_(grad) for f in f64]
        x32 = x64.detach().float().requires_grad_(grad)
        y = kron_linear(x32, f32, impl="fastkron")
        assert not y.isnan().any(), shapes
        ref = x64.detach() @ w.T
        torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
        if grad:
            (gx,) = torch.autograd.grad(y.sum(), x32)
            want = w.sum(0).expand_as(x64)
            torch.testing.assert_close(gx.double(), want, rtol=1e-4, atol=1e-4)
print("ok")
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("impl", ["permute", "bmm", "fused", "materialize"])
def test_bfloat16_close_to_float32(impl):
    torch.manual_seed(0)
    factors = [torch.randn(2, 8, 8) / 4, torch.randn(2, 8, 8) / 4]
    x = torch.randn(16, 64)
    ref = kron_linear(x, factors, impl="permute")
    out = kron_linear(x.bfloat16(), [f.bfloat16() for f in factors], impl=impl)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 2e-2


def test_choose_impl_follows_grad_mode():
    factors = [torch.randn(1, 8, 8, requires_grad=True) for _ in range(2)]
    x = torch.randn(4, 64)
    assert choose_impl(x, factors) in IMPLS
    with torch.no_grad():
        assert choose_impl(x, factors) in IMPLS
    assert choose_impl(x, [f.detach() for f in factors]) in IMPLS


def _peak_and_largest_allocation(fn) -> tuple[int, int]:
    """(peak live bytes, largest single allocation) of torch's CPU allocator during fn."""
    events = cpu_memory_events(fn)
    return replayed_peak_bytes(events), max(e["args"]["Bytes"] for e in events)


@pytest.mark.parametrize("impl", [i for i in TESTED if i != "materialize"])
def test_training_step_never_builds_w(impl):
    # W would be 4096 x 4096 float32 = 64 MiB; a batch of 4 rows is 64 KiB.
    torch.manual_seed(0)
    layer = KronLinear(4096, 4096, shapes=[(64, 64), (64, 64)], rank=2)
    x = torch.randn(4, 4096, requires_grad=True)

    def step():
        kron_linear(x, layer.factors, layer.bias, impl=impl).sum().backward()

    step()  # warm caches outside the profile
    peak, largest = _peak_and_largest_allocation(step)
    assert largest < 1 << 20
    assert peak < 4 << 20


@pytest.mark.parametrize("impl", ["bmm", "fused"])
def test_compile_fullgraph_and_export(impl):
    torch.manual_seed(0)
    factors = [torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 5, 2, requires_grad=True)]
    bias = torch.randn(15, requires_grad=True)
    x = torch.randn(7, 8, requires_grad=True)

    def fn(x, b, *f):
        return kron_linear(x, f, b, impl=impl)

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    inputs = (x, bias, *factors)
    torch.testing.assert_close(compiled(*inputs), fn(*inputs))
    got = torch.autograd.grad(compiled(*inputs).sum(), inputs)
    want = torch.autograd.grad(fn(*inputs).sum(), inputs)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = torch.nn.ParameterList([torch.nn.Parameter(f.detach()) for f in factors])

        def forward(self, x):
            return kron_linear(x, list(self.f), impl=impl)

    layer = Layer()
    exported = torch.export.export(layer, (x.detach(),))
    torch.testing.assert_close(exported.module()(x.detach()), layer(x.detach()))


def test_parameters_gradients_and_adam_state_scale_with_the_factors():
    layer = KronLinear(65536, 65536, shapes=[(256, 256), (256, 256)])
    params = list(layer.parameters())
    assert sum(p.numel() for p in params) == 2 * 256 * 256 + 65536  # not 65536**2
    opt = torch.optim.Adam(params)
    x = torch.randn(2, 65536)
    layer(x).sum().backward()
    opt.step()
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    largest = max(p.numel() for p in params)
    assert all(p.grad.numel() == p.numel() for p in params)
    assert sum(t.numel() for t in state if t.dim() > 0) == 2 * sum(p.numel() for p in params)
    assert max(t.numel() for t in state) <= largest


def _graph_nodes(fn: object) -> set[str]:
    seen: set[str] = set()
    stack = [fn]
    while stack:
        node = stack.pop()
        if node is None or type(node).__name__ in seen:
            continue
        seen.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)  # type: ignore[attr-defined]
    return seen


@pytest.mark.parametrize("impl", ["bmm", "fused"])
@pytest.mark.parametrize(("shapes", "rank"), [([(4, 3), (3, 2)], 1), ([(3, 3), (3, 3)], 1)])
def test_bias_adds_no_copy_of_the_output(impl, shapes, rank):
    # An in-place add on a reshaped view of the output made autograd rebuild the output's
    # gradient through CopySlices: a zeroed copy of the output and two more copies per
    # backward. The bias must reach the graph as one node over the fresh product.
    factors = [f.requires_grad_() for f in random_factors(shapes, rank, seed=0)]
    n_out = math.prod(o for o, _ in shapes)
    x = torch.randn(5, math.prod(n for _, n in shapes), dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n_out, dtype=torch.float64, requires_grad=True)
    y = kron_linear(x, factors, bias, impl=impl)
    nodes = _graph_nodes(y.grad_fn)
    assert not nodes & {"CopySlices", "AsStridedBackward0"}, nodes
    ref = x @ reference_weight(factors).T + bias
    g = torch.randn_like(ref)
    got = torch.autograd.grad(y, [x, bias, *factors], g)
    want = torch.autograd.grad(ref, [x, bias, *factors], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
