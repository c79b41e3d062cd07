"""The factored LoKr delta, ``x @ (scale * kron(w1, w2)).T``, and the report of an
acceleration; shared by the PEFT and LyCORIS integrations (torch only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from torchkron.functional import IMPLS, kron_linear
from torchkron.integrations.lokr._recompute import kron_pair_linear

__all__ = ["Acceleration", "check_impl", "lokr_delta"]


def check_impl(impl: str) -> None:
    """Raise ValueError naming the choices unless ``impl`` is a ``kron_linear`` impl."""
    if impl not in IMPLS:
        raise ValueError(
            f"accelerate: unknown impl {impl!r}; choose one of {', '.join(map(repr, IMPLS))}."
        )


def lokr_delta(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    *,
    scale: float | Tensor = 1.0,
    row_mask: Tensor | None = None,
    impl: str = "bmm",
    recompute: bool = True,
) -> Tensor:
    """``x @ (scale * kron(w1, w2) * row_mask[:, None]).T`` without building ``kron(w1, w2)``.

    With ``X`` the input row reshaped to ``(in_m, in_n)`` this is ``w1 @ X @ w2.T``
    flattened: two small GEMMs per row instead of one of the full layer size.

    Memory: the product passes through a state of ``rows x in_m * out_k`` numbers (as
    large as ``x`` for a square split), which autograd would keep for the backward. With
    ``recompute=True`` (default) only ``x``, the factors, the scale and the mask are kept
    and the state is recomputed in the backward: beside a frozen linear layer, which
    keeps ``x`` anyway, the adapter then holds no activation of its own, for one more
    small GEMM per step. Its input gradient is also a fresh tensor (not a view), which
    autograd can add the frozen layer's input gradient to in place.

    Args:
        x: input of shape ``(*, in_m * in_n)``.
        w1: the first (most significant) Kronecker factor, ``(out_l, in_m)``.
        w2: the second factor, ``(out_k, in_n)``.
        scale: a float or a 0-d tensor (a trainable scalar gets its gradient); folded into
            ``w1``, the smaller factor, so that it costs nothing per row.
        row_mask: optional ``(out_l * out_k,)`` multiplier of the output features (rank
            dropout: a mask on the rows of ``dW`` is a mask on the output).
        impl: :func:`torchkron.functional.kron_linear`'s ``impl``; the default ``"bmm"``
            is the factored chain (``"auto"`` may build the weight where that is faster).
        recompute: keep only the inputs for the backward (see above). With
            ``impl="bmm"`` the chain is then one autograd node with its own backward;
            any other ``impl`` runs under :func:`torch.utils.checkpoint.checkpoint`.
            ``False``: ``kron_linear(..., impl=impl)`` as it is, the state kept.

    Shape:
        - Input: ``(*, H_in)`` with ``H_in = in_m * in_n``.
        - Output: ``(*, H_out)`` with ``H_out = out_l * out_k``.

    Examples:
        >>> w1, w2 = torch.randn(4, 8), torch.randn(16, 8)
        >>> x = torch.randn(3, 64)
        >>> y = lokr_delta(x, w1, w2, scale=0.5)
        >>> torch.allclose(y, x @ (0.5 * torch.kron(w1, w2)).T, atol=1e-4)
        True
    """
    if w1.dim() != 2 or w2.dim() != 2:
        raise ValueError(
            f"lokr_delta: w1 and w2 must be matrices, got shapes {tuple(w1.shape)} and "
            f"{tuple(w2.shape)}; a convolution's LoKr factors are not supported here."
        )
    if isinstance(scale, Tensor) or scale != 1:
        w1 = w1 * scale
    if w1.dtype != w2.dtype:
        # torch.kron promotes; kron_linear wants one dtype.
        dtype = torch.promote_types(w1.dtype, w2.dtype)
        w1, w2 = w1.to(dtype), w2.to(dtype)
    y = _product(x, w1, w2, impl, recompute)  # (*, out_l * out_k)
    if row_mask is not None:
        y = y * row_mask.to(device=y.device, dtype=y.dtype)
    return y


def _product(x: Tensor, w1: Tensor, w2: Tensor, impl: str, recompute: bool) -> Tensor:
    """``x @ kron(w1, w2).T``, keeping for the backward what ``recompute`` says."""
    if recompute and impl == "bmm":
        return kron_pair_linear(x, w1, w2)

    def product(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
        return kron_linear(x, [w1.unsqueeze(0), w2.unsqueeze(0)], impl=impl)

    if recompute and torch.is_grad_enabled():
        out: Tensor = checkpoint(product, x, w1, w2, use_reentrant=False)
        return out
    return product(x, w1, w2)


@dataclass(frozen=True)
class Acceleration:
    """What ``accelerate`` did: the layers now computing the factored delta, and the LoKr
    layers left alone (their own forward still runs), each with why.

    Attributes:
        accelerated: names of the accelerated layers, in module order.
        skipped: name -> reason for every LoKr layer left alone.
    """

    accelerated: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"accelerated {len(self.accelerated)} LoKr layer(s)"]
        lines += [f"  left alone: {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)
