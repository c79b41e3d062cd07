"""``impl="materialize"``: build ``W`` (one GEMM over the rank), then one dense GEMM;
cheaper than the chain when the rank is high or the layer small. Without autograd the
built ``W`` is cached while the factors are unchanged (see
:func:`torchkron.functional.clear_weight_cache`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from torchkron.functional._autograd import linear
from torchkron.functional._guards import Sizes
from torchkron.functional._weight import cacheable, cached_weight, materialize

__all__ = ["run", "unsupported_reason"]


def unsupported_reason(x: Tensor, factors: Sequence[Tensor]) -> str | None:
    """Always None: plain torch operators run wherever the tensors are."""
    return None


def run(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, sizes: Sizes) -> Tensor:
    """``x @ W.T + bias`` for a 2-D ``x`` of shape ``(B, prod in_i)``."""
    w = cached_weight(factors) if cacheable(factors) else materialize(factors)
    return linear(x, w, bias)
