"""The nearest sum of Kronecker products to a dense matrix, in Frobenius norm.

:func:`kronecker_approximation` (behind the public ``nearest_kronecker``): the
Van Loan-Pitsianis rearrangement and a truncated SVD for two factors, a sequential SVD
with a beam for more; full or randomised SVDs; the relative error always measured from
the returned factors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from torchkron.factorization._shapes import FactorShapes, check_rank, check_shapes, clip_rank
from torchkron.functional import kron_weight

__all__ = [
    "SvdMethod",
    "check_finite",
    "kronecker_approximation",
    "relative_error",
]

SvdMethod = Literal["auto", "full", "randomized"]
"""How :func:`nearest_kronecker` computes its SVDs (see there)."""


def _rearrange(weight: Tensor, o1: int, n1: int, o2: int, n2: int) -> Tensor:
    """Van Loan-Pitsianis rearrangement: ``A (x) B`` becomes ``vec(A) vec(B)^T``."""
    # W[(a1, a2), (b1, b2)] -> R[(a1, b1), (a2, b2)]
    return weight.reshape(o1, o2, n1, n2).permute(0, 2, 1, 3).reshape(o1 * n1, o2 * n2)


def check_finite(weight: Tensor, caller: str) -> None:
    """Raise a ValueError naming the NaN/Inf entries of a 2-D ``weight``, if any."""
    finite = torch.isfinite(weight)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero()
    nans = int(torch.isnan(weight).sum())
    infs = int(bad.shape[0]) - nans
    shown = ", ".join(str(tuple(idx)) for idx in bad[:3].tolist())
    more = ", ..." if bad.shape[0] > 3 else ""
    raise ValueError(
        f"{caller}: weight of shape {tuple(weight.shape)} has {bad.shape[0]} non-finite "
        f"entries ({nans} NaN, {infs} Inf) at (row, col) [{shown}{more}]; its Kronecker "
        f"approximation would be all NaN. Fix the weight first (e.g. a finite checkpoint, "
        f"or weight.nan_to_num_())."
    )


def kronecker_approximation(
    weight: Tensor,
    shapes: Sequence[tuple[int, int]],
    rank: int,
    svd: SvdMethod,
    caller: str,
) -> tuple[list[Tensor], float]:
    """:func:`nearest_kronecker` with the caller's name in its messages and warnings."""
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{caller}: weight must be a 2-D matrix, got shape {got}.")
    rank = check_rank(rank, caller)
    if svd not in ("auto", "full", "randomized"):
        raise ValueError(f"{caller}: svd must be 'auto', 'full' or 'randomized', got {svd!r}.")
    out_features, in_features = (int(d) for d in weight.shape)
    clean = check_shapes(shapes, in_features, out_features, caller)
    if weight.device.type == "meta":
        raise ValueError(
            f"{caller}: weight is on the meta device and has no values to approximate; "
            f"build the layer without reading the weight (KronLinear.like_linear(linear) "
            f"or KronLinear(in, out, device='meta')) and load real values later."
        )
    check_finite(weight, caller)
    rank = clip_rank(rank, clean, caller)
    w64 = weight.detach().to(torch.float64)
    factors = _nearest(w64, clean, rank, svd)
    return [f.to(weight.dtype) for f in factors], relative_error(w64, factors)


