"""``kron_linear`` and ``choose_impl``: validate once, price the plans (``impl="auto"``),
call the chosen implementation in :mod:`torchkron.functional.impls`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from torchkron.functional import _amp, _calibration, _cost
from torchkron.functional._guards import (
    Sizes,
    check_bias,
    check_factors,
    check_input,
    check_real,
    tracing,
    transformed,
)
from torchkron.functional._plan import chain_plan, kron_flops
from torchkron.functional._weight import cacheable
from torchkron.functional.impls import MODULES, materialize, triton

__all__ = ["IMPLS", "choose_impl", "kron_linear"]

IMPLS: tuple[str, ...] = ("auto", "permute", "bmm", "fused", "fastkron", "materialize", "triton")
"""Names accepted by :func:`kron_linear`'s ``impl`` option (see there)."""


def kron_linear(
    x: Tensor, factors: Sequence[Tensor], bias: Tensor | None = None, *, impl: str = "auto"
) -> Tensor:
    """Apply a Kronecker-factored linear map, ``x @ W.T + bias``, without building ``W``.

    Under ``torch.autocast`` the call computes as ``nn.Linear`` does: in the autocast
    dtype, with the output in it and every gradient in its own tensor's dtype. Under
    ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ...) every ``impl`` but
    ``"fastkron"`` and ``"triton"`` runs, as plain differentiable operators.

    Args:
        x: input of shape ``(*, prod in_i)``.
        factors: ``k >= 1`` tensors, factor ``i`` of shape ``(R, out_i, in_i)``, where
            ``R >= 1`` is the number of summed Kronecker terms.
        bias: optional ``(prod out_i,)`` tensor.
        impl: how to contract; every choice computes the same function:

            - ``"auto"`` (default): the one measured fastest for these sizes, device and
              dtype (see :func:`choose_impl`).
            - ``"permute"``: FLOP-optimal mode order; permutes the state so that every
              contraction is one GEMM (autograd backward).
            - ``"bmm"``: contracts each mode in place, one GEMM or batched GEMM per factor
              and no copies of the state (autograd backward).
            - ``"fused"``: as ``"bmm"``, but the whole product is one autograd node with a
              hand-written backward.
            - ``"fastkron"``: the ``pyfastkron`` package (optional extra ``fastkron``);
              float32/float64 only. Raises if it is not installed. Its backward is
              pyfastkron's, which is not differentiable again: ``create_graph=True``
              raises a RuntimeError saying so.
            - ``"materialize"``: build ``W`` (one GEMM over the rank), then one dense GEMM;
              cheaper than the chain when the rank is high or the layer small. Without
              autograd (inference) the built ``W`` is cached while the factors are
              unchanged (see :func:`clear_weight_cache`).
            - ``"triton"``: fused Triton kernels
              (:mod:`torchkron.functional.impls.triton`; CUDA, two factors). Raises if
              Triton or a CUDA device is not available.

    Returns:
        Tensor of shape ``(*, prod out_i)``.

    Raises:
        ValueError: shapes that do not fit together, or an unknown ``impl``.
        TypeError: complex tensors (build ``W`` with :func:`kron_weight` instead).
        RuntimeError: an ``impl`` that cannot run here (a missing package, device or
            dtype), with the reason.

    Shape:
        - Input: ``(*, H_in)`` with ``H_in = prod in_i``; any leading dims, including none
          and empty ones.
        - Output: ``(*, H_out)`` with ``H_out = prod out_i``.

    Examples:
        >>> a, b = torch.randn(1, 25, 28), torch.randn(1, 25, 28)
        >>> x = torch.randn(64, 784)
        >>> y = kron_linear(x, [a, b])
        >>> y.shape
        torch.Size([64, 625])
        >>> torch.allclose(y, x @ torch.kron(a[0], b[0]).T, atol=1e-4)
        True
    """
    sizes = check_factors(factors, "kron_linear")
    check_input(x, sizes, "kron_linear")
    check_bias(bias, sizes, "kron_linear")
    check_real(x, factors, bias, "kron_linear")
    if impl not in IMPLS:
        raise ValueError(
            f"kron_linear: unknown impl {impl!r}; choose one of {', '.join(map(repr, IMPLS))}."
        )
    lead = x.shape[:-1]
    x2 = x.reshape(-1, sizes.in_features)
    dtype = _amp.autocast_dtype(x.device.type) if torch._C._is_any_autocast_enabled() else None
    if dtype is not None:
        y = _run_autocast(x2, factors, bias, sizes, impl, dtype)
    else:
        if impl == "auto":
            impl = _auto_impl(x2, factors, sizes)
        y = MODULES[impl].run(x2, factors, bias, sizes)
    return y.reshape(*lead, sizes.out_features)


