"""The factored chain of ``impl="bmm"`` and ``impl="fused"``: the planned groups of
factors multiplied out, then contracted in place (:func:`torchkron.functional._autograd.chain`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from torchkron.functional._autograd import chain
from torchkron.functional._guards import Sizes
from torchkron.functional._plan import ChainPlan, chain_plan
from torchkron.functional._weight import kron_terms

__all__ = ["chain_linear", "one_factor"]


def one_factor(x: Tensor, factor: Tensor) -> Tensor:
    """``x @ W.T`` for a single factor, which is the weight itself (summed over the rank)."""
    w = factor.flatten(0, 1) if factor.shape[0] == 1 else factor.sum(0)
    return x @ w.t()


def _chain_mats(factors: Sequence[Tensor], plan: ChainPlan) -> list[Tensor]:
    """The groups' merged factors, ``(R, out_g, in_g)`` each."""
    merged = []
    start = 0
    for size in plan.groups:
        part = factors[start : start + size]
        merged.append(part[0] if size == 1 else kron_terms(part))
        start += size
    return merged


def chain_linear(
    x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, sizes: Sizes, fused: bool
) -> Tensor:
    """``x @ W.T + bias`` for two or more factors: ``impl="bmm"`` (``fused=False``) and
    ``impl="fused"``."""
    rank = sizes.rank
    plan = chain_plan(tuple(sizes.outs), tuple(sizes.ins), rank)
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
