"""Contraction plans and FLOP counts: which mode to contract when, and at what price.

Two planners, both pure functions of the factor sizes (cached, and constants to
``torch.compile``):

- :func:`permute_plan` (``impl="permute"``): the FLOP-optimal mode order
  (:func:`contraction_order`), each step a permutation of the state followed by one GEMM.
- :func:`chain_plan` (``impl="bmm"``/``"fused"``): factors smaller than 16 x 16 multiplied
  out in groups, then one in-place GEMM or batched GEMM per group (a :class:`GemmStep`,
  run by :func:`torchkron.functional._autograd.chain`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple

import torch

__all__ = [
    "GROUP_MAX_SIZE",
    "ChainPlan",
    "GemmStep",
    "PermuteStep",
    "best_order",
    "chain_plan",
    "chain_plan_cached",
    "contraction_order",
    "dense_flops",
    "executed_flops",
    "group_sizes",
    "kron_flops",
    "one_gemm",
    "order_flops",
    "permute_plan",
]

# Orders of up to this many factors are searched exhaustively (8! = 40320 orders, once
# per shape thanks to the cache); longer ones use the greedy order.
_EXHAUSTIVE_MAX_FACTORS = 8


def order_flops(order: Sequence[int], outs: Sequence[int], ins: Sequence[int], rank: int) -> int:
    """FLOPs per input row of contracting the modes in ``order``."""
    dims = list(ins)
    total = 0
    for i in order:
        others = math.prod(dims) // dims[i]
        total += 2 * rank * others * ins[i] * outs[i]
        dims[i] = outs[i]
    return total


@lru_cache(maxsize=4096)
def best_order(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> tuple[int, ...]:
    k = len(outs)
    if k <= _EXHAUSTIVE_MAX_FACTORS:
        return min(
            itertools.permutations(range(k)),
            key=lambda order: (order_flops(order, outs, ins, rank), order),
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
    return best_order(tuple(out_sizes), tuple(in_sizes), rank)


def kron_flops(out_sizes: Sequence[int], in_sizes: Sequence[int], rank: int = 1) -> int:
    """Forward FLOPs per input row of :func:`kron_linear` (bias excluded)."""
    order = contraction_order(out_sizes, in_sizes, rank)
    return order_flops(order, out_sizes, in_sizes, rank)


def executed_flops(out_sizes: Sequence[int], in_sizes: Sequence[int], rank: int = 1) -> int:
    """Forward FLOPs per input row of the contractions ``impl="bmm"`` (the default) runs.

    Unlike :func:`kron_flops` this counts what the implementation really does, including
    small factors multiplied out into larger groups (more FLOPs, fewer and faster GEMMs)
    and the rank handled term by term or jointly.
    """
    outs, ins = tuple(out_sizes), tuple(in_sizes)
    if len(outs) == 1:
        return rank * dense_flops(ins[0], outs[0])
    plan = chain_plan_cached(outs, ins, rank)
    per_chain = sum(2 * s.pre * s.k * s.m * s.post for s in plan.steps)
    return per_chain * (1 if plan.joint else rank)


def dense_flops(in_features: int, out_features: int) -> int:
    """Forward FLOPs per input row of a dense ``nn.Linear`` (bias excluded)."""
    return 2 * in_features * out_features


class GemmStep(NamedTuple):
    """One in-place contraction; sizes are per input row (the batch ``B`` excluded)."""

    pre: int  # product of the mode sizes before the contracted one
    k: int  # contracted size (columns of the step's matrix)
    m: int  # produced size (rows of the step's matrix)
    post: int  # product of the mode sizes after the contracted one


def one_gemm(p: int, m: int, k: int, q: int) -> bool:
    """Whether the weight gradient of a batched step ``(P, m, Q) x (P, k, Q)`` runs as one
    long GEMM over copied operands (True) or as batched products and a sum (False)."""
    return m * k > ONE_GEMM_RATIO * q * (m + k)


#: Measured crossover of the two weight-gradient layouts (see ``one_gemm``).
ONE_GEMM_RATIO = 0.85


# --------------------------------------------------------------------------------------
# impl="permute": the FLOP-optimal order, permuting the state before each GEMM.


class PermuteStep(NamedTuple):
    """One contraction of a precomputed plan (all sizes exclude the batch dimension)."""

    kind: str  # "gemm" | "expand" | "joint" | "bmm" (see permute_plan_cached)
    factor: int  # which factor is contracted
    perm: tuple[int, ...]  # permutation of the state before the contraction
    rows: int  # rows of the GEMM per batch element (times R for "bmm")
    out_shape: tuple[int, ...]  # state shape after the step, batch dimension excluded


@lru_cache(maxsize=4096)
def permute_plan_cached(
    outs: tuple[int, ...], ins: tuple[int, ...], rank: int
) -> tuple[PermuteStep, ...]:
    k = len(outs)
    order = best_order(outs, ins, rank)
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
        steps.append(PermuteStep(kind, i, perm, rows, shape))
    final = tuple(axes.index(a) for a in ["b", *range(k)])
    steps.append(PermuteStep("final", -1, final, 0, (math.prod(outs),)))
    return tuple(steps)


def _permute_plan_uncompiled(
    outs: tuple[int, ...], ins: tuple[int, ...], rank: int
) -> tuple[PermuteStep, ...]:
    return permute_plan_cached(outs, ins, rank)


# The plan depends only on the factor sizes, so torch.compile may treat it as a constant
# instead of tracing the order search.
permute_plan: Callable[[tuple[int, ...], tuple[int, ...], int], tuple[PermuteStep, ...]] = (
    torch.compiler.assume_constant_result(_permute_plan_uncompiled)  # type: ignore[no-untyped-call]
)


# --------------------------------------------------------------------------------------
# impl="bmm" / "fused": in-place contractions of groups of factors.


# A run of consecutive factors is multiplied out into one when every factor in it is at
# most this small (out_i * in_i): a contraction with an 8 x 8 factor moves 8 bytes per
# 16 FLOPs and runs memory-bound, while the merged 64 x 64 factor does 4x the FLOPs in
# less time (4096 as 8x8^4, training step 79 -> 52 ms; benchmarks/NOTES.md). A merged
# factor never exceeds GROUP_MAX_SIZE entries, and at least two groups always remain:
# W itself is never built.
GROUP_SMALL = 16 * 16
GROUP_MAX_SIZE = 64 * 64


class ChainPlan(NamedTuple):
    groups: tuple[int, ...]  # number of consecutive factors merged into each group
    order: tuple[int, ...]  # contraction order of the groups
    joint: bool  # two groups and R > 1: all terms in one pair of GEMMs
    steps: tuple[GemmStep, ...]


def group_sizes(outs: tuple[int, ...], ins: tuple[int, ...]) -> tuple[int, ...]:
    groups: list[int] = []
    size = 0
    for o, n in zip(outs, ins, strict=True):
        small = o * n <= GROUP_SMALL
        if groups and small and size * o * n <= GROUP_MAX_SIZE and size > 0:
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
def chain_plan_cached(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> ChainPlan:
    groups = group_sizes(outs, ins)
    bounds = list(itertools.accumulate(groups, initial=0))
    g_outs = tuple(math.prod(outs[a:b]) for a, b in itertools.pairwise(bounds))
    g_ins = tuple(math.prod(ins[a:b]) for a, b in itertools.pairwise(bounds))
    if len(groups) == 2 and rank > 1:
        (o1, o2), (n1, n2) = g_outs, g_ins
        # Mode 2 first (as the wider out-dimension R * o2 of a plain GEMM), then mode 1
        # with the rank summed inside the contraction (k = n1 * R).
        steps = (GemmStep(n1, n2, rank * o2, 1), GemmStep(1, n1 * rank, o1, o2))
        return ChainPlan(groups, (1, 0), True, steps)
    order = best_order(g_outs, g_ins, 1)
    if len(g_outs) == 2 and order_flops((0, 1), g_outs, g_ins, 1) == order_flops(
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
    return ChainPlan(groups, order, False, tuple(steps_list))


def _chain_plan_uncompiled(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> ChainPlan:
    return chain_plan_cached(outs, ins, rank)


chain_plan: Callable[[tuple[int, ...], tuple[int, ...], int], ChainPlan] = (
    torch.compiler.assume_constant_result(_chain_plan_uncompiled)  # type: ignore[no-untyped-call]
)
