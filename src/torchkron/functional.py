"""Kronecker-factored linear maps as pure functions.

A Kronecker-factored weight is given by ``k`` factor tensors, factor ``i`` of shape
``(R, out_i, in_i)``, and stands for::

    W = sum_r F_1[r] (x) F_2[r] (x) ... (x) F_k[r]        # (prod out_i, prod in_i)

with :func:`torch.kron`'s index order (factor 1 is the most significant). The layer
computes ``y = x @ W.T + bias`` as ``nn.Linear`` does.

:func:`kron_linear` usually computes that product without building ``W``: it reshapes
the input into a tensor with one mode per factor and contracts the modes one at a time.
In the factored chain (``impl="bmm"``, see :data:`IMPLS`) each contraction is one GEMM
or batched GEMM that leaves the modes in place, so the state is never permuted or
copied; factors smaller than 16 x 16 are first multiplied out in pairs (never into
``W``), and the order is the one needing the fewest floating-point operations (see
:func:`contraction_order`). The default, ``impl="auto"``, picks between that chain and
materialising ``W`` (cheaper at high rank or for small layers; cached across calls in
inference) with a calibrated cost model (:mod:`torchkron._cost`).
:func:`kron_weight` builds ``W`` for inspection, export and tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import torch
from torch import Tensor

from torchkron._autograd import GemmStep, chain
from torchkron._autograd import linear as _dense_linear
from torchkron._gemm import _tracing

__all__ = [
    "IMPLS",
    "choose_impl",
    "clear_weight_cache",
    "contraction_order",
    "dense_flops",
    "executed_flops",
    "kron_flops",
    "kron_linear",
    "kron_weight",
    "set_weight_cache",
]

# Orders of up to this many factors are searched exhaustively (8! = 40320 orders, once
# per shape thanks to the cache); longer ones use the greedy order.
_EXHAUSTIVE_MAX_FACTORS = 8


def _check_factors(factors: Sequence[Tensor], caller: str) -> tuple[int, list[int], list[int]]:
    """Validate factor tensors; return (rank, out_sizes, in_sizes)."""
    if len(factors) == 0:
        raise ValueError(f"{caller}: got no factors; pass a sequence of at least one tensor.")
    for i, f in enumerate(factors):
        if f.dim() != 3:
            raise ValueError(
                f"{caller}: factor {i} has shape {tuple(f.shape)}, but every factor must be "
                "3-D (rank, out_i, in_i); add a leading rank dimension with factor.unsqueeze(0)."
            )
    ranks = {int(f.shape[0]) for f in factors}
    if len(ranks) != 1:
        shapes = [tuple(f.shape) for f in factors]
        raise ValueError(
            f"{caller}: the factors' leading (rank) dimensions differ: {shapes}; every factor "
            "must hold the same number R of summed terms."
        )
    rank = ranks.pop()
    if rank < 1:
        raise ValueError(f"{caller}: the factors have rank 0; each needs at least one term.")
    return rank, [int(f.shape[1]) for f in factors], [int(f.shape[2]) for f in factors]


def kron_weight(factors: Sequence[Tensor]) -> Tensor:
    """Build the dense weight ``W = sum_r F_1[r] (x) ... (x) F_k[r]``.

    Args:
        factors: ``k`` tensors, factor ``i`` of shape ``(R, out_i, in_i)``.

    Returns:
        ``W`` of shape ``(prod out_i, prod in_i)``, differentiable in the factors.

    Examples:
        >>> a, b = torch.randn(1, 2, 3), torch.randn(1, 4, 5)
        >>> torch.equal(kron_weight([a, b]), torch.kron(a[0], b[0]))
        True
    """
    _check_factors(factors, "kron_weight")
    return _materialize(factors)


def _materialize(factors: Sequence[Tensor]) -> Tensor:
    """``W`` as one GEMM over the rank: the first ``k - 1`` factors' terms times the last's.

    ``W[(a, c), (b, d)] = sum_r A[r, a, b] F_k[r, c, d]`` is a ``(a b, R) @ (R, c d)``
    product followed by one permute copy; its backward is two GEMMs of the same size, where
    the broadcast product ``A[:, :, None, :, None] * F_k[:, None, :, None, :]`` would hold
    R copies of ``W`` and reduce them.
    """
    if len(factors) == 1:
        f = factors[0]
        return f[0] if f.shape[0] == 1 else f.sum(0)
    head = factors[0] if len(factors) == 2 else _kron_terms(factors[:-1])
    last = factors[-1]
    rank, a, b = head.shape
    _, c, d = last.shape
    w = head.reshape(rank, a * b).t() @ last.reshape(rank, c * d)  # (a b, c d)
    return w.view(a, b, c, d).permute(0, 2, 1, 3).reshape(a * c, b * d)


def _order_flops(order: Sequence[int], outs: Sequence[int], ins: Sequence[int], rank: int) -> int:
    """FLOPs per input row of contracting the modes in ``order``."""
    dims = list(ins)
    total = 0
    for i in order:
        others = math.prod(dims) // dims[i]
        total += 2 * rank * others * ins[i] * outs[i]
        dims[i] = outs[i]
    return total


@lru_cache(maxsize=4096)
def _best_order(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> tuple[int, ...]:
    k = len(outs)
    if k <= _EXHAUSTIVE_MAX_FACTORS:
        return min(
            itertools.permutations(range(k)),
            key=lambda order: (_order_flops(order, outs, ins, rank), order),
        )
    # Greedy: the mode that shrinks the tensor most goes first.
    return tuple(sorted(range(k), key=lambda i: (outs[i] / ins[i], i)))


def contraction_order(
    out_sizes: Sequence[int], in_sizes: Sequence[int], rank: int = 1
) -> tuple[int, ...]:
    """The order of modes to contract that needs the fewest FLOPs.

    Exhaustive for up to eight factors, greedy (most shrinking mode first) beyond.

    Args:
        out_sizes: ``out_i`` of each factor.
        in_sizes: ``in_i`` of each factor.
        rank: number of summed Kronecker terms ``R``.

    Returns:
        A permutation of ``range(k)``.
    """
    return _best_order(tuple(out_sizes), tuple(in_sizes), rank)


def kron_flops(out_sizes: Sequence[int], in_sizes: Sequence[int], rank: int = 1) -> int:
    """Forward FLOPs per input row of :func:`kron_linear` (bias excluded)."""
    order = contraction_order(out_sizes, in_sizes, rank)
    return _order_flops(order, out_sizes, in_sizes, rank)


def executed_flops(out_sizes: Sequence[int], in_sizes: Sequence[int], rank: int = 1) -> int:
    """Forward FLOPs per input row of the contractions ``impl="bmm"`` (the default) runs.

    Unlike :func:`kron_flops` this counts what the implementation really does, including
    small factors multiplied out into larger groups (more FLOPs, fewer and faster GEMMs)
    and the rank handled term by term or jointly.
    """
    outs, ins = tuple(out_sizes), tuple(in_sizes)
    if len(outs) == 1:
        return rank * dense_flops(ins[0], outs[0])
    plan = _chain_plan_cached(outs, ins, rank)
    per_chain = sum(2 * s.pre * s.k * s.m * s.post for s in plan.steps)
    return per_chain * (1 if plan.joint else rank)


def dense_flops(in_features: int, out_features: int) -> int:
    """Forward FLOPs per input row of a dense ``nn.Linear`` (bias excluded)."""
    return 2 * in_features * out_features


IMPLS: tuple[str, ...] = ("auto", "permute", "bmm", "fused", "fastkron", "materialize", "triton")
"""Names accepted by :func:`kron_linear`'s ``impl`` option (see there)."""


