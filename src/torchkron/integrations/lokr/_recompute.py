"""The two-factor Kronecker product ``x @ kron(w1, w2).T`` with only its inputs saved.

The factored chain (``kron_linear(..., impl="bmm")``) contracts one mode with a GEMM and
the other with a batched GEMM, and autograd keeps the state between the two for the
backward: ``rows x in_m * out_k`` numbers, as large as the input itself for a square
LoKr split. Beside a frozen linear layer, which keeps the input alive anyway, that one
tensor is all the extra memory the adapter costs. :class:`_KronPairFn` saves ``x``,
``w1`` and ``w2`` only and recomputes the state in its backward: one GEMM of the forward
again (a sixth more of the adapter's own work, little beside the frozen layer's GEMMs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["kron_pair_linear"]


def _w2_first(w1: Tensor, w2: Tensor) -> bool:
    """Whether contracting ``w2``'s mode first costs no more FLOPs (ties: ``w2`` first,
    a plain GEMM over all rows, as the factored chain does)."""
    (out_l, in_m), (out_k, in_n) = w1.shape, w2.shape
    w2_first = in_m * in_n * out_k + out_l * in_m * out_k
    w1_first = out_l * in_m * in_n + out_l * in_n * out_k
    return w2_first <= w1_first


def _apply_w1(w1: Tensor, s: Tensor) -> Tensor:
    """``w1 @ s[b]`` for every ``b``: one batched GEMM that reads the same ``w1`` (a
    stride-0 view) where ``torch.matmul`` would first copy ``s`` to a new layout."""
    return torch.bmm(w1.expand(s.shape[0], w1.shape[0], w1.shape[1]), s)


def _sum_of_products(a: Tensor, b: Tensor) -> Tensor:
    """``sum_i a[i] @ b[i].T`` for ``a`` of shape ``(B, p, q)`` and ``b`` of ``(B, r, q)``.

    ``addbmm`` accumulates the products into one ``(p, r)`` result: no copies of the
    operands into a ``(., B * q)`` layout and no ``(B, p, r)`` partial sums, each as large
    as the state this function exists to not keep (and as fast as either, measured).
    """
    return torch.addbmm(a.new_zeros(()), a, b.transpose(1, 2), beta=0)


def _fresh(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``t`` (a fresh result nobody else holds) reshaped to ``shape`` as a tensor that
    autograd does not track as a view. A gradient that is a view keeps its base alive,
    so where it meets another gradient of the same input (the frozen layer's) autograd
    cannot add in place and allocates the sum: one more input-sized tensor at the peak.
    """
    out: Tensor = torch.ops.aten._unsafe_view(t, shape)
    return out


def _forward(x: Tensor, w1: Tensor, w2: Tensor, w2_first: bool) -> Tensor:
    rows = x.numel() // x.shape[-1]
    (out_l, in_m), (out_k, in_n) = w1.shape, w2.shape
    if w2_first:
        t = x.reshape(rows * in_m, in_n) @ w2.t()  # (B * in_m, out_k)
        y = _apply_w1(w1, t.view(rows, in_m, out_k))  # (B, out_l, out_k)
    else:
        u = _apply_w1(w1, x.reshape(rows, in_m, in_n))  # (B, out_l, in_n)
        y = u.view(rows * out_l, in_n) @ w2.t()  # (B * out_l, out_k)
    return _fresh(y, (*x.shape[:-1], out_l * out_k))


class _KronPairFn(torch.autograd.Function):
    """``x @ kron(w1, w2).T`` for ``x`` of shape ``(*, in_m * in_n)``; saves ``x``,
    ``w1``, ``w2`` and nothing else. The backward is made of differentiable operators on
    the saved inputs, so a double backward (``create_graph=True``) sees every dependency,
    and ``torch.func`` gets its batching rule generated."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, w1: Tensor, w2: Tensor, w2_first: bool) -> Tensor:
        return _forward(x, w1, w2, w2_first)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, w1, w2, w2_first = inputs
        ctx.save_for_backward(x, w1, w2)
        ctx.w2_first = w2_first

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w1, w2 = ctx.saved_tensors
        need_x, need_w1, need_w2 = ctx.needs_input_grad[:3]
        rows = x.numel() // x.shape[-1]
        (out_l, in_m), (out_k, in_n) = w1.shape, w2.shape
        # A stride-0 gradient (``y.sum().backward()``) would take the GEMMs off BLAS's
        # fast path; one copy of it is cheaper.
        g = grad.contiguous().view(rows, out_l, out_k)
        dx = dw1 = dw2 = None
        if ctx.w2_first:
            x2 = x.reshape(rows * in_m, in_n)
            if need_w1:
                t = (x2 @ w2.t()).view(rows, in_m, out_k)  # the forward's state, again
                dw1 = _sum_of_products(g, t)  # (out_l, in_m)
                del t  # freed before the gradients of the same size are made
            if need_x or need_w2:
                dt = _apply_w1(w1.t(), g).view(rows * in_m, out_k)  # (B * in_m, out_k)
                dw2 = dt.t() @ x2 if need_w2 else None  # (out_k, in_n)
                dx = _fresh(dt @ w2, x.shape) if need_x else None
        else:
            g2 = g.view(rows * out_l, out_k)
            x3 = x.reshape(rows, in_m, in_n)
            if need_w2:
                u = _apply_w1(w1, x3).view(rows * out_l, in_n)  # the forward's state, again
                dw2 = g2.t() @ u  # (out_k, in_n)
                del u
            if need_x or need_w1:
                du = (g2 @ w2).view(rows, out_l, in_n)  # (B, out_l, in_n)
                dw1 = _sum_of_products(du, x3) if need_w1 else None  # (out_l, in_m)
                dx = _fresh(_apply_w1(w1.t(), du), x.shape) if need_x else None
        return dx, dw1, dw2, None


def kron_pair_linear(x: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """``x @ kron(w1, w2).T`` for ``x`` of shape ``(*, in_m * in_n)``, saving only ``x``,
    ``w1`` and ``w2`` for the backward (see the module docstring).

    Under ``torch.autocast`` it computes as ``nn.Linear`` does: the three tensors cast to
    the autocast dtype by recorded casts, the product in that dtype with autocast off.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, w1, w2 = (t if t.dtype in (dtype, torch.float64) else t.to(dtype) for t in (x, w1, w2))
        with torch.autocast(device_type, enabled=False):
            return kron_pair_linear(x, w1, w2)
    if x.dtype != w1.dtype or x.dtype != w2.dtype:
        raise ValueError(
            f"lokr_delta: x ({x.dtype}) and the factors ({w1.dtype}, {w2.dtype}) must share "
            f"a dtype; cast the input (x.to(w1.dtype)) or the factors."
        )
    features = w1.shape[1] * w2.shape[1]
    if x.shape[-1] != features:
        raise ValueError(
            f"lokr_delta: x has {x.shape[-1]} features, but kron(w1, w2) of shapes "
            f"{tuple(w1.shape)} and {tuple(w2.shape)} takes {features}; pass an input of "
            f"shape (*, {features})."
        )
    # x goes in as it is: a reshape outside would make x's gradient a view (see _fresh).
    y: Tensor = _KronPairFn.apply(x, w1, w2, _w2_first(w1, w2))  # type: ignore[no-untyped-call]
    return y
