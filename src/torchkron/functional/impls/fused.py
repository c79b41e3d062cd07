"""``impl="fused"``: the chain of ``impl="bmm"`` as one autograd node with a hand-written
backward (:class:`torchkron.functional._autograd._ChainFn`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from torchkron.functional._chain import chain_linear, one_factor
from torchkron.functional._guards import Sizes

__all__ = ["run", "unsupported_reason"]


def unsupported_reason(x: Tensor, factors: Sequence[Tensor]) -> str | None:
    """Always None: plain torch operators run wherever the tensors are."""
    return None


def run(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, sizes: Sizes) -> Tensor:
    """``x @ W.T + bias`` for a 2-D ``x`` of shape ``(B, prod in_i)``."""
    if len(factors) == 1:
        y = one_factor(x, factors[0])
        return y if bias is None else y + bias
    return chain_linear(x, factors, bias, sizes, fused=True)
