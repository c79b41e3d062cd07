"""The Monarch matrix nearest to a dense weight in Frobenius norm (Dao et al. 2022).

A :class:`torchkron.MonarchLinear` with ``b`` blocks connects input block ``j`` to
output block ``blk`` (rows ``s b + blk``) only through the intermediate features ``f`` with
``f // (m / b) = j`` and ``f % b = blk``; each feature belongs to exactly one pair
``(j, blk)``. The dense weight's ``(blk, j)`` submatrix is therefore a product of rank at most
the number of those features, and the projections of different submatrices are
independent: a truncated SVD of each submatrix is the Frobenius optimum.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["monarch_projection"]


def monarch_projection(weight: Tensor, nblocks: int) -> tuple[Tensor, Tensor, float]:
    """``(blkdiag1, blkdiag2, error)`` of the Monarch matrix nearest to ``weight``.

    Args:
        weight: ``(out, in)``, both divisible by ``nblocks``.
        nblocks: Monarch blocks ``b``.

    Returns:
        ``blkdiag1 (b, m / b, in / b)`` and ``blkdiag2 (b, out / b, m / b)`` in the layout
        of :class:`torchkron.MonarchLinear` (``m = min(in, out)``), in ``weight``'s dtype,
        and the relative Frobenius error ``||W - W_hat||_F / ||W||_F``.

    Examples:
        >>> from torchkron import MonarchLinear
        >>> layer = MonarchLinear(8, 12, nblocks=2, bias=False)
        >>> b1, b2, err = monarch_projection(layer.weight.detach().double(), 2)
        >>> err < 1e-6  # W was built in float32
        True
    """
    out_f, in_f = (int(d) for d in weight.shape)
    b = nblocks
    if isinstance(b, bool) or not isinstance(b, int) or b < 1 or in_f % b or out_f % b:
        raise ValueError(
            f"monarch_projection: nblocks must be a positive int dividing both sides of the "
            f"{out_f} x {in_f} weight, got {nblocks!r}."
        )
    w = weight.detach().to(torch.float64)
    mid = min(in_f, out_f)
    per = mid // b  # intermediate features per first-stage block
    b1 = w.new_zeros(b, per, in_f // b)
    b2 = w.new_zeros(b, out_f // b, per)
    # Output rows of second-stage block blk are s * b + blk; its column t is feature t * b + blk.
    for j in range(b):
        cols = w[:, j * (in_f // b) : (j + 1) * (in_f // b)]  # (out, in / b)
        for blk in range(b):
            feats = [f for f in range(j * per, (j + 1) * per) if f % b == blk]
            if not feats:
                continue
            block = cols[blk::b]  # (out / b, in / b)
            u, s, vh = torch.linalg.svd(block, full_matrices=False)
            k = min(len(feats), s.numel())
            half = s[:k].sqrt()
            for i, f in enumerate(feats[:k]):
                b1[j, f - j * per] = half[i] * vh[i]
                b2[blk, :, f // b] = half[i] * u[:, i]
    approx = _monarch_dense(b1, b2, in_f, out_f)
    norm = float(torch.linalg.matrix_norm(w))
    err = 0.0 if norm == 0.0 else float(torch.linalg.matrix_norm(w - approx)) / norm
    return b1.to(weight.dtype), b2.to(weight.dtype), err


def _monarch_dense(b1: Tensor, b2: Tensor, in_f: int, out_f: int) -> Tensor:
    """The dense ``(out, in)`` weight of Monarch factors (MonarchLinear's product)."""
    b = b1.shape[0]
    mid = b1.shape[1] * b
    first: Tensor = torch.block_diag(*b1)  # type: ignore[no-untyped-call]  # (m, in)
    w = b2.new_zeros(out_f, in_f)
    for blk in range(b):
        # Block blk reads features t * b + blk (t < m / b) and writes rows s * b + blk.
        w[blk::b] = b2[blk] @ first[blk:mid:b]
    return w
