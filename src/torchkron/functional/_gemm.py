"""The chain's plain GEMMs on the CPU: oneDNN's matmul where it measured faster.

The GEMMs of a Kronecker chain are tall and thin (a contracted size of 24-64 against
tens of thousands of rows). PyTorch's default CPU BLAS runs those far below its peak; on
the AMD EPYC of ``benchmarks/results`` oneDNN's matmul (``torch.ops.mkldnn._linear_
pointwise``, the kernel Inductor uses for CPU linears) ran a ``(32768, 24) @ (24, 192)``
product 2.3x faster. Whether it is faster depends on the CPU and the BLAS build, so it
is used only where ``torchkron bench --calibrate`` measured a gain on this machine
(``onednn_speedup`` in the calibration; the built-in default 1.0 keeps PyTorch's BLAS),
only for float32 GEMMs large enough to amortise oneDNN building a kernel for each new
shape (a few hundred microseconds once per shape), and never where autograd must record
the product: its callers wrap it in functions with their own backward.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from torchkron.functional._calibration import constants
from torchkron.functional._guards import records, tracing, transformed

__all__ = ["available", "enabled", "linear", "onednn_linear", "uses_onednn"]

#: Below this many FLOPs (2 M K N) a GEMM gains little, and the one-off kernel build for
#: a new shape would cost more than the GEMM itself.
MIN_FLOPS = 1 << 24

#: The measured speed-up over the default BLAS above which oneDNN is used.
MIN_SPEEDUP = 1.1


@lru_cache(maxsize=1)
def available() -> bool:
    """Whether this PyTorch build has oneDNN's matmul operator."""
    try:
        built = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
        return built and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):  # a build without the mkldnn namespace
        return False


def enabled() -> bool:
    """Whether the calibration of this machine measured oneDNN faster (see module doc)."""
    return available() and constants("cpu")["onednn_speedup"] > MIN_SPEEDUP


def uses_onednn(a: Tensor, w: Tensor) -> bool:
    """Whether ``linear(a, w)`` (``a @ w.T``) runs on oneDNN, autograd aside."""
    return (
        a.device.type == "cpu"
        and a.dtype == torch.float32
        and w.dtype == torch.float32
        and a.dim() == 2
        and w.dim() == 2
        and 2 * a.shape[0] * a.shape[1] * w.shape[0] >= MIN_FLOPS
        and not tracing()
        and not transformed()  # oneDNN's operator has no batching rule for torch.func
        # Under CPU autocast PyTorch's GEMM runs in the autocast dtype; oneDNN's operator
        # has no autocast rule and would compute (and return) float32 instead.
        and not torch.is_autocast_enabled("cpu")
        and enabled()
    )


def linear(a: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ w.T + bias`` for 2-d ``a`` (M, K) and ``w`` (N, K).

    oneDNN when :func:`uses_onednn` holds and autograd need not record the product;
    PyTorch's own GEMM otherwise (the same numbers up to float32 rounding).
    """
    if not records(a, w, bias) and uses_onednn(a, w):
        return onednn_linear(a, w, bias)
    if bias is not None:
        return torch.addmm(bias, a, w.t())
    return a @ w.t()


def onednn_linear(a: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ w.T + bias`` on oneDNN, unconditionally and without a gradient."""
    out: Tensor = torch.ops.mkldnn._linear_pointwise(
        a.contiguous(), w.contiguous(), bias, "none", [], ""
    )
    return out
