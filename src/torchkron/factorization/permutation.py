"""A free permutation of an MLP's hidden units that lowers its Kronecker error.

In ``y = W2 act(W1 x + b1) + b2`` the hidden units can be reordered (rows of ``W1`` and
``b1``, columns of ``W2``) without changing the function. The nearest Kronecker sum of a
weight depends on that order: units at rows ``(a1, a2)`` of ``A (x) B`` share ``A``'s row
``a1`` and ``B``'s row ``a2``. :func:`hidden_permutation` looks for an order that both
layers approximate better (TQCompressor permutes before decomposing), by alternating:

1. fit the nearest Kronecker sums ``W1_hat``, ``W2_hat`` of the currently permuted
   weights (:func:`torchkron.nearest_kronecker`);
2. reassign units to slots: unit ``u`` into slot ``s`` costs
   ``||W1[u] - W1_hat[s]||^2 / ||W1||^2 + ||W2[:, u] - W2_hat[:, s]||^2 / ||W2||^2``,
   and a greedy assignment (cheapest pairs first) gives the next order;

keeping the order with the lowest summed squared relative error, so the result is never
worse than the identity. Apply it with :func:`permute_hidden`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchkron.factorization._nearest import kronecker_approximation
from torchkron.functional import kron_weight

__all__ = ["hidden_permutation", "permute_hidden"]


def permute_hidden(
    w1: Tensor, b1: Tensor | None, w2: Tensor, perm: Tensor
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(W1[perm], b1[perm], W2[:, perm])``: the same MLP with hidden unit ``perm[i]``
    moved to position ``i``.

    Examples:
        >>> w1, w2 = torch.randn(4, 3), torch.randn(2, 4)
        >>> p = torch.tensor([2, 0, 3, 1])
        >>> a, _, b = permute_hidden(w1, None, w2, p)
        >>> x = torch.randn(5, 3)
        >>> bool(torch.allclose(torch.relu(x @ a.T) @ b.T, torch.relu(x @ w1.T) @ w2.T))
        True
    """
    h = w1.shape[0]
    if w2.shape[-1] != h or sorted(perm.tolist()) != list(range(h)):
        raise ValueError(
            f"permute_hidden: perm must be a permutation of the {h} hidden units (rows of "
            f"w1, columns of w2), got w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)} and "
            f"perm of length {perm.numel()}."
        )
    return w1[perm], None if b1 is None else b1[perm], w2[:, perm]


def hidden_permutation(
    w1: Tensor,
    w2: Tensor,
    shapes1: Sequence[tuple[int, int]],
    shapes2: Sequence[tuple[int, int]],
    rank: int = 1,
    *,
    iters: int = 8,
) -> tuple[Tensor, float, float]:
    """A hidden-unit order that lowers the Kronecker error of both MLP layers.

    Args:
        w1: ``(h, d)`` first layer.
        w2: ``(d_out, h)`` second layer.
        shapes1: Kronecker factor shapes of ``w1`` (``prod out_i = h``).
        shapes2: Kronecker factor shapes of ``w2`` (``prod in_i = h``).
        rank: Kronecker rank of both layers.
        iters: alternations (fit, reassign) at most; stops early when nothing improves.

    Returns:
        ``(perm, before, after)``: ``perm`` (``(h,)`` int64, apply with
        :func:`permute_hidden`) and the summed squared relative Frobenius errors of the
        two layers before (identity order) and after (``after <= before``).

    Examples:
        >>> a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
        >>> w1 = torch.kron(a, b)[torch.tensor([0, 2, 1, 3, 4, 5, 6, 7])]  # two rows swapped
        >>> w2 = torch.randn(6, 8, dtype=torch.float64)
        >>> perm, before, after = hidden_permutation(w1, w2, [(4, 3), (2, 2)], [(3, 4), (2, 2)])
        >>> after < before
        True
    """
    h = int(w1.shape[0])
    if w1.dim() != 2 or w2.dim() != 2 or int(w2.shape[1]) != h:
        raise ValueError(
            f"hidden_permutation: w1 must be (h, d) and w2 (d_out, h) with the same h, got "
            f"{tuple(w1.shape)} and {tuple(w2.shape)}."
        )
    a = w1.detach().to(torch.float64)
    b = w2.detach().to(torch.float64)
    n1 = float((a * a).sum()) or 1.0
    n2 = float((b * b).sum()) or 1.0
    s1, s2 = list(shapes1), list(shapes2)

    def fit(perm: Tensor) -> tuple[float, Tensor, Tensor]:
        f1, e1 = kronecker_approximation(a[perm], s1, rank, "full", "hidden_permutation")
        f2, e2 = kronecker_approximation(b[:, perm], s2, rank, "full", "hidden_permutation")
        return e1**2 + e2**2, kron_weight(f1), kron_weight(f2)

    best = torch.arange(h)
    before, hat1, hat2 = fit(best)
    best_err = before
    for _ in range(iters):
        # cost[u, s]: unit u (original index) in slot s of the fitted weights.
        cost = _sq_dist(a, hat1) / n1 + _sq_dist(b.mT, hat2.mT) / n2  # (h, h)
        perm = _greedy_assignment(cost)
        err, new1, new2 = fit(perm)
        if err >= best_err * (1 - 1e-9):
            break
        best, best_err, hat1, hat2 = perm, err, new1, new2
    return best, before, best_err


def _sq_dist(x: Tensor, y: Tensor) -> Tensor:
    """``d[u, s] = ||x[u] - y[s]||^2``."""
    return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.mT).clamp_min(0.0)


def _greedy_assignment(cost: Tensor) -> Tensor:
    """``perm`` with slot ``s`` holding unit ``perm[s]``: cheapest (unit, slot) pairs first."""
    h = cost.shape[0]
    order = torch.argsort(cost.reshape(-1)).tolist()
    perm = [-1] * h
    unit_free = [True] * h
    left = h
    for idx in order:
        u, s = divmod(idx, h)
        if unit_free[u] and perm[s] < 0:
            perm[s] = u
            unit_free[u] = False
            left -= 1
            if not left:
                break
    return torch.tensor(perm, dtype=torch.long)
