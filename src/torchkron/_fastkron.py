"""Optional dispatch to ``pyfastkron`` (FastKron's Python package, extra ``fastkron``).

Imported lazily by :func:`torchkron.functional.kron_linear`; ``torchkron`` never needs it.
FastKron multiplies ``x @ (F_1 (x) ... (x) F_k)`` for one Kronecker term with its own
x86 and CUDA kernels, for float32 and float64; its autograd backward is pyfastkron's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

__all__ = ["available", "kron_linear", "unsupported_reason"]

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
        return "pyfastkron is not installed (pip install 'torchkron[fastkron]')"
    if x.dtype not in _DTYPES or any(f.dtype != x.dtype for f in factors):
        return f"FastKron supports float32 and float64 only, got {x.dtype}"
    if not mod.fastkrontorch.isSupported(x, [f[0] for f in factors]):
        return f"FastKron has no kernels for device {x.device} on this machine"
    if torch.compiler.is_compiling():
        return "FastKron's kernels cannot be traced by torch.compile or torch.export"
    return None


def kron_linear(x: Tensor, factors: Sequence[Tensor], rank: int) -> Tensor:
    """``x @ W.T`` for a 2-D, non-empty ``x`` with FastKron; one call per Kronecker term.

    Raises:
        RuntimeError: FastKron is not installed or cannot run this product.
    """
    reason = unsupported_reason(x, factors)
    if reason is not None:
        raise RuntimeError(f"kron_linear(impl='fastkron'): {reason}.")
    mod = _module()
    # gemkm computes x @ (A_1 (x) ... (x) A_k) with A_i = F_i.T of shape (in_i, out_i).
    y: Tensor = mod.gemkm(x, [f[0].t() for f in factors])
    for r in range(1, rank):
        y = y + mod.gemkm(x, [f[r].t() for f in factors])
    return y
