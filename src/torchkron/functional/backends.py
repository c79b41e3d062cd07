"""Which implementation can run where, and the oneDNN dense linear, as public names.

For the benchmark and other tools that compare contenders: one way to ask whether an
``impl=`` value of :func:`torchkron.functional.kron_linear` can run on given tensors,
and the oneDNN matmul that the chain's plain GEMMs use on CPUs where it measured faster.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from torchkron.functional import _autograd, _gemm
from torchkron.functional._dispatch import IMPLS
from torchkron.functional.impls import MODULES

__all__ = ["onednn_available", "onednn_linear", "unsupported_reason"]


def unsupported_reason(impl: str, x: Tensor, factors: Sequence[Tensor]) -> str | None:
    """Why ``kron_linear(x, factors, impl=impl)`` cannot run here, or None when it can.

    Covers what the implementation needs (an optional package, a device, a dtype), not
    the shapes every implementation validates alike. ``"auto"`` can always run.

    Raises:
        ValueError: ``impl`` is not one of :data:`torchkron.functional.IMPLS`.

    Examples:
        >>> import torch
        >>> from torchkron.functional.backends import unsupported_reason
        >>> f = [torch.randn(1, 2, 3), torch.randn(1, 4, 5)]
        >>> unsupported_reason("bmm", torch.randn(2, 15), f) is None
        True
        >>> unsupported_reason("triton", torch.randn(2, 15), f) is None
        False
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(map(repr, IMPLS))}.")
    if impl == "auto":
        return None
    return MODULES[impl].unsupported_reason(x, factors)


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's matmul operator.

    Examples:
        >>> from torchkron.functional.backends import onednn_available
        >>> isinstance(onednn_available(), bool)
        True
    """
    return _gemm.available()


def onednn_linear(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ w.T + bias`` for 2-d ``x`` on oneDNN's matmul, unconditionally, with autograd
    (forward and input gradient on oneDNN; needs :func:`onednn_available`).

    Examples:
        >>> import torch
        >>> from torchkron.functional.backends import onednn_available, onednn_linear
        >>> x, w = torch.randn(8, 3), torch.randn(4, 3)
        >>> not onednn_available() or torch.allclose(onednn_linear(x, w), x @ w.T, atol=1e-5)
        True
    """
    return _autograd.onednn_linear(x, w, bias)
