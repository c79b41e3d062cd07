"""The materialised reference every factored computation is checked against."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor


def reference_weight(factors: Sequence[Tensor]) -> Tensor:
    """``sum_r kron(F_1[r], ..., F_k[r])`` built with ``torch.kron`` itself."""
    rank = factors[0].shape[0]
    terms = [functools.reduce(torch.kron, [f[r] for f in factors]) for r in range(rank)]
    return torch.stack(terms).sum(0)


def random_factors(
    shapes: Sequence[tuple[int, int]],
    rank: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rank, o, n, generator=g, dtype=dtype) for o, n in shapes]
