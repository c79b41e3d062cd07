"""Cost model behind ``kron_linear(impl="auto")``: pure pricing of the candidate plans.

Each candidate plan is priced as a sum of GEMMs and memory passes::

    t(GEMM M x K x N) = 2 M K N / (peak * e(M) * e(K) * e(N)) + bytes / bandwidth + launch
    e(d) = d / (d + d_half)        # a GEMM with a small dimension runs below peak

with the machine constants of :mod:`torchkron.functional._calibration` (``peak_flops``,
``d_half``, ``bandwidth``, ``launch_s``; measured by
:mod:`torchkron.functional.calibrate`). Every plan the model can pick computes the same
function, so a wrong calibration costs time, never correctness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from torchkron.functional._plan import one_gemm

__all__ = ["Costs", "plan_costs"]


class Costs(NamedTuple):
    """Predicted seconds of each plan (``inf`` where a plan does not apply)."""

    chain: float  # the factored chain (impl="bmm")
    materialize: float  # build W, then one dense GEMM (impl="materialize")
    cached: float  # a dense GEMM with W already built (inference, factors unchanged)
    triton: float  # the fused Triton kernels (CUDA, two factors)


def _gemm_time(
    c: Mapping[str, float], m: float, k: float, n: float, elt: int, batch: float = 1
) -> float:
    if min(m, k, n, batch) <= 0:
        return c["launch_s"]
    h = c["d_half"]
    eff = (m / (m + h)) * (k / (k + h)) * (n / (n + h))
    flops = 2.0 * batch * m * k * n
    moved = batch * (m * k + k * n + m * n) * elt
    return flops / (c["peak_flops"] * eff) + moved / c["bandwidth"] + c["launch_s"]


def plan_costs(
    c: Mapping[str, float],
    batch: int,
    steps: Sequence[tuple[int, int, int, int]],
    chain_repeats: int,
    outs: Sequence[int],
    ins: Sequence[int],
    rank: int,
    elt: int,
    train: bool,
    triton_ok: bool,
    factored_flops: int = 0,
) -> Costs:
    """Predicted times of the candidate plans.

    Args:
        c: machine constants (see :func:`torchkron.functional.calibrate.constants`).
        batch: rows of the input.
        steps: the chain's contractions as ``(pre, k, m, post)`` per input row.
        chain_repeats: how many times the chain runs (R for a sum of rank-one chains).
        outs, ins: factor sizes; rank: summed terms; elt: bytes per element.
        train: whether a backward follows (input and weight gradients).
        triton_ok: whether the Triton kernels can run this product.
        factored_flops: forward FLOPs per row of the FLOP-optimal contraction (Triton).
    """
    out_f, in_f = math.prod(outs), math.prod(ins)
    fwd = 0.0
    grads = 0.0
    for pre, k, m, post in steps:
        p = batch * pre
        if post == 1:
            t = _gemm_time(c, p, k, m, elt)
            wgrad = _gemm_time(c, m, p, k, elt)
        else:
            t = _gemm_time(c, m, k, post, elt, batch=p)
            if one_gemm(p, m, k, post):
                # Weight gradient: both operands copied to a (., p * post) layout, one GEMM.
                moved = 2.0 * p * post * (m + k) * elt
                wgrad = _gemm_time(c, m, p * post, k, elt) + moved / c["bandwidth"]
            else:
                # Batched products, then a sum over the p partial (m, k) sums.
                wgrad = (
                    _gemm_time(c, m, post, k, elt, batch=p) + 2.0 * p * m * k * elt / c["bandwidth"]
                )
        fwd += t
        grads += t + wgrad  # input gradient (same GEMM as forward) + weight gradient
    chain = chain_repeats * (fwd + (grads if train else 0.0))
    # Materialise: W = (F_1 ... F_{k-1} terms) (R) x (F_k terms), one GEMM over the rank
    # and one permute copy of W; then nn.Linear's GEMMs. Training adds dW, dX, and dW's
    # permute copy and contractions back into the factors.
    w_bytes = out_f * in_f * elt
    build = _gemm_time(c, out_f * in_f / (outs[-1] * ins[-1]), rank, outs[-1] * ins[-1], elt)
    build += 2.0 * w_bytes / c["bandwidth"] + c["launch_s"]
    dense = _gemm_time(c, batch, in_f, out_f, elt)
    # A cached W is checked against a snapshot of the factors on every call (one pass).
    factor_bytes = rank * sum(o * n for o, n in zip(outs, ins, strict=True)) * elt
    cached = dense + 2.0 * factor_bytes / c["bandwidth"] + len(outs) * c["launch_s"]
    materialize = build + dense
    if train:
        dense_bwd = _gemm_time(c, out_f, batch, in_f, elt) + _gemm_time(c, batch, out_f, in_f, elt)
        materialize += dense_bwd + build + _gemm_time(c, rank, out_f * in_f / rank, 1, elt)
        cached = math.inf  # a cached W carries no graph: only for inference
    triton = math.inf
    if triton_ok:
        # One kernel per direction, the intermediate kept on chip: the factored FLOPs at
        # a large GEMM's efficiency, plus reading x and writing y.
        flops = float(batch * factored_flops)
        passes = 3 if train else 1
        moved = batch * (in_f + out_f) * elt * passes
        triton = passes * (flops / c["peak_flops"] + c["launch_s"]) + moved / c["bandwidth"]
    return Costs(chain, materialize, cached, triton)
