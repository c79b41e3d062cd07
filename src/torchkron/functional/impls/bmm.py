"""``impl="bmm"``: each mode contracted in place, one GEMM or batched GEMM per factor
group and no copies of the state; autograd differentiates the operations."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from torchkron.functional._autograd import contiguous_grad
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
    return contiguous_grad(chain_linear(x, factors, bias, sizes, fused=False))
