"""``impl="fastkron"``: the ``pyfastkron`` package (FastKron's Python package, optional
extra ``fastkron``).

Imported by :func:`torchkron.functional.kron_linear`; ``pyfastkron`` itself is imported
only on the first call, so ``import torchkron`` never needs it. FastKron multiplies
``x @ (F_1 (x) ... (x) F_k)`` for one Kronecker term with its own x86 and CUDA kernels,
for float32 and float64; its autograd backward is pyfastkron's own, and first-order only.

Two faults of pyfastkron 1.1.0 are worked around here:

- its backward decides whether the input needs a gradient from ``requires_grad`` of the
  *contiguous copy* it makes of a non-contiguous input (a copy made without autograd, so
  never): such an input got no gradient. The input is made contiguous before the call.
- it keeps one native handle per device for every dtype; the handle holds state between
  calls, so a float32 call after a float64 one could read the other dtype's leftovers
  (NaN). Each (device type, dtype) gets its own handle.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any

import torch
from torch import Tensor

from torchkron.functional._autograd import no_double_backward
from torchkron.functional._chain import chain_linear, one_factor
from torchkron.functional._guards import Sizes, transformed

__all__ = ["available", "run", "unsupported_reason"]

_DTYPES = (torch.float32, torch.float64)


@lru_cache(maxsize=1)
def _module() -> Any:
    """``pyfastkron.fastkrontorch``, or None when it is not installed or does not load."""
    try:
        from pyfastkron import fastkrontorch
    except Exception:  # ImportError, or a native library that fails to load
        return None
    return fastkrontorch


def available() -> bool:
    """Whether ``pyfastkron`` imports."""
    return _module() is not None


def unsupported_reason(x: Tensor, factors: Sequence[Tensor]) -> str | None:
    """Why FastKron cannot run this product, or None when it can."""
    mod = _module()
    if mod is None:
        return (
            "pyfastkron is not installed (pip install pyfastkron, or pip install -e "
            "'.[fastkron]' in a clone of the torchkron repository)"
        )
    if x.dtype not in _DTYPES or any(f.dtype != x.dtype for f in factors):
        return f"FastKron supports float32 and float64 only, got {x.dtype}"
    if not mod.fastkrontorch.isSupported(x, [f[0] for f in factors]):
        return f"FastKron has no kernels for device {x.device} on this machine"
    if torch.compiler.is_compiling():
        return "FastKron's kernels cannot be traced by torch.compile or torch.export"
    if transformed():
        return (
            "FastKron's kernels take plain tensors, so torch.func transforms (grad, vmap, "
            "jacrev, ...) cannot see through them; use impl='bmm' or 'fused' there"
        )
    return None


def run(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, sizes: Sizes) -> Tensor:
    """``x @ W.T + bias`` for a 2-D ``x`` of shape ``(B, prod in_i)``.

    Raises:
        RuntimeError: FastKron is not installed or cannot run this product.
    """
    reason = unsupported_reason(x, factors)
    if reason is not None:
        raise RuntimeError(f"kron_linear(impl='fastkron'): {reason}.")
    if x.shape[0] == 0 or len(factors) == 1:
        # FastKron rejects empty inputs, and its backward fails for a single factor, which
        # is a plain matrix product anyway.
        y = one_factor(x, factors[0]) if len(factors) == 1 else None
        if y is None:
            y = chain_linear(x, factors, None, sizes, fused=False)
    else:
        y = _gemkm_sum(x.contiguous(), factors, sizes.rank)
    if bias is not None:
        y = y + bias
    return no_double_backward(y)


def _gemkm_sum(x: Tensor, factors: Sequence[Tensor], rank: int) -> Tensor:
    """``x @ W.T`` with FastKron, one call per Kronecker term."""
    # gemkm computes x @ (A_1 (x) ... (x) A_k) with A_i = F_i.T of shape (in_i, out_i).
    y = _gemkm(x, [f[0].t() for f in factors])
    for r in range(1, rank):
        y = y + _gemkm(x, [f[r].t() for f in factors])
    return y


def _gemkm(x: Tensor, fs: list[Tensor]) -> Tensor:
    mod = _module()
    engine = _engine(x.device.type, x.dtype)
    if engine is None:  # a pyfastkron without the structure worked around here
        out: Tensor = mod.gemkm(x, fs)
        return out
    if torch.is_grad_enabled() and (x.requires_grad or any(f.requires_grad for f in fs)):
        y: Tensor = _GemkmFn.apply(engine, x, *fs)  # type: ignore[no-untyped-call]
        return y
    z: Tensor = engine.gemkm(False, x, fs)[0]
    return z


@cache
def _engine(device_type: str, dtype: torch.dtype) -> Any:
    """A pyfastkron front end whose native handle serves only this device type and dtype,
    or None where pyfastkron is not laid out as this expects (another version)."""
    try:
        from pyfastkron import fastkrontorch as ft
        from pyfastkron.fastkronhandle import FastKronHandle

        shared = ft.fastkrontorch.handle(torch.empty(0, device=device_type))
        if shared is None:
            return None
        own = FastKronHandle("x86" if device_type == "cpu" else device_type, shared.libFastKron)
    except Exception:
        return None

    class _Engine(ft.FastKronTorch):  # type: ignore[misc]
        def handle(self, x: Tensor) -> Any:
            return own

    return _Engine()


class _GemkmFn(torch.autograd.Function):
    """pyfastkron's ``MKM`` autograd function, on one engine (handle)."""

    @staticmethod
    def forward(ctx: Any, engine: Any, x: Tensor, *fs: Tensor) -> Tensor:
        z, zs = engine.gemkm(True, x, fs)
        ctx.engine = engine
        ctx.num_facs = len(fs)
        ctx.save_for_backward(x, *fs, *zs)
        out: Tensor = z
        return out

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        n = ctx.num_facs
        saved = ctx.saved_tensors
        x, fs, zs = saved[0], saved[1 : n + 1], saved[n + 1 :]
        need = ctx.needs_input_grad
        grads = ctx.engine.mkmBackward(grad_z, x, need[1], fs, need[2:], zs)
        return (None, *grads)
