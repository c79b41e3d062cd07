"""Rank budgets of ``kronify``: ``max_error``, ``target_params`` or ``compression``.

The checks on the budget arguments, and the choice of each free layer's rank from the
singular values of its two-factor rearrangement (:mod:`torchkron.factorization.budget`).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from torchkron.factorization import (
    LayerBudget,
    allocate_ranks,
    kron_spectrum,
    ranks_for_error,
    whitened_weight,
)
from torchkron.surgery.selection import Entry, check_int

__all__ = ["check_budget", "choose_ranks"]


def check_budget(
    rank: int | Mapping[str, int],
    *,
    tied: bool,
    from_dense: bool,
    max_error: float | None,
    target_params: int | None,
    compression: float | None,
    max_rank: int | None,
) -> list[str]:
    """The rank budget asked for (``[]``, or the one of ``max_error``, ``target_params``,
    ``compression`` given); raises ``ValueError`` on a bad or conflicting one."""
    budgets = [
        k
        for k, v in {
            "max_error": max_error,
            "target_params": target_params,
            "compression": compression,
        }.items()
        if v is not None
    ]
    if len(budgets) > 1:
        raise ValueError(f"kronify: give at most one of {', '.join(budgets)}.")
    if budgets and (tied or not from_dense):
        raise ValueError(
            f"kronify: {budgets[0]} chooses ranks from the nearest Kronecker factors of the "
            f"dense weights, which needs from_dense=True and tied=False."
        )
    if budgets and isinstance(rank, int) and rank != 1:
        raise ValueError(
            f"kronify: rank={rank} and {budgets[0]} both set the ranks; drop rank, or give "
            f"a {{pattern: rank}} dict to fix the rank of some layers."
        )
    if max_error is not None and not (isinstance(max_error, int | float) and 0 < max_error < 1):
        raise ValueError(f"kronify: max_error must be in (0, 1), got {max_error!r}.")
    if target_params is not None:
        check_int("target_params", target_params)
    if compression is not None and not (
        isinstance(compression, int | float)
        and not isinstance(compression, bool)
        and compression > 1
    ):
        raise ValueError(f"kronify: compression must be a number > 1, got {compression!r}.")
    if max_rank is not None:
        check_int("max_rank", max_rank)
    return budgets


def choose_ranks(
    planned: list[Entry],
    entries: list[Entry],
    params_before: int,
    max_error: float | None,
    target_params: int | None,
    compression: float | None,
    max_rank: int | None,
    moments: Mapping[str, Tensor] | None = None,
) -> str:
    """Set the rank of every free planned layer by the budget; returns its description.
    With ``moments`` (calibration), the errors are output errors (the spectrum of each
    whitened weight, :func:`torchkron.factorization.whitened_weight`)."""
    free = [e for e in planned if not e.fixed_rank]
    budgets: list[LayerBudget] = []
    for e in free:
        assert e.view is not None
        dense = e.view.weight.numel()
        moment = None if moments is None else moments.get(e.name)
        w = e.view.weight if moment is None else whitened_weight(e.view.weight, e.shapes, moment)
        spectrum = kron_spectrum(w, e.shapes)
        budgets.append(LayerBudget(e.name, dense, sum(o * n for o, n in e.shapes), spectrum))
    if max_error is not None:
        chosen = ranks_for_error(budgets, max_error, max_rank)
        desc = f"max_error={max_error}"
    else:
        if target_params is None:
            assert compression is not None
            target_params = int(params_before / compression)
        fixed_cost = 0
        for e in planned:
            assert e.view is not None
            if e.fixed_rank:
                fixed_cost += e.rank * sum(o * n for o, n in e.shapes) - e.view.weight.numel()
        available = target_params - (params_before + fixed_cost)
        chosen = allocate_ranks(budgets, available, max_rank)
        desc = (
            f"target_params={target_params:,}"
            if compression is None
            else f"compression={compression} (target_params={target_params:,})"
        )
    for e in free:
        choice = chosen[e.name]
        if isinstance(choice, str):
            e.reason = choice
        else:
            e.rank = choice
    return desc
