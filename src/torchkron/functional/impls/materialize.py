"""``impl="materialize"``: build ``W`` (one GEMM over the rank), then one dense GEMM;
cheaper than the chain when the rank is high or the layer small. Without autograd the
built ``W`` is cached while the factors are unchanged (see
:func:`torchkron.functional.clear_weight_cache`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchkron.functional._autograd import linear
from torchkron.functional._guards import Sizes
from torchkron.functional._weight import cacheable, cached_weight, materialize

__all__ = ["run", "run_with", "unsupported_reason", "weight"]


def unsupported_reason(x: Tensor, factors: Sequence[Tensor]) -> str | None:
    """Always None: plain torch operators run wherever the tensors are."""
    return None


def run(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, sizes: Sizes) -> Tensor:
    """``x @ W.T + bias`` for a 2-D ``x`` of shape ``(B, prod in_i)``."""
    return linear(x, weight(factors), bias)


def run_with(
    x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """:func:`run` with ``W`` cast to ``dtype`` (the autocast compute dtype)."""
    return linear(x, weight(factors, dtype), bias)


def weight(factors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """``W`` in ``dtype`` (default: the factors' own): from the cache in inference, else
    built with autograd. Always built in the factors' dtype and then cast, as
    ``nn.Linear``'s weight is under autocast."""
    if cacheable(factors):
        return cached_weight(factors, dtype)
    w = materialize(factors)
    return w if dtype is None or w.dtype == dtype else w.to(dtype)