def kron_linear(
    x: Tensor, factors: Sequence[Tensor], bias: Tensor | None = None, *, impl: str = "auto"
) -> Tensor:
    """Apply a Kronecker-factored linear map, ``x @ W.T + bias``, without building ``W``.

    Args:
        x: input of shape ``(*, prod in_i)``.
        factors: ``k >= 1`` tensors, factor ``i`` of shape ``(R, out_i, in_i)``, where
            ``R >= 1`` is the number of summed Kronecker terms.
        bias: optional ``(prod out_i,)`` tensor.
        impl: how to contract; every choice computes the same function:

            - ``"auto"`` (default): the one measured fastest for these sizes, device and
              dtype (see :func:`choose_impl`).
            - ``"permute"``: FLOP-optimal mode order; permutes the state so that every
              contraction is one GEMM (autograd backward).
            - ``"bmm"``: contracts each mode in place, one GEMM or batched GEMM per factor
              and no copies of the state (autograd backward).
            - ``"fused"``: as ``"bmm"``, but the whole product is one autograd node with a
              hand-written backward.
            - ``"fastkron"``: the ``pyfastkron`` package (optional extra ``fastkron``);
              float32/float64 only. Raises if it is not installed. Its backward is
              pyfastkron's, which is not differentiable again: ``create_graph=True``
              raises a RuntimeError saying so.
            - ``"materialize"``: build ``W`` (one GEMM over the rank), then one dense GEMM;
              cheaper than the chain when the rank is high or the layer small. Without
              autograd (inference) the built ``W`` is cached while the factors are
              unchanged (see :func:`clear_weight_cache`).
            - ``"triton"``: fused Triton kernels (``torchkron._triton``; CUDA, two
              factors). Raises if Triton or a CUDA device is not available.

    Returns:
        Tensor of shape ``(*, prod out_i)``.

    Shape:
        - Input: ``(*, H_in)`` with ``H_in = prod in_i``; any leading dims, including none
          and empty ones.
        - Output: ``(*, H_out)`` with ``H_out = prod out_i``.

    Examples:
        >>> a, b = torch.randn(1, 25, 28), torch.randn(1, 25, 28)
        >>> x = torch.randn(64, 784)
        >>> y = kron_linear(x, [a, b])
        >>> y.shape
        torch.Size([64, 625])
        >>> torch.allclose(y, x @ torch.kron(a[0], b[0]).T, atol=1e-4)
        True
    """
    rank, outs, ins = _check_factors(factors, "kron_linear")
    in_features, out_features = math.prod(ins), math.prod(outs)
    if x.dim() == 0 or x.shape[-1] != in_features:
        got = "a 0-d tensor" if x.dim() == 0 else f"shape {tuple(x.shape)}"
        sizes = " x ".join(str(n) for n in ins)
        raise ValueError(
            f"kron_linear: the input has {got}, but its last dimension must be "
            f"in_features={in_features} (the product of the factors' in-sizes {sizes}); "
            f"reshape the input to (*, {in_features}) or use factors whose in-sizes "
            f"multiply to {x.shape[-1] if x.dim() else 'its size'}."
        )
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"kron_linear: bias has shape {tuple(bias.shape)}, but it must be "
            f"({out_features},) to match out_features."
        )
    if impl not in IMPLS:
        raise ValueError(
            f"kron_linear: unknown impl {impl!r}; choose one of {', '.join(map(repr, IMPLS))}."
        )
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if impl == "auto":
        impl = _auto_impl(x2, factors, outs, ins, rank)
    if impl == "materialize":
        y = _impl_materialize(x2, factors, bias)
    elif impl == "triton":
        y = _impl_triton(x2, factors, bias)
    elif impl in ("bmm", "fused") and len(factors) > 1:
        y = _inplace(x2, factors, bias, outs, ins, rank, fused=impl == "fused")
        if impl == "bmm":
            y = _contiguous_grad(y)
    else:
        y = _IMPL_FUNCS[impl](x2, factors, outs, ins, rank)
        if bias is not None:
            y = y + bias
        if impl == "permute":
            y = _contiguous_grad(y)
        elif impl == "fastkron":
            y = _no_double_backward(y)
    return y.reshape(*lead, out_features)