def _run_autocast(
    x: Tensor,
    factors: Sequence[Tensor],
    bias: Tensor | None,
    sizes: Sizes,
    impl: str,
    dtype: torch.dtype,
) -> Tensor:
    """``x @ W.T + bias`` as ``nn.Linear`` under autocast: every operand cast to the
    compute dtype ``dtype`` by a recorded cast, then the implementation with autocast
    off (see :mod:`torchkron.functional._amp`)."""
    x = _amp.cast(x, dtype)
    bias = None if bias is None else _amp.cast(bias, dtype)
    with torch.autocast(x.device.type, enabled=False):
        if impl == "auto":
            impl = _auto_impl(x, factors, sizes)
        if impl == "materialize":
            # W built in the factors' dtype, then cast (and cached per compute dtype).
            return materialize.run_with(x, factors, bias, _amp.cast_dtype(factors[0], dtype))
        low = [_amp.cast(f, dtype) for f in factors]
        reason = MODULES[impl].unsupported_reason(x, low)
        if reason is not None:
            raise RuntimeError(
                f"kron_linear(impl={impl!r}): {reason}, and torch.autocast computes this "
                f"call in {dtype}; use impl='auto' (or 'bmm') under autocast, or turn "
                "autocast off around this call."
            )
        return MODULES[impl].run(x, low, bias, sizes)


def choose_impl(x: Tensor, factors: Sequence[Tensor]) -> str:
    """The ``impl`` that ``kron_linear(x, factors, impl="auto")`` runs.

    The choice comes from a cost model (FLOPs, bytes moved and operator count of each
    plan, priced with the machine constants of :mod:`torchkron.functional.calibrate`,
    measured by ``torchkron bench --calibrate``) and depends on the sizes, the device,
    the dtype, and on whether autograd will need a backward (grad mode on and ``x`` or a
    factor requiring grad). Candidates: the factored chain (``"bmm"``), ``"materialize"``
    (cached across calls in inference), and ``"triton"`` on CUDA when it is available.
    """
    sizes = check_factors(factors, "choose_impl")
    x2 = x.reshape(-1, x.shape[-1])
    dtype = _amp.autocast_dtype(x.device.type)
    return _auto_impl(x2 if dtype is None else _amp.cast(x2, dtype), factors, sizes)


# Never materialise a W larger than this many times the layer's input + output (W of a
# 65536 x 65536 layer would be 16 GiB), nor above this absolute size.
_MATERIALIZE_MAX_BYTES = 1 << 30


def _auto_impl(x: Tensor, factors: Sequence[Tensor], sizes: Sizes) -> str:
    if len(factors) == 1 or tracing() or transformed():
        # One factor is the weight itself; under tracing the plain chain is the graph
        # (batched GEMMs, nothing opaque or stateful), and torch.func transforms it.
        return "bmm"
    rank, outs, ins = sizes
    train = torch.is_grad_enabled() and (x.requires_grad or any(f.requires_grad for f in factors))
    out_f, in_f = math.prod(outs), math.prod(ins)
    elt = x.element_size()
    may_materialize = out_f * in_f * elt <= _MATERIALIZE_MAX_BYTES
    return _priced_choice(
        tuple(_calibration.constants(x.device.type).items()),
        int(x.shape[0]),
        tuple(outs),
        tuple(ins),
        rank,
        elt,
        train,
        x.device.type == "cuda" and triton.unsupported_reason(x, factors) is None,
        may_materialize and not train and cacheable(factors),
        may_materialize,
    )


@lru_cache(maxsize=4096)
def _priced_choice(
    constants: tuple[tuple[str, float], ...],
    batch: int,
    outs: tuple[int, ...],
    ins: tuple[int, ...],
    rank: int,
    elt: int,
    train: bool,
    triton_ok: bool,
    cached: bool,
    may_materialize: bool,
) -> str:
    """The cheapest plan for these sizes; a pure function of its arguments, so that a
    call pays for a dict lookup instead of pricing every plan again (a third of the
    forward pass of a 784->625 layer at batch 64, in Python)."""
    plan = chain_plan(outs, ins, rank)
    steps = [(s.pre, s.k, s.m, s.post) for s in plan.steps]
    repeats = 1 if plan.joint or rank == 1 else rank
    costs = _cost.plan_costs(
        dict(constants),
        batch,
        steps,
        repeats,
        outs,
        ins,
        rank,
        elt,
        train,
        triton_ok,
        kron_flops(outs, ins, rank),
    )
    options = {"bmm": costs.chain, "triton": costs.triton}
    if may_materialize:
        options["materialize"] = costs.cached if cached else costs.materialize
    return min(options, key=lambda k: (options[k], k != "bmm"))
