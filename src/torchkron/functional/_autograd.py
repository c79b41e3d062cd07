"""Copy-free mode contractions and their hand-written backward.

The input row is viewed as a tensor with one mode per factor, ``(n_1, ..., n_k)``.
Contracting mode ``i`` with a matrix ``w`` of shape ``(m, k)`` replaces ``n_i`` by ``m``
*in place*: with ``pre`` the product of the sizes before mode ``i`` and ``post`` the product
of those after it, the state ``(B * pre, k, post)`` becomes ``(B * pre, m, post)``. That is

- one GEMM ``(B * pre, k) @ w.T`` when ``post == 1`` (the last mode), or
- one batched GEMM ``w @ S[p]`` over ``p < B * pre`` otherwise,

so no step permutes or copies the state, and the output comes out as a contiguous
``(B, prod out_i)`` tensor, as ``nn.Linear``'s does. :func:`chain` runs a sequence of such
steps; with ``fused=True`` the whole sequence is one :class:`torch.autograd.Function` whose
backward is written by hand (one autograd node instead of three to five per step, and no
gradient computed that nobody asked for); with ``fused=False`` autograd differentiates the
same operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchkron.functional import _gemm
from torchkron.functional._guards import records, tracing, transformed
from torchkron.functional._plan import GemmStep, one_gemm

__all__ = ["chain", "contiguous_grad", "linear", "no_double_backward", "onednn_linear"]


def _step(s: Tensor, w: Tensor, step: GemmStep, batch: int, bias: Tensor | None = None) -> Tensor:
    """One contraction; ``bias`` (only with ``step.pre == 1``) is added by the GEMM itself."""
    p = batch * step.pre
    if step.post == 1:
        return linear(s.reshape(p, step.k), w, bias)
    # expand() is a stride-0 view: the batched GEMM reads the same w for every entry,
    # where torch.matmul(w, s) would first copy s into a transposed layout.
    s3 = s.reshape(p, step.k, step.post)
    if torch.is_grad_enabled() and w.requires_grad and not (tracing() or transformed()):
        out: Tensor = _BatchedStepFn.apply(w, s3)  # type: ignore[no-untyped-call]
        # In place: the product is saved by nothing, and a fresh (P, m, post) tensor for
        # an out-of-place sum costs more than the add itself (new pages to fault in).
        return out if bias is None else out.add_(bias.view(1, step.m, step.post))
    we = w.expand(p, step.m, step.k)
    if bias is not None:
        return torch.baddbmm(bias.view(1, step.m, step.post), we, s3)
    return torch.bmm(we, s3)


def _weight_grad(g: Tensor, s: Tensor) -> Tensor:
    """``sum_p g[p] @ s[p].T`` for ``g`` of shape (P, m, Q) and ``s`` of shape (P, k, Q)."""
    p, m, q = g.shape
    k = s.shape[1]
    if one_gemm(p, m, k, q):
        # Both operands copied into a (., P * Q) layout, then one long GEMM: the copies
        # move P*Q*(m + k) numbers, where the batched products write and re-read P*m*k.
        gt = g.transpose(0, 1).reshape(m, p * q)  # (m, P*Q)
        st = s.transpose(0, 1).reshape(k, p * q)  # (k, P*Q)
        return _gemm.linear(gt, st)
    return torch.bmm(g, s.transpose(1, 2)).sum(0)  # (P, m, k) partial sums, then their sum


def linear(s: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``s @ w.T + bias`` (2-d), on oneDNN where :mod:`torchkron.functional._gemm` says
    so, with a gradient either way."""
    if records(s, w, bias) and _gemm.uses_onednn(s, w):
        return onednn_linear(s, w, bias)
    return _gemm.linear(s, w, bias)