class _ContiguousGradFn(torch.autograd.Function):
    """Identity whose backward hands a contiguous gradient to the chain below.

    ``layer(x).sum().backward()`` sends a stride-0 (expanded) gradient; the batched GEMMs
    of the chain's backward then fall off the BLAS fast path (2-3x slower steps,
    issue 8). One copy of the output gradient restores the contiguous speed.
    """

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.contiguous()


def _contiguous_grad(y: Tensor) -> Tensor:
    # Under torch.jit.trace the node would be baked into the graph, and the tracer's
    # re-run (without grad) would see a different graph; tracing is for inference anyway.
    if not (y.requires_grad and torch.is_grad_enabled()) or torch._C._get_tracing_state():
        return y
    out: Tensor = _ContiguousGradFn.apply(y)  # type: ignore[no-untyped-call]
    return out


class _NoDoubleBackwardFn(torch.autograd.Function):
    """Identity that refuses ``create_graph=True``: pyfastkron's backward is first-order."""

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        if torch.is_grad_enabled():  # i.e. backward(create_graph=True)
            raise RuntimeError(
                "kron_linear(impl='fastkron') does not support double backward "
                "(create_graph=True): pyfastkron's backward is not differentiable, so "
                "second derivatives would be wrong; use impl='bmm' or impl='fused'."
            )
        return grad


