"""Choosing ranks per layer: by an error bound or by a parameter budget.

For two factors the nearest rank-``R`` Kronecker sum is the truncated SVD of the
Van Loan-Pitsianis rearrangement (Eckart-Young), so one set of singular values gives the
exact relative error of every rank: ``err(R)^2 = sum_{j >= R} s_j^2 / sum_j s_j^2``.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from torchkron.factorization._nearest import _rearrange

__all__ = ["LayerBudget", "allocate_ranks", "kron_spectrum", "rank_errors", "ranks_for_error"]


def kron_spectrum(weight: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
    """Singular values (float64, descending) of the rearrangement of ``weight`` for two
    factor shapes ``[(o1, n1), (o2, n2)]``.

    Examples:
        >>> a, b = torch.randn(2, 3), torch.randn(4, 5)
        >>> s = kron_spectrum(torch.kron(a, b), [(2, 3), (4, 5)])
        >>> bool(s[1] < 1e-5 * s[0])
        True
    """
    if len(shapes) != 2:
        raise ValueError(f"kron_spectrum: needs two factor shapes, got {len(shapes)}.")
    (o1, n1), (o2, n2) = shapes
    w = weight.detach().to(torch.float64)
    values: Tensor = torch.linalg.svdvals(_rearrange(w, o1, n1, o2, n2))
    return values


def rank_errors(spectrum: Tensor) -> list[float]:
    """``errors[R]``: relative Frobenius error of the best rank-``R`` sum, ``R = 0..len``."""
    sq = spectrum.to(torch.float64) ** 2
    total = float(sq.sum())
    if total == 0.0:
        return [0.0] * (sq.numel() + 1)
    # tail[R] = sum_{j >= R} s_j^2, cumulated from the end so small tails stay accurate.
    tail = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0]).tolist()
    return [max(t / total, 0.0) ** 0.5 for t in tail] + [0.0]


@dataclass(frozen=True)
class LayerBudget:
    """One layer's rank/error trade-off.

    Attributes:
        name: the layer's name.
        dense: weights of the dense layer.
        per_rank: weights one more Kronecker term costs (``sum o_i * n_i``).
        spectrum: singular values of the rearranged weight.
    """

    name: str
    dense: int
    per_rank: int
    spectrum: Tensor

    def useful_rank(self, max_rank: int | None) -> int:
        """The largest rank that still stores fewer weights than the dense layer."""
        r = min((self.dense - 1) // self.per_rank, self.spectrum.numel())
        return r if max_rank is None else min(r, max_rank)


def ranks_for_error(
    layers: Sequence[LayerBudget], max_error: float, max_rank: int | None = None
) -> dict[str, int | str]:
    """Per layer, the smallest rank whose relative error is at most ``max_error``, or the
    reason (a ``str``) the layer stays dense."""
    out: dict[str, int | str] = {}
    for layer in layers:
        errors = rank_errors(layer.spectrum)
        need = next(r for r, e in enumerate(errors) if e <= max_error or r == len(errors) - 1)
        need = max(need, 1)
        cap = layer.useful_rank(max_rank)
        if need <= cap:
            out[layer.name] = need
            continue
        why = (
            f"max_rank={max_rank}"
            if max_rank is not None and cap == max_rank
            else f"{need * layer.per_rank:,} weights, not fewer than the dense {layer.dense:,}"
        )
        out[layer.name] = (
            f"max_error={max_error} needs rank {need} (error {errors[need]:.4f}; {why}); left dense"
        )
    return out


def allocate_ranks(
    layers: Sequence[LayerBudget], available: int, max_rank: int | None = None
) -> dict[str, int | str]:
    """Ranks for ``layers`` within ``available`` parameters (relative to the dense model).

    ``available`` is how many parameters the conversion may leave, counted as a change
    from the dense layers: every layer starts at rank 1 (saving ``dense - per_rank``),
    then the rank step with the largest drop of squared relative error per added weight
    is taken while it fits. Greedy is optimal here up to the last step because each
    layer's gains ``s_R^2 / ||s||^2`` are non-increasing in ``R``.

    Raises:
        ValueError: if even rank 1 everywhere does not fit.
    """
    out: dict[str, int | str] = {}
    for layer in layers:
        if layer.useful_rank(None) < 1:
            out[layer.name] = (
                f"one Kronecker term ({layer.per_rank:,} weights) is not fewer than the dense "
                f"{layer.dense:,}; left dense"
            )
    layers = [layer for layer in layers if layer.name not in out]
    ranks = {layer.name: 1 for layer in layers}
    spent = sum(layer.per_rank - layer.dense for layer in layers)
    if spent > available:
        raise ValueError(
            f"kronify: the parameter target is out of reach: rank 1 in every convertible "
            f"layer still leaves {spent - available:,} parameters too many; target more "
            f"parameters (less compression), or convert more layers."
        )
    errors = {layer.name: rank_errors(layer.spectrum) for layer in layers}
    caps = {layer.name: layer.useful_rank(max_rank) for layer in layers}
    heap: list[tuple[float, int, LayerBudget]] = []

    def push(i: int, layer: LayerBudget) -> None:
        r = ranks[layer.name]
        if r < caps[layer.name]:
            e = errors[layer.name]
            gain = (e[r] ** 2 - e[r + 1] ** 2) / layer.per_rank
            heapq.heappush(heap, (-gain, i, layer))

    for i, layer in enumerate(layers):
        push(i, layer)
    while heap:
        _, i, layer = heapq.heappop(heap)
        if spent + layer.per_rank > available:
            continue  # this layer's next step does not fit; cheaper ones may
        ranks[layer.name] += 1
        spent += layer.per_rank
        push(i, layer)
    out.update(ranks)
    return out