def onednn_linear(s: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``s @ w.T + bias`` (2-d) on oneDNN, unconditionally, with a gradient."""
    out: Tensor = _LinearFn.apply(s, w, bias)  # type: ignore[no-untyped-call]
    return out


class _LinearFn(torch.autograd.Function):
    """``s @ w.T + bias`` with the forward and the input gradient on oneDNN (the caller
    decides when; see :mod:`torchkron.functional._gemm`). Autograd cannot differentiate oneDNN's
    operator, so under ``create_graph`` the backward uses plain operators."""

    @staticmethod
    def forward(ctx: Any, s: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(s, w)
        return _gemm.onednn_linear(s, w, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        s, w = ctx.saved_tensors
        grad = grad.contiguous()
        ds = None
        if ctx.needs_input_grad[0]:  # (P, k)
            ds = grad @ w if torch.is_grad_enabled() else _gemm.onednn_linear(grad, w.t())
        dw = grad.t() @ s if ctx.needs_input_grad[1] else None  # (m, k)
        dbias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return ds, dw, dbias


class _BatchedStepFn(torch.autograd.Function):
    """``w @ s[p]`` for every ``p`` (``w`` broadcast), with ``_weight_grad`` as its weight
    gradient instead of autograd's (P, m, k) partial products."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, s3: Tensor) -> Tensor:
        ctx.save_for_backward(w, s3)
        return torch.bmm(w.expand(s3.shape[0], w.shape[0], w.shape[1]), s3)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        w, s3 = ctx.saved_tensors
        grad = grad.contiguous()
        dw = _weight_grad(grad, s3) if ctx.needs_input_grad[0] else None
        ds = None
        if ctx.needs_input_grad[1]:
            ds = torch.bmm(w.t().expand(grad.shape[0], w.shape[1], w.shape[0]), grad)
        return dw, ds


def _forward(
    x: Tensor, mats: Sequence[Tensor], steps: Sequence[GemmStep], bias: Tensor | None = None
) -> list[Tensor]:
    """All states of the chain: ``[x, S_1, ..., S_n]``, the last as ``(B, features)``.

    ``bias`` is added to the last state: inside its GEMM when the last contracted mode is
    the first one (``pre == 1``, one bias row per GEMM row block), else by an addition.
    """
    batch = x.shape[0]
    states = [x]
    last = len(steps) - 1
    fold = bias is not None and steps[last].pre == 1
    for i, (w, st) in enumerate(zip(mats, steps, strict=True)):
        states.append(_step(states[-1], w, st, batch, bias if fold and i == last else None))
    features = steps[last].pre * steps[last].m * steps[last].post
    out = states[-1]  # a fresh GEMM output, not a view
    if bias is not None and not fold:
        out = _add_bias(out, bias, batch)
    states[-1] = out.reshape(batch, features)
    return states


class _AddBiasFn(torch.autograd.Function):
    """``y += bias`` on the fresh last state, broadcast over its rows as ``(B, features)``.

    Autograd would see ``y.reshape(B, features).add_(bias)`` as an in-place change of a
    view and rebuild ``y``'s gradient through ``CopySlices``: a zeroed copy of the whole
    output and two more copies per backward (a third of a 768->3072 rank-1 step here).
    Marking the base itself dirty keeps the backward a pass-through plus one sum.
    """

    @staticmethod
    def forward(ctx: Any, y: Tensor, bias: Tensor, batch: int) -> Tensor:
        ctx.mark_dirty(y)
        ctx.features = bias.shape[0]
        y.view(batch, bias.shape[0]).add_(bias)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        dbias = grad.reshape(-1, ctx.features).sum(0) if ctx.needs_input_grad[1] else None
        return grad, dbias, None


def _add_bias(y: Tensor, bias: Tensor, batch: int) -> Tensor:
    """``y`` (a GEMM output of ``batch * features`` numbers) plus ``bias``, in place: the
    product is saved by nothing, and a fresh output for an out-of-place sum costs more
    than the add itself (new pages to fault in)."""
    if tracing() or transformed():
        return (y.reshape(batch, bias.shape[0]) + bias).reshape(y.shape)
    if records(y, bias):
        out: Tensor = _AddBiasFn.apply(y, bias, batch)  # type: ignore[no-untyped-call]
        return out
    return y.view(batch, bias.shape[0]).add_(bias).view(y.shape)


def _manual_backward(
    states: Sequence[Tensor],
    mats: Sequence[Tensor],
    steps: Sequence[GemmStep],
    grad: Tensor,
    need_input: bool,
    need_mats: Sequence[bool],
) -> tuple[Tensor | None, list[Tensor | None]]:
    """Gradients of the chain for the input and each matrix, without autograd."""
    batch = states[0].shape[0]
    n = len(steps)
    # The input gradient flows back only as far as the first step that needs it.
    first = 0 if need_input else next((i for i in range(n) if need_mats[i]), n)
    mat_grads: list[Tensor | None] = [None] * n
    g = grad
    for i in range(n - 1, first - 1, -1):
        st, w, s = steps[i], mats[i], states[i]
        p = batch * st.pre
        if st.post == 1:
            g2 = g.reshape(p, st.m)
            if need_mats[i]:
                mat_grads[i] = g2.t() @ s.reshape(p, st.k)
            if i > first or need_input:
                g = _gemm.linear(g2, w.t())
        else:
            g3 = g.reshape(p, st.m, st.post)
            if need_mats[i]:
                mat_grads[i] = _weight_grad(g3, s.reshape(p, st.k, st.post))
            if i > first or need_input:
                g = torch.bmm(w.t().expand(p, st.k, st.m), g3)
    dx = g.reshape(states[0].shape) if need_input else None
    return dx, mat_grads


class _ChainFn(torch.autograd.Function):
    """The chain as a single autograd node with a hand-written backward."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, steps: tuple[GemmStep, ...], bias: Tensor | None, *mats: Tensor
    ) -> Tensor:
        ctx.steps = steps
        ctx.num_mats = len(mats)
        states = _forward(x, mats, steps, bias)
        # The same tensors autograd would keep: the input and every intermediate state.
        ctx.save_for_backward(*states[:-1], *mats)
        return states[-1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        n: int = ctx.num_mats
        states, mats = saved[:n], saved[n:]
        steps: tuple[GemmStep, ...] = ctx.steps
        need_input = bool(ctx.needs_input_grad[0])
        need_bias = bool(ctx.needs_input_grad[2])
        need_mats = [bool(b) for b in ctx.needs_input_grad[3:]]
        dbias = grad.sum(0) if need_bias else None
        if torch.is_grad_enabled():
            # create_graph=True: the saved intermediate states are constants of this node,
            # so differentiate a re-run of the plain operations instead; higher derivatives
            # then see every dependency.
            dx, *dm = _autograd_backward(states[0], mats, steps, grad, need_input, need_mats)
            return (dx, None, dbias, *dm)
        dx, dmats = _manual_backward(states, mats, steps, grad.contiguous(), need_input, need_mats)
        return (dx, None, dbias, *dmats)


def _autograd_backward(
    x: Tensor,
    mats: Sequence[Tensor],
    steps: Sequence[GemmStep],
    grad: Tensor,
    need_input: bool,
    need_mats: Sequence[bool],
) -> tuple[Tensor | None, ...]:
    inputs = [t for t, need in zip([x, *mats], [need_input, *need_mats], strict=True) if need]
    if not inputs:  # only the bias needs a gradient (the caller computes it)
        return (None, *(None for _ in need_mats))
    y = _forward(x, mats, steps)[-1]
    grads = iter(torch.autograd.grad(y, inputs, grad, create_graph=True, allow_unused=True))
    dx = next(grads) if need_input else None
    return (dx, *(next(grads) if need else None for need in need_mats))


def chain(
    x: Tensor,
    mats: Sequence[Tensor],
    steps: tuple[GemmStep, ...],
    fused: bool,
    bias: Tensor | None = None,
) -> Tensor:
    """Apply ``steps`` with matrices ``mats`` to ``x`` of shape ``(B, pre_1 * k_1 * post_1)``.

    Args:
        x: ``(B, n)`` input, ``n`` the product of the mode sizes.
        mats: one ``(m, k)`` matrix per step.
        steps: the contractions, in order.
        fused: run as one autograd node with the hand-written backward.
        bias: optional ``(features,)`` tensor added to the output.

    Returns:
        ``(B, pre_n * m_n * post_n)``, contiguous.
    """
    tensors = [x, *mats] if bias is None else [x, bias, *mats]
    if (
        fused
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
        and not transformed()
    ):
        out: Tensor = _ChainFn.apply(x, steps, bias, *mats)  # type: ignore[no-untyped-call]
        return out
    return _forward(x, mats, steps, bias)[-1]


class _ContiguousGradFn(torch.autograd.Function):
    """Identity whose backward hands a contiguous gradient to the chain below.

    ``layer(x).sum().backward()`` sends a stride-0 (expanded) gradient; the batched GEMMs
    of the chain's backward then fall off the BLAS fast path (2-3x slower steps,
    issue 8). One copy of the output gradient restores the contiguous speed.
    """

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.contiguous()


def contiguous_grad(y: Tensor) -> Tensor:
    """``y``, whose gradient reaches the operations below it contiguous."""
    # Under torch.jit.trace the node would be baked into the graph, and the tracer's
    # re-run (without grad) would see a different graph; tracing is for inference anyway.
    if (
        not (y.requires_grad and torch.is_grad_enabled())
        or torch._C._get_tracing_state()
        or transformed()
    ):
        return y
    out: Tensor = _ContiguousGradFn.apply(y)  # type: ignore[no-untyped-call]
    return out


class _NoDoubleBackwardFn(torch.autograd.Function):
    """Identity that refuses ``create_graph=True``: pyfastkron's backward is first-order."""

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        if torch.is_grad_enabled():  # i.e. backward(create_graph=True)
            raise RuntimeError(
                "kron_linear(impl='fastkron') does not support double backward "
                "(create_graph=True): pyfastkron's backward is not differentiable, so "
                "second derivatives would be wrong; use impl='bmm' or impl='fused'."
            )
        return grad


def no_double_backward(y: Tensor) -> Tensor:
    """``y``, whose backward raises under ``create_graph=True`` (pyfastkron's output)."""
    if not (y.requires_grad and torch.is_grad_enabled()):
        return y
    out: Tensor = _NoDoubleBackwardFn.apply(y)  # type: ignore[no-untyped-call]
    return out
