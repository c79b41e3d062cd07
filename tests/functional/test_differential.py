"""Seeded randomized differential test (issue 17): kron_linear's output and every gradient
(input, each factor, bias) against the float64 ``torch.kron`` reference, over random
sizes, factor counts (1-4), ranks (1-3), dtypes (float64, float32, bfloat16, float16),
input layouts (batch 0, 1-D, leading dims, transposed, sliced, expanded), strided
factors, every impl that runs on the CPU, with and without torch.autocast.

Each case is drawn from its own seed (``random.Random(case)``), so a failure reproduces
from its test id alone: ``pytest "tests/functional/test_differential.py::test_case[17-...]"``.
``impl="triton"`` is left out: kron_linear runs it on CUDA tensors only (its kernels are
checked in the CPU interpreter by tests/functional/test_triton.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch
from tests.reference import reference_weight

from torchkron.functional import kron_linear
from torchkron.functional.impls import fastkron as fastkron_impl

HAVE_FASTKRON = fastkron_impl.available()
IMPLS = ["auto", "permute", "bmm", "fused", "materialize", *(["fastkron"] * HAVE_FASTKRON)]
DTYPES = {
    "f64": torch.float64,
    "f32": torch.float32,
    "bf16": torch.bfloat16,
    "f16": torch.float16,
}
LAYOUTS = ["rows", "batch0", "1d", "lead", "transposed", "sliced", "expanded"]
AUTOCAST = {"off": None, "ac-bf16": torch.bfloat16, "ac-f16": torch.float16}
# max |got - want| / max(1, max |want|) allowed, by compute dtype: a few units of
# rounding of the chain's intermediate states (bf16 has 8 significant bits, fp16 11).
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.bfloat16: 4e-2,
    torch.float16: 6e-3,
}
CASES = 320
MAX_WEIGHT = 4096


@dataclass(frozen=True)
class Case:
    seed: int
    shapes: tuple[tuple[int, int], ...]
    rank: int
    dtype: str
    autocast: str
    impl: str
    layout: str
    batch: int
    bias: bool
    strided_factors: bool

    @property
    def id(self) -> str:
        k = "x".join(f"{o}.{n}" for o, n in self.shapes)
        return (
            f"{self.seed}-{self.impl}-{self.dtype}-{self.autocast}-{self.layout}-k{k}"
            f"-r{self.rank}-b{self.batch}{'-bias' if self.bias else ''}"
            f"{'-sf' if self.strided_factors else ''}"
        )


def draw(seed: int) -> Case:
    rng = random.Random(seed)
    k = rng.randint(1, 4)
    while True:  # W of at most 4096 entries: a few hundred cases in well under a minute
        shapes = tuple((rng.randint(1, 5), rng.randint(1, 5)) for _ in range(k))
        if math.prod(o * n for o, n in shapes) <= MAX_WEIGHT:
            break
    dtype = rng.choice(list(DTYPES))
    # Autocast casts float32 tensors only (float64 passes through; low dtypes already are).
    autocast = rng.choice(list(AUTOCAST)) if dtype == "f32" else "off"
    impls = IMPLS
    if dtype in ("bf16", "f16") or autocast != "off":
        impls = [i for i in IMPLS if i != "fastkron"]  # FastKron: float32/float64 only
    return Case(
        seed=seed,
        shapes=shapes,
        rank=rng.randint(1, 3),
        dtype=dtype,
        autocast=autocast,
        impl=rng.choice(impls),
        layout=rng.choice(LAYOUTS),
        batch=rng.randint(1, 6),
        bias=rng.random() < 0.6,
        strided_factors=rng.random() < 0.3,
    )


ALL = [draw(i) for i in range(CASES)]


pytestmark = pytest.mark.usefixtures("default_constants")


def _layout(base: torch.Tensor, layout: str, batch: int, n: int) -> torch.Tensor:
    """The input, a view of the leaf ``base`` (see :func:`_base_shape`)."""
    if layout == "transposed":
        return base.t()  # (batch, n), strides (1, batch)
    if layout == "sliced":
        return base[:, ::2]  # (batch, n), stride 2 along the features
    if layout == "expanded":
        return base.expand(batch, n)  # stride 0 along the batch
    if layout == "lead":
        return base.view(2, batch, n)
    return base


def _base_shape(layout: str, batch: int, n: int) -> tuple[int, ...]:
    return {
        "rows": (batch, n),
        "batch0": (0, n),
        "1d": (n,),
        "lead": (2 * batch, n),
        "transposed": (n, batch),
        "sliced": (batch, 2 * n),
        "expanded": (1, n),
    }[layout]


def _factor(base: torch.Tensor, strided: bool) -> torch.Tensor:
    return base.transpose(1, 2) if strided else base


def _run(case: Case, factor_bases, x_base, bias, gy, dtype_override=None):
    """Output and gradients of (x_base, *factor_bases, bias) for kron_linear."""
    n = math.prod(n for _, n in case.shapes)
    factors = [_factor(b, case.strided_factors) for b in factor_bases]
    x = _layout(x_base, case.layout, case.batch, n)
    ac = AUTOCAST[case.autocast] if dtype_override is None else None
    if ac is None:
        y = kron_linear(x, factors, bias, impl=case.impl)
    else:
        with torch.autocast("cpu", dtype=ac):
            y = kron_linear(x, factors, bias, impl=case.impl)
    leaves = [x_base, *factor_bases, *([bias] if bias is not None else [])]
    grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    return y, grads


def _close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float, case: Case) -> None:
    assert got.shape == want.shape, (name, case.id)
    assert torch.isfinite(got).all(), f"{name}: non-finite values ({case.id})"
    if not want.numel():
        return
    err = (got.double() - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    assert err <= tol * scale, f"{name}: error {err:.3g} > {tol:g} x {scale:.3g} ({case.id})"


def check(case: Case) -> None:
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    n = math.prod(n for _, n in case.shapes)
    m = math.prod(o for o, _ in case.shapes)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    fshape = [(case.rank, n_, o) if case.strided_factors else (case.rank, o, n_)
              for o, n_ in case.shapes]  # fmt: skip
    factor_bases = [leaf(*s).requires_grad_() for s in fshape]
    x_base = leaf(*_base_shape(case.layout, case.batch, n)).requires_grad_()
    bias = leaf(m).requires_grad_() if case.bias else None
    lead = {"batch0": (0,), "1d": (), "lead": (2, case.batch)}.get(case.layout, (case.batch,))
    gy = torch.randn(*lead, m, generator=gen, dtype=torch.float64)

    y, grads = _run(case, factor_bases, x_base, bias, gy)

    # The reference: the same values in float64, W = sum_r kron(F_1[r], ..., F_k[r]).
    ref_bases = [b.detach().double().requires_grad_() for b in factor_bases]
    ref_x_base = x_base.detach().double().requires_grad_()
    ref_bias = None if bias is None else bias.detach().double().requires_grad_()
    # torch.kron itself fails on some transposed views (a .view inside), even ones that
    # count as contiguous (size-1 dims): dense copies.
    dense = [_factor(b, case.strided_factors).clone(memory_format=torch.contiguous_format)
             for b in ref_bases]  # fmt: skip
    w = reference_weight(dense)
    ref_x = _layout(ref_x_base, case.layout, case.batch, n)
    want = ref_x @ w.T + (0 if ref_bias is None else ref_bias)

    compute = AUTOCAST[case.autocast] or dtype
    tol = TOLERANCE[compute]
    # nn.Linear's dtypes: the output in the compute dtype; each gradient in its leaf's.
    assert y.dtype == compute, case.id
    _close("output", y, want, tol, case)
    leaves = [ref_x_base, *ref_bases, *([ref_bias] if ref_bias is not None else [])]
    wants = torch.autograd.grad(want, leaves, gy)
    names = ["input", *(f"factor {i}" for i in range(len(ref_bases))), "bias"]
    for name, g, gw, leaf_t in zip(
        names, grads, wants, [x_base, *factor_bases, bias], strict=False
    ):
        assert g.dtype == leaf_t.dtype, (name, case.id)
        _close(f"d {name}", g, gw, tol, case)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_case(case):
    check(case)


def test_cases_cover_the_space():
    # The draw must reach every impl, dtype, layout, factor count, rank and autocast mode.
    assert {c.impl for c in ALL} == set(IMPLS)
    assert {c.dtype for c in ALL} == set(DTYPES)
    assert {c.layout for c in ALL} == set(LAYOUTS)
    assert {len(c.shapes) for c in ALL} == {1, 2, 3, 4}
    assert {c.rank for c in ALL} == {1, 2, 3}
    assert {c.autocast for c in ALL} == set(AUTOCAST)
    assert any(c.strided_factors for c in ALL)
    assert {c.impl for c in ALL if c.autocast != "off"} >= {"auto", "bmm", "fused", "materialize"}


@pytest.mark.skipif(not HAVE_FASTKRON, reason="pyfastkron not installed")
@pytest.mark.parametrize("order", [("f64", "f32"), ("f32", "f64")], ids="-then-".join)
def test_fastkron_in_both_dtype_orders_within_one_process(order):
    # A float32 call after a float64 one once read the other dtype's state (NaN): run the
    # same shapes alternately in both dtypes, in this process, against the reference.
    base = draw(7)
    for round_ in range(3):
        for dtype in order:
            case = Case(
                seed=1000 + round_,
                shapes=((4, 5), (3, 2), (2, 3)),
                rank=2,
                dtype=dtype,
                autocast="off",
                impl="fastkron",
                layout="rows",
                batch=5 + round_,
                bias=True,
                strided_factors=base.strided_factors,
            )
            check(case)