def _no_double_backward(y: Tensor) -> Tensor:
    if not (y.requires_grad and torch.is_grad_enabled()):
        return y
    out: Tensor = _NoDoubleBackwardFn.apply(y)  # type: ignore[no-untyped-call]
    return out


class _Step(NamedTuple):
    """One contraction of a precomputed plan (all sizes exclude the batch dimension)."""

    kind: str  # "gemm" | "expand" | "joint" | "bmm" (see _plan)
    factor: int  # which factor is contracted
    perm: tuple[int, ...]  # permutation of the state before the contraction
    rows: int  # rows of the GEMM per batch element (times R for "bmm")
    out_shape: tuple[int, ...]  # state shape after the step, batch dimension excluded


@lru_cache(maxsize=4096)
def _plan_cached(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> tuple[_Step, ...]:
    k = len(outs)
    order = _best_order(outs, ins, rank)
    # The state carries named axes: "b" (batch), "r" (rank term) and the factor modes
    # 0..k-1, each of size in_i until contracted, out_i after.
    axes: list[int | str] = ["b", *range(k)]
    sizes: dict[int | str, int] = {"b": 1, "r": rank, **dict(enumerate(ins))}
    steps = []
    for step, i in enumerate(order):
        others = [a for a in axes if a not in (i, "r")]
        rows = math.prod([sizes[a] for a in others if a != "b"])
        if rank == 1:
            kind, target, after = "gemm", [*others, i], [*others, i]
        elif step == 0:
            kind, target, after = "expand", [*others, i], [*others, "r", i]
        elif step == k - 1:
            kind, target, after = "joint", [*others, "r", i], [*others, i]
        else:
            kind, target, after = "bmm", ["r", *others, i], ["r", *others, i]
        perm = tuple(axes.index(a) for a in target)
        sizes[i] = outs[i]
        axes = after
        shape = tuple(sizes[a] for a in axes if a != "b")
        steps.append(_Step(kind, i, perm, rows, shape))
    final = tuple(axes.index(a) for a in ["b", *range(k)])
    steps.append(_Step("final", -1, final, 0, (math.prod(outs),)))
    return tuple(steps)


def _plan_uncompiled(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> tuple[_Step, ...]:
    return _plan_cached(outs, ins, rank)


# The plan depends only on the factor sizes, so torch.compile may treat it as a constant
# instead of tracing the order search.
_plan: Callable[[tuple[int, ...], tuple[int, ...], int], tuple[_Step, ...]] = (
    torch.compiler.assume_constant_result(_plan_uncompiled)  # type: ignore[no-untyped-call]
)


def _permuted(t: Tensor, perm: tuple[int, ...]) -> Tensor:
    return t if perm == tuple(range(len(perm))) else t.permute(perm)


def _contract(
    x: Tensor, factors: Sequence[Tensor], outs: list[int], ins: list[int], rank: int
) -> Tensor:
    """``impl="permute"``: contract ``x`` (B, prod in_i) with every factor; (B, prod out_i)."""
    batch = x.shape[0]
    if len(factors) == 1:
        # A single factor is the weight itself (summed over the rank).
        w = factors[0][0] if rank == 1 else factors[0].sum(0)
        return x @ w.t()
    t = x.reshape(batch, *ins)  # (B, n_1, ..., n_k)
    for step in _plan(tuple(outs), tuple(ins), rank):
        if step.kind == "final":
            return _permuted(t, step.perm).reshape(batch, step.out_shape[0])
        f = factors[step.factor]  # (R, o, n)
        o, n = outs[step.factor], ins[step.factor]
        t = _permuted(t, step.perm)
        if step.kind == "gemm":
            t = t.reshape(batch * step.rows, n) @ f[0].t()  # (B*M, o)
        elif step.kind == "expand":
            # All R terms at once: (B*M, n) @ (n, R*o).
            t = t.reshape(batch * step.rows, n) @ f.permute(2, 0, 1).reshape(n, rank * o)
        elif step.kind == "joint":
            # The rank summed inside the GEMM: (B*M, R*n) @ (R*n, o).
            t = t.reshape(batch * step.rows, rank * n) @ f.permute(0, 2, 1).reshape(rank * n, o)
        else:
            # One batched GEMM over the terms: (R, B*M, n) @ (R, n, o).
            t = torch.bmm(t.reshape(rank, batch * step.rows, n), f.transpose(1, 2))
        t = t.reshape(*_with_batch(step.kind, batch, rank, step.out_shape))
    raise AssertionError("unreachable: every plan ends with a final step")


def _with_batch(kind: str, batch: int, rank: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Insert the batch size into a plan's batch-free state shape."""
    # After "bmm" the rank axis leads and the batch follows it; otherwise batch leads.
    return (shape[0], batch, *shape[1:]) if kind == "bmm" else (batch, *shape)


# --------------------------------------------------------------------------------------
# impl="bmm" / "fused": in-place contractions (see torchkron._autograd).


def _kron_terms(factors: Sequence[Tensor]) -> Tensor:
    """``(R, prod out_i, prod in_i)``: the Kronecker product of each rank term, unsummed."""
    w = factors[0]
    rank = w.shape[0]
    for f in factors[1:]:
        _, o, n = w.shape
        _, p, q = f.shape
        w = (w[:, :, None, :, None] * f[:, None, :, None, :]).reshape(rank, o * p, n * q)
    return w


# A run of consecutive factors is multiplied out into one when every factor in it is at
# most this small (out_i * in_i): a contraction with an 8 x 8 factor moves 8 bytes per
# 16 FLOPs and runs memory-bound, while the merged 64 x 64 factor does 4x the FLOPs in
# less time (4096 as 8x8^4, training step 79 -> 52 ms; benchmarks/NOTES.md). A merged
# factor never exceeds _GROUP_MAX_SIZE entries, and at least two groups always remain:
# W itself is never built.
_GROUP_SMALL = 16 * 16
_GROUP_MAX_SIZE = 64 * 64


class _ChainPlan(NamedTuple):
    groups: tuple[int, ...]  # number of consecutive factors merged into each group
    order: tuple[int, ...]  # contraction order of the groups
    joint: bool  # two groups and R > 1: all terms in one pair of GEMMs
    steps: tuple[GemmStep, ...]


def _group_sizes(outs: tuple[int, ...], ins: tuple[int, ...]) -> tuple[int, ...]:
    groups: list[int] = []
    size = 0
    for o, n in zip(outs, ins, strict=True):
        small = o * n <= _GROUP_SMALL
        if groups and small and size * o * n <= _GROUP_MAX_SIZE and size > 0:
            groups[-1] += 1
            size *= o * n
        else:
            groups.append(1)
            size = o * n if small else 0  # 0: a large factor starts a closed group
    if len(groups) == 1 and len(outs) > 1:
        # Everything fitted into one group: split it in two halves instead.
        half = len(outs) // 2
        groups = [half, len(outs) - half]
    return tuple(groups)


@lru_cache(maxsize=4096)
def _chain_plan_cached(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> _ChainPlan:
    groups = _group_sizes(outs, ins)
    bounds = list(itertools.accumulate(groups, initial=0))
    g_outs = tuple(math.prod(outs[a:b]) for a, b in itertools.pairwise(bounds))
    g_ins = tuple(math.prod(ins[a:b]) for a, b in itertools.pairwise(bounds))
    if len(groups) == 2 and rank > 1:
        (o1, o2), (n1, n2) = g_outs, g_ins
        # Mode 2 first (as the wider out-dimension R * o2 of a plain GEMM), then mode 1
        # with the rank summed inside the contraction (k = n1 * R).
        steps = (GemmStep(n1, n2, rank * o2, 1), GemmStep(1, n1 * rank, o1, o2))
        return _ChainPlan(groups, (1, 0), True, steps)
    order = _best_order(g_outs, g_ins, 1)
    if len(g_outs) == 2 and _order_flops((0, 1), g_outs, g_ins, 1) == _order_flops(
        (1, 0), g_outs, g_ins, 1
    ):
        # A FLOP tie (square factors): the plain GEMM first, then the first mode with
        # pre == 1, whose GEMM can add the bias itself (both orders time alike).
        order = (1, 0)
    dims = list(g_ins)
    steps_list = []
    for i in order:
        steps_list.append(
            GemmStep(math.prod(dims[:i]), g_ins[i], g_outs[i], math.prod(dims[i + 1 :]))
        )
        dims[i] = g_outs[i]
    return _ChainPlan(groups, order, False, tuple(steps_list))


def _chain_plan_uncompiled(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> _ChainPlan:
    return _chain_plan_cached(outs, ins, rank)


_chain_plan: Callable[[tuple[int, ...], tuple[int, ...], int], _ChainPlan] = (
    torch.compiler.assume_constant_result(_chain_plan_uncompiled)  # type: ignore[no-untyped-call]
)


def _chain_mats(factors: Sequence[Tensor], plan: _ChainPlan) -> list[Tensor]:
    """The groups' merged factors, ``(R, out_g, in_g)`` each."""
    merged = []
    start = 0
    for size in plan.groups:
        part = factors[start : start + size]
        merged.append(part[0] if size == 1 else _kron_terms(part))
        start += size
    return merged


def _inplace(
    x: Tensor,
    factors: Sequence[Tensor],
    bias: Tensor | None,
    outs: list[int],
    ins: list[int],
    rank: int,
    fused: bool,
) -> Tensor:
    """``impl="bmm"`` (``fused=False``) and ``impl="fused"``, bias included."""
    plan = _chain_plan(tuple(outs), tuple(ins), rank)
    merged = _chain_mats(factors, plan)
    if plan.joint:
        f1, f2 = merged
        r, o2, n2 = f2.shape
        o1, n1 = f1.shape[1], f1.shape[2]
        # Rows (r, o2) of the first GEMM; columns (i1, r) of the second: the rank axis
        # produced by the first step sits right after mode 1, where the second sums it.
        mats = [f2.reshape(r * o2, n2), f1.permute(1, 2, 0).reshape(o1, n1 * r)]
        return chain(x, mats, plan.steps, fused, bias)
    # flatten(0, 1) of a (1, o, n) factor is a view: cheaper for autograd than [0].
    terms = [merged[i].flatten(0, 1) if rank == 1 else merged[i] for i in plan.order]
    if rank == 1:
        return chain(x, terms, plan.steps, fused, bias)
    # Three or more groups with R > 1: the sum of R rank-one chains (the same FLOPs as
    # carrying the rank axis through, without a second level of batching).
    y = chain(x, [t[0] for t in terms], plan.steps, fused, bias)
    for r in range(1, rank):
        y = y + chain(x, [t[r] for t in terms], plan.steps, fused)
    return y


def _impl_bmm(x: Tensor, f: Sequence[Tensor], outs: list[int], ins: list[int], rank: int) -> Tensor:
    if len(f) == 1:
        w = f[0].flatten(0, 1) if rank == 1 else f[0].sum(0)
        return x @ w.t()
    return _inplace(x, f, None, outs, ins, rank, fused=False)


def _impl_fused(
    x: Tensor, f: Sequence[Tensor], outs: list[int], ins: list[int], rank: int
) -> Tensor:
    if len(f) == 1:
        return _impl_bmm(x, f, outs, ins, rank)
    return _inplace(x, f, None, outs, ins, rank, fused=True)


def _impl_fastkron(
    x: Tensor, f: Sequence[Tensor], outs: list[int], ins: list[int], rank: int
) -> Tensor:
    from torchkron import _fastkron

    if x.shape[0] == 0 or len(f) == 1:
        # FastKron rejects empty inputs, and its backward fails for a single factor, which
        # is a plain matrix product anyway.
        reason = _fastkron.unsupported_reason(x, f)
        if reason is not None:
            raise RuntimeError(f"kron_linear(impl='fastkron'): {reason}.")
        return _impl_bmm(x, f, outs, ins, rank)
    return _fastkron.kron_linear(x, f, rank)


_IMPL_FUNCS: dict[str, Callable[[Tensor, Sequence[Tensor], list[int], list[int], int], Tensor]] = {
    "permute": _contract,
    "bmm": _impl_bmm,
    "fused": _impl_fused,
    "fastkron": _impl_fastkron,
}


def _impl_triton(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None) -> Tensor:
    reason = _triton_unavailable(factors)
    if reason is not None:
        raise RuntimeError(f"kron_linear(impl='triton'): {reason}.")
    from torchkron import _triton  # type: ignore[attr-defined,unused-ignore]

    y: Tensor = _triton.kron_linear_triton(x, list(factors), bias)
    return y


def _triton_unavailable(factors: Sequence[Tensor]) -> str | None:
    """Why the Triton kernels cannot run, or None when they can."""
    try:
        from torchkron import _triton  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return "torchkron._triton is not part of this installation"
    if not _triton.is_available():
        return "Triton or a CUDA device is not available (pip install triton, run on CUDA)"
    if len(factors) != 2:
        return f"the Triton kernels take exactly 2 factors, got {len(factors)}"
    if factors[0].device.type != "cuda":
        return f"the Triton kernels run on CUDA tensors, got device {factors[0].device}"
    return None


# --------------------------------------------------------------------------------------
# impl="materialize" and the inference cache of W


class _CacheEntry(NamedTuple):
    ref: Any  # weakref.ref to the first factor (drops the entry when it is freed)
    key: tuple[Any, ...]  # identity, storage, version and layout of every factor
    snapshot: tuple[Tensor, ...]  # copies of the factors' values when W was built
    weight: Tensor


_WEIGHT_CACHE: dict[int, _CacheEntry] = {}
_CACHE_ENABLED = True


def clear_weight_cache() -> None:
    """Drop every cached materialised ``W`` (see ``impl="materialize"``).

    The cache holds one ``W`` per factor set used for inference. An entry is reused only
    while every factor is the same tensor, with the same storage (``data_ptr``), version
    counter (moved by optimizer steps, ``copy_``, ``load_state_dict``) and layout, *and*
    equal values to a snapshot taken when ``W`` was built: writes that bypass version
    counters (through ``tensor.data``, or into a flat buffer the parameters are views
    of, as ``torchkron.experiments.training.optim.FlatAdadelta`` does) are caught by the
    comparison, which costs one pass over the (small) factors per call.
    """
    _WEIGHT_CACHE.clear()


def set_weight_cache(enabled: bool) -> None:
    """Turn caching of the materialised ``W`` in inference on (default) or off."""
    global _CACHE_ENABLED
    _CACHE_ENABLED = bool(enabled)
    if not enabled:
        clear_weight_cache()


def _cache_key(factors: Sequence[Tensor]) -> tuple[Any, ...] | None:
    try:
        return tuple(
            (id(f), f.data_ptr(), f._version, tuple(f.shape), f.stride(), f.dtype, f.device)
            for f in factors
        )
    except RuntimeError:  # inference tensors have no version counter: never cached
        return None


def _cacheable(factors: Sequence[Tensor]) -> bool:
    if not _CACHE_ENABLED or (torch.is_grad_enabled() and any(f.requires_grad for f in factors)):
        return False
    if _tracing():
        return False
    return all(type(f) in (Tensor, torch.nn.Parameter) for f in factors)


def _cached_weight(factors: Sequence[Tensor]) -> Tensor:
    """``W`` of ``factors`` (no autograd), reused while no factor has changed."""
    import weakref

    key = _cache_key(factors)
    if key is None:
        with torch.no_grad():
            return _materialize(factors)
    head = factors[0]
    entry = _WEIGHT_CACHE.get(id(head))
    if (
        entry is not None
        and entry.ref() is head
        and entry.key == key
        and all(torch.equal(f, s) for f, s in zip(factors, entry.snapshot, strict=True))
    ):
        return entry.weight
    with torch.no_grad():
        w = _materialize(factors)
        snapshot = tuple(f.detach().clone() for f in factors)
    slot = id(head)

    def _drop(_: Any, slot: int = slot) -> None:
        current = _WEIGHT_CACHE.get(slot)
        if current is not None and current.ref() is None:
            del _WEIGHT_CACHE[slot]

    _WEIGHT_CACHE[slot] = _CacheEntry(weakref.ref(head, _drop), key, snapshot, w)
    return w


def _impl_materialize(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None) -> Tensor:
    w = _cached_weight(factors) if _cacheable(factors) else _materialize(factors)
    return _dense_linear(x, w, bias)


def choose_impl(x: Tensor, factors: Sequence[Tensor]) -> str:
    """The ``impl`` that ``kron_linear(x, factors, impl="auto")`` runs.

    The choice comes from a cost model (FLOPs, bytes moved and operator count of each
    plan, priced with the machine constants of :mod:`torchkron._cost`, calibrated by
    ``torchkron bench --calibrate``) and depends on the sizes, the device, the dtype, and
    on whether autograd will need a backward (grad mode on and ``x`` or a factor
    requiring grad). Candidates: the factored chain (``"bmm"``), ``"materialize"``
    (cached across calls in inference), and ``"triton"`` on CUDA when it is available.
    """
    rank, outs, ins = _check_factors(factors, "choose_impl")
    return _auto_impl(x.reshape(-1, x.shape[-1]), factors, outs, ins, rank)


# Never materialise a W larger than this many times the layer's input + output (W of a
# 65536 x 65536 layer would be 16 GiB), nor above this absolute size.
_MATERIALIZE_MAX_BYTES = 1 << 30


def _auto_impl(
    x: Tensor, factors: Sequence[Tensor], outs: list[int], ins: list[int], rank: int
) -> str:
    if len(factors) == 1 or _tracing():
        # One factor is the weight itself; under tracing the plain chain is the graph
        # (batched GEMMs, nothing opaque or stateful).
        return "bmm"
    from torchkron import _cost

    train = torch.is_grad_enabled() and (x.requires_grad or any(f.requires_grad for f in factors))
    out_f, in_f = math.prod(outs), math.prod(ins)
    elt = x.element_size()
    may_materialize = out_f * in_f * elt <= _MATERIALIZE_MAX_BYTES
    return _priced_choice(
        tuple(_cost.calibration(x.device.type).items()),
        int(x.shape[0]),
        tuple(outs),
        tuple(ins),
        rank,
        elt,
        train,
        x.device.type == "cuda" and _triton_unavailable(factors) is None,
        may_materialize and not train and _cacheable(factors),
        may_materialize,
    )


@lru_cache(maxsize=4096)
def _priced_choice(
    constants: tuple[tuple[str, float], ...],
    batch: int,
    outs: tuple[int, ...],
    ins: tuple[int, ...],
    rank: int,
    elt: int,
    train: bool,
    triton_ok: bool,
    cached: bool,
    may_materialize: bool,
) -> str:
    """The cheapest plan for these sizes; a pure function of its arguments, so that a
    call pays for a dict lookup instead of pricing every plan again (a third of the
    forward pass of a 784->625 layer at batch 64, in Python)."""
    from torchkron import _cost

    plan = _chain_plan(outs, ins, rank)
    steps = [(s.pre, s.k, s.m, s.post) for s in plan.steps]
    repeats = 1 if plan.joint or rank == 1 else rank
    costs = _cost.plan_costs(
        dict(constants),
        batch,
        steps,
        repeats,
        outs,
        ins,
        rank,
        elt,
        train,
        triton_ok,
        kron_flops(outs, ins, rank),
    )
    options = {"bmm": costs.chain, "triton": costs.triton}
    if may_materialize:
        options["materialize"] = costs.cached if cached else costs.materialize
    return min(options, key=lambda k: (options[k], k != "bmm"))
