"""``impl="permute"``: the FLOP-optimal mode order, permuting the state so that every
contraction is one GEMM (autograd backward). The reference the benchmark compares every
other contender's output to."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchkron.functional._autograd import contiguous_grad
from torchkron.functional._guards import Sizes
from torchkron.functional._plan import permute_plan

__all__ = ["run", "unsupported_reason"]


def unsupported_reason(x: Tensor, factors: Sequence[Tensor]) -> str | None:
    """Always None: plain torch operators run wherever the tensors are."""
    return None


def run(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, sizes: Sizes) -> Tensor:
    """``x @ W.T + bias`` for a 2-D ``x`` of shape ``(B, prod in_i)``."""
    y = _contract(x, factors, sizes.outs, sizes.ins, sizes.rank)
    if bias is not None:
        y = y + bias
    return contiguous_grad(y)


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
    for step in permute_plan(tuple(outs), tuple(ins), rank):
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