def relative_error(weight: Tensor, factors: Sequence[Tensor]) -> float:
    """``||W - sum_r F_1[r] (x) ... (x) F_k[r]||_F / ||W||_F`` in float64 (0 if ``W = 0``).

    Computed directly from the factors, never from singular values, without building
    the ``(R, out, in)`` stack that :func:`kron_weight` uses: for two factors in the
    rearranged space (one matmul), otherwise a few rank terms at a time.
    """
    w = weight.to(torch.float64)
    norm = float(torch.linalg.matrix_norm(w))
    if norm == 0.0:
        return 0.0
    fs = [f.detach().to(torch.float64) for f in factors]
    rank = fs[0].shape[0]
    if len(fs) == 2:
        (_, o1, n1), (_, o2, n2) = fs[0].shape, fs[1].shape
        residual = _rearrange(w, o1, n1, o2, n2) - fs[0].reshape(rank, -1).mT @ fs[1].reshape(
            rank, -1
        )
        return float(torch.linalg.matrix_norm(residual)) / norm
    # Chunks of rank terms, at most ~2**22 entries of (chunk, out, in) at a time.
    chunk = max(1, (1 << 22) // max(1, w.numel()))
    residual = w.clone()
    for r in range(0, rank, chunk):
        residual -= kron_weight([f[r : r + chunk] for f in fs])
    return float(torch.linalg.matrix_norm(residual)) / norm


#: ``svd="auto"`` uses the randomised SVD when the smaller side is at least this...
_FAST_MIN_SIDE = 256


def _sketch_size(count: int, side: int) -> int:
    return min(side, 2 * count + 10)


def _top_svd(mat: Tensor, count: int, svd: SvdMethod) -> tuple[Tensor, Tensor, Tensor]:
    """The ``count`` leading singular triplets ``(U, s, Vh)`` of ``mat``."""
    side = min(mat.shape)
    count = min(count, side)
    q = _sketch_size(count, side)
    fast = svd == "randomized" or (svd == "auto" and side >= _FAST_MIN_SIDE and 4 * q <= side)
    if not fast or q >= side:
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        return u[:, :count], s[:count], vh[:count]
    return _randomized_svd(mat, count, q)


def _randomized_svd(
    mat: Tensor, count: int, q: int, *, max_iter: int = 8, tol: float = 1e-10
) -> tuple[Tensor, Tensor, Tensor]:
    """Randomised range finder (Halko et al.) with subspace iteration and Rayleigh-Ritz.

    Iterates until the ``count`` leading singular values of the sketch change by less
    than ``tol`` (relative to the largest) or ``max_iter`` is reached. A matrix of rank
    ``<= q`` is captured exactly by the first sketch; a decaying spectrum converges in a
    few iterations. A private, fixed-seed generator keeps it reproducible and leaves the
    global RNG alone (``torch.svd_lowrank`` would draw from it).
    """
    gen = torch.Generator(device=mat.device).manual_seed(0)
    omega = torch.randn(mat.shape[1], q, generator=gen, dtype=mat.dtype, device=mat.device)
    basis = torch.linalg.qr(mat @ omega).Q
    previous: Tensor | None = None
    for _ in range(max_iter):
        back = mat.mT @ basis  # (basis^T mat)^T: its singular values are the sketch's
        top = torch.linalg.svdvals(back)[:count]
        if previous is not None and bool(
            ((top - previous).abs() <= tol * top[0].clamp_min(1e-300)).all()
        ):
            break
        previous = top
        basis = torch.linalg.qr(mat @ torch.linalg.qr(back).Q).Q
    ub, s, vh = torch.linalg.svd(basis.mT @ mat, full_matrices=False)
    return (basis @ ub)[:, :count], s[:count], vh[:count]


def _nearest(weight: Tensor, shapes: FactorShapes, rank: int, svd: SvdMethod) -> list[Tensor]:
    """Sequential SVD with a beam of ``rank`` branches; returns ``(R, o_i, n_i)`` factors.

    Level ``i`` splits each kept remainder ``M`` into ``sum_j s_j U_j (x) M_j`` by the SVD
    of its rearrangement (orthonormal ``U_j``, ``M_j``). Every leaf of that tree is one
    Kronecker product, the leaves are mutually orthogonal, and a leaf's weight is the
    product of the singular values on its path, so keeping the ``rank`` heaviest leaves
    leaves exactly the dropped weights as error. With two factors this is the truncated
    SVD of the Van Loan-Pitsianis rearrangement, which is optimal. Only the ``rank``
    leading singular triplets of each remainder can survive the beam, so only those are
    computed.
    """
    k = len(shapes)
    # (weight, factors so far, remainder to split with the remaining shapes)
    beam: list[tuple[float, list[Tensor], Tensor]] = [(1.0, [], weight)]
    for level, (o, n) in enumerate(shapes[:-1]):
        rest = shapes[level + 1 :]
        o_rest, n_rest = math.prod(a for a, _ in rest), math.prod(b for _, b in rest)
        candidates: list[tuple[float, list[Tensor], Tensor]] = []
        for scale, prefix, remainder in beam:
            u, s, vh = _top_svd(_rearrange(remainder, o, n, o_rest, n_rest), rank, svd)
            for j in range(s.numel()):
                if s[j] <= 0:
                    break
                head = u[:, j].reshape(o, n)
                candidates.append(
                    (scale * float(s[j]), [*prefix, head], vh[j].reshape(o_rest, n_rest))
                )
        candidates.sort(key=lambda c: -c[0])
        beam = candidates[:rank]
    factors = [weight.new_zeros(rank, o, n) for o, n in shapes]
    for r, (scale, prefix, last) in enumerate(beam):
        # Spread the weight evenly over the factors (each path matrix has unit norm).
        root = scale ** (1.0 / k)
        for i, mat in enumerate([*prefix, last]):
            factors[i][r] = root * mat
    return factors
