"""``impl="triton"``: fused Triton kernels for two-factor Kronecker linear maps (optional;
needs ``triton``; CUDA, or its CPU interpreter in tests).

For two factors ``A`` of shape ``(R, o1, n1)`` and ``B`` of shape ``(R, o2, n2)`` and an
input row seen as a matrix ``X_b`` of shape ``(n1, n2)``, the map is::

    Y_b = sum_r A_r @ X_b @ B_r.T                       # (o1, o2), flattened row-major

The unfused path (``impl="bmm"``) runs this as two GEMMs with the ``(B, n1, o2)``
intermediate written to and read back from memory, plus separate kernels in backward.
Here each direction is one kernel launch:

- forward: one program per (row, output tile) computes ``X_b @ B_r.T`` tile by tile and
  multiplies it by ``A_r`` at once, so the intermediate stays in registers; the bias is
  added in the same kernel.
- backward: one launch whose programs are split into four groups: the input gradient
  (the same chain with the factors transposed, ``A_r.T @ G_b @ B_r``), the two factor
  gradients (``sum_b G_b @ B_r @ X_b.T`` and ``sum_b G_b.T @ A_r @ X_b``, each program
  summing one chunk of rows) and the bias gradient. Per-chunk partial sums go to one
  float32 (float64 for float64) workspace, reduced by a single ``sum`` afterwards, which
  keeps the result deterministic (no atomics).

This module imports ``triton`` only when a kernel is first needed, so ``import torchkron``
never imports it. With ``TRITON_INTERPRET=1`` in the environment (set before the first
call) the kernels run in Triton's interpreter on CPU tensors, which is how the tests check
them on machines without a GPU.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from torchkron.functional import _amp
from torchkron.functional._guards import (
    Sizes,
    check_bias,
    check_factors,
    check_input,
    transformed,
)

__all__ = [
    "is_available",
    "kernel_unsupported_reason",
    "kron_linear_triton",
    "run",
    "unsupported_reason",
]

_FALLBACK = "use impl='bmm' (or 'auto') instead"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Tile edges: tl.dot needs at least 16 per dimension; 64 keeps a program's tiles (two
# 64 x 64 float32 accumulators plus operands) in registers at 4 warps.
_MIN_BLOCK = 16
_MAX_BLOCK = 64


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
    except Exception:  # ImportError, or a broken install failing at import
        return False
    return True


def is_available() -> bool:
    """Whether :func:`kron_linear_triton` can run here.

    True when ``triton`` imports and either a CUDA device is visible or
    ``TRITON_INTERPRET=1`` is set (Triton's CPU interpreter, for tests).

    Examples:
        >>> isinstance(is_available(), bool)
        True
    """
    if not _triton_importable():
        return False
    return _interpreting() or torch.cuda.is_available()


def unsupported_reason(x: Tensor, factors: Sequence[Tensor]) -> str | None:
    """Why ``kron_linear(impl="triton")`` cannot run here, or None when it can.

    Triton importable with a CUDA device (or the interpreter), two factors, CUDA tensors;
    what the kernels accept beyond that is :func:`kernel_unsupported_reason`.
    """
    if not is_available():
        return "Triton or a CUDA device is not available (pip install triton, run on CUDA)"
    if len(factors) != 2:
        return f"the Triton kernels take exactly 2 factors, got {len(factors)}"
    if factors[0].device.type != "cuda":
        return f"the Triton kernels run on CUDA tensors, got device {factors[0].device}"
    return None


def kernel_unsupported_reason(
    x: Tensor, factors: Sequence[Tensor], bias: Tensor | None = None
) -> str | None:
    """Why :func:`kron_linear_triton` cannot take these arguments, or ``None`` if it can.

    Checks what the kernels support (two factors, one floating dtype, the device), not
    the shapes :func:`torchkron.functional.kron_linear` validates for every impl.
    """
    if len(factors) != 2:
        return (
            f"got {len(factors)} factor(s), but the Triton kernels handle exactly 2; "
            f"{_FALLBACK} for any other number"
        )
    tensors = [x, *factors, *([] if bias is None else [bias])]
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        names = sorted(str(d).removeprefix("torch.") for d in dtypes)
        return (
            f"the input, factors and bias have different dtypes ({', '.join(names)}); cast "
            f"them to one dtype, or {_FALLBACK}"
        )
    dtype = dtypes.pop()
    if dtype not in _DTYPES:
        return (
            f"dtype {str(dtype).removeprefix('torch.')} is not supported (float16, bfloat16, "
            f"float32 and float64 are); {_FALLBACK}"
        )
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return f"the tensors are on different devices ({', '.join(map(str, devices))})"
    device = devices.pop()
    if device.type != "cuda" and not _interpreting():
        return (
            f"the tensors are on {device}, but the Triton kernels need CUDA tensors "
            f"(or TRITON_INTERPRET=1 for the CPU interpreter); {_FALLBACK}"
        )
    if transformed():
        return (
            "the Triton kernels take plain tensors, so torch.func transforms (grad, vmap, "
            f"jacrev, ...) cannot see through them; {_FALLBACK}"
        )
    return None


def _block(n: int) -> int:
    return max(_MIN_BLOCK, min(_MAX_BLOCK, 1 << max(0, n - 1).bit_length()))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------------------
# Kernels, built on first use.


def _kernels() -> Any:
    # The kernels live in their own module, which imports triton at its top: Triton
    # resolves the helpers a kernel calls through the module's globals.
    from torchkron.functional.impls import _triton_kernels

    return _triton_kernels


# --------------------------------------------------------------------------------------
# Launch helpers. A chain problem is Y_b = sum_r A_r @ X_b @ B_r.T, given as views:
# A (R, P, T) and B (R, Q, S) are tensors (possibly transposed views); X and Y are
# (rows, T, S) and (rows, P, Q) with explicit strides, so transposing is free.


class _Mat(NamedTuple):
    """A batch of matrices in memory: base tensor and (batch, row, column) strides."""

    t: Tensor
    sb: int
    s0: int
    s1: int

    def transposed(self) -> _Mat:
        return _Mat(self.t, self.sb, self.s1, self.s0)


def _launch_options(dtype: torch.dtype, largest_block: int) -> dict[str, int]:
    """Warps and pipeline stages per launch, from compiling the kernels for sm_90.

    With 64-wide tiles, 4 warps need 128-255 registers a thread (float32 and float64
    spill at 3 stages); 8 warps bring every dtype to 80-170 without spills. Pipelining
    only pays in loops of several tiles (dimensions above 64): 2 stages for 16-bit
    types, 1 for float32/float64, whose non-tensor-core dot needs the registers.
    """
    warps = 8 if largest_block >= _MAX_BLOCK else 4
    stages = 2 if dtype in (torch.float16, torch.bfloat16) else 1
    return {"num_warps": warps, "num_stages": stages}


def _dot_f32(dtype: torch.dtype) -> bool:
    # Work around the interpreter's wrong bfloat16 dot (see _triton_kernels.mma).
    return dtype == torch.bfloat16 and _interpreting()


def _prec(dtype: torch.dtype) -> str:
    # float32 follows torch's own matmul setting (off by default: full fp32 like cuBLAS).
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _chain_args(
    x: _Mat, a: Tensor, b: Tensor, y: _Mat, rows: int
) -> tuple[list[Any], dict[str, int], int, bool]:
    """Kernel arguments for Y_b = sum_r A_r X_b B_r^T, in the cheaper of two orders.

    Returns (positional tensor/stride/size args, block sizes, program count, whether
    the transposed problem was chosen).
    """
    rank, p, t = a.shape
    _, q, s = b.shape
    # X_b @ B_r.T first costs t*s*q + p*t*q per term; the transposed problem
    # Y_b.T = sum_r B_r @ X_b.T @ A_r.T costs s*t*p + q*s*p.
    swapped = t * s * q + p * t * q > s * t * p + q * s * p
    if swapped:
        a, b, x, y = b, a, x.transposed(), y.transposed()
        p, t, s, q = q, s, t, p
    c = b.transpose(1, 2)  # C_r = B_r.T: (S, Q)
    blocks = {"BP": _block(p), "BT": _block(t), "BS": _block(s), "BQ": _block(q)}
    tiles_q = _cdiv(q, blocks["BQ"])
    tiles_pq = _cdiv(p, blocks["BP"]) * tiles_q
    args = [
        *(x.t, x.sb, x.s0, x.s1),
        *(a, a.stride(0), a.stride(1), a.stride(2)),
        *(c, c.stride(0), c.stride(1), c.stride(2)),
        *(y.t, y.sb, y.s0, y.s1),
    ]
    sizes = [rank, p, t, s, q, tiles_q, tiles_pq]
    return [*args, *sizes], blocks, rows * tiles_pq, swapped


def _launch_forward(x2: Tensor, a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
    rows = x2.shape[0]
    o1, o2, n2 = a.shape[1], b.shape[1], b.shape[2]
    y = torch.empty(rows, o1 * o2, device=x2.device, dtype=x2.dtype)
    if rows == 0:
        return y
    xm = _Mat(x2, x2.stride(0), n2, 1)
    ym = _Mat(y, y.stride(0), o2, 1)
    args, blocks, programs, swapped = _chain_args(xm, a, b, ym, rows)
    # The bias is (o1, o2) row-major; transposed along with Y when the order flips.
    bias_strides = (1, o2) if swapped else (o2, 1)
    sizes = args[16:]
    kern = _kernels().forward_kernel
    kern[(programs,)](
        *args[:16],
        y if bias is None else bias,
        *bias_strides,
        *sizes,
        HAS_BIAS=bias is not None,
        PREC=_prec(x2.dtype),
        DOT_F32=_dot_f32(x2.dtype),
        **blocks,
        **_launch_options(x2.dtype, max(blocks.values())),
    )
    return y


def _splits(rows: int, work_per_split: int, device: torch.device) -> int:
    """How many row chunks the factor gradients are summed over (one program each)."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = max(1, 4 * sms // max(1, work_per_split))
    else:
        target = 2  # interpreter: exercise the chunked sum on tiny inputs
    return max(1, min(rows, target))


def _launch_backward(
    g: Tensor,
    x2: Tensor,
    a: Tensor,
    b: Tensor,
    need: tuple[bool, bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    need_x, need_a, need_b, need_bias = need
    rows = g.shape[0]
    rank, o1, n1 = a.shape
    _, o2, n2 = b.shape
    dtype = g.dtype
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if rows == 0:
        return (
            torch.empty_like(x2) if need_x else None,
            torch.zeros_like(a) if need_a else None,
            torch.zeros_like(b) if need_b else None,
            g.new_zeros(o1 * o2) if need_bias else None,
        )
    gm = _Mat(g, g.stride(0), o2, 1)
    xm = _Mat(x2, x2.stride(0), n2, 1)

    # Input gradient: dX_b = sum_r A_r.T @ G_b @ B_r, a chain with transposed factors.
    dx = torch.empty(rows, n1 * n2, device=g.device, dtype=dtype) if need_x else None
    if dx is not None:
        dxm = _Mat(dx, dx.stride(0), n2, 1)
        d_args, d_blocks, n_dx, _ = _chain_args(gm, a.transpose(1, 2), b.transpose(1, 2), dxm, rows)
    else:
        # No program computes it; placeholders keep the argument list fixed.
        d_args = [g, 0, 0, 0, a, 0, 0, 0, b, 0, 0, 0, g, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
        d_blocks = dict.fromkeys(("BP", "BT", "BS", "BQ"), _MIN_BLOCK)
        n_dx = 0

    # dA_r = sum_b G_b @ B_r @ X_b.T  (P=o1, S=o2, T=n2, Q=n1)
    # dB_r = sum_b G_b.T @ A_r @ X_b  (P=o2, S=o1, T=n1, Q=n2)
    u = (gm, b, xm.transposed(), o1, o2, n2, n1)
    v = (gm.transposed(), a, xm, o2, o1, n1, n2)
    u_blocks = [_block(n) for n in u[3:]]
    v_blocks = [_block(n) for n in v[3:]]
    u_tiles_q = _cdiv(n1, u_blocks[3])
    u_tiles = _cdiv(o1, u_blocks[0]) * u_tiles_q
    v_tiles_q = _cdiv(n2, v_blocks[3])
    v_tiles = _cdiv(o2, v_blocks[0]) * v_tiles_q
    gb_blocks = (_block(o1), _block(o2))
    gb_tiles_q = _cdiv(o2, gb_blocks[1])
    gb_tiles = _cdiv(o1, gb_blocks[0]) * gb_tiles_q
    work = rank * ((u_tiles if need_a else 0) + (v_tiles if need_b else 0))
    work += gb_tiles if need_bias else 0
    splits = _splits(rows, work, g.device)
    chunk = _cdiv(rows, splits)
    splits = _cdiv(rows, chunk)
    u_size, v_size = rank * o1 * n1, rank * o2 * n2
    width = u_size + v_size + o1 * o2
    w = torch.empty(splits, width, device=g.device, dtype=acc_dtype)

    def wargs(spec: tuple[Any, ...]) -> list[Any]:
        lm, m, nm, p, s, t, q = spec
        return [
            *(lm.t, lm.sb, lm.s0, lm.s1),
            *(m, m.stride(0), m.stride(1), m.stride(2)),
            *(nm.t, nm.sb, nm.s0, nm.s1),
            *(p, s, t, q),
        ]

    n_u = splits * rank * u_tiles if need_a else 0
    n_v = splits * rank * v_tiles if need_b else 0
    n_gb = splits * gb_tiles if need_bias else 0
    programs = n_dx + n_u + n_v + n_gb
    if programs:
        kern = _kernels().backward_kernel
        kern[(programs,)](
            *d_args,
            n_dx,
            *wargs(u), u_tiles_q, u_tiles, 0, o1 * n1, n_u,
            *wargs(v), v_tiles_q, v_tiles, u_size, o2 * n2, n_v,
            o1, o2, gb_tiles_q, gb_tiles, u_size + v_size, n_gb,
            w, width, rank, chunk, rows,
            DBP=d_blocks["BP"], DBT=d_blocks["BT"], DBS=d_blocks["BS"], DBQ=d_blocks["BQ"],
            UBP=u_blocks[0], UBS=u_blocks[1], UBT=u_blocks[2], UBQ=u_blocks[3],
            VBP=v_blocks[0], VBS=v_blocks[1], VBT=v_blocks[2], VBQ=v_blocks[3],
            GBP=gb_blocks[0], GBQ=gb_blocks[1],
            PREC=_prec(dtype),
            DOT_F32=_dot_f32(dtype),
            **_launch_options(dtype, max(*d_blocks.values(), *u_blocks, *v_blocks)),
        )  # fmt: skip
    if not (need_a or need_b or need_bias):
        return dx, None, None, None
    total = w.sum(0) if splits > 1 else w[0]
    da = total[:u_size].view(rank, o1, n1).to(dtype) if need_a else None
    db = total[u_size : u_size + v_size].view(rank, o2, n2).to(dtype) if need_b else None
    dbias = total[u_size + v_size :].to(dtype) if need_bias else None
    return dx, da, db, dbias


class _KronLinear2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x2: Tensor, a: Tensor, b: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x2, a, b)
        ctx.has_bias = bias is not None
        return _launch_forward(x2, a, b, bias)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x2, a, b = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, da, db, dbias = _launch_backward(
            g.contiguous(), x2, a, b, (need[0], need[1], need[2], ctx.has_bias and need[3])
        )
        return dx, da, db, dbias


def kron_linear_triton(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None = None) -> Tensor:
    """``x @ (sum_r A[r] (x) B[r]).T + bias`` for two factors, in fused Triton kernels.

    Same function, shapes and gradients as :func:`torchkron.functional.kron_linear`
    restricted to two factors; one kernel launch forward and one backward (plus a sum of
    the factor gradients' per-chunk partials).

    Args:
        x: input of shape ``(*, n1 * n2)``.
        factors: ``[A, B]``, ``A`` of shape ``(R, o1, n1)`` and ``B`` of shape
            ``(R, o2, n2)``, same dtype and device as ``x``.
        bias: optional ``(o1 * o2,)`` tensor.

    Returns:
        Tensor of shape ``(*, o1 * o2)``.

    Shape:
        - Input: ``(*, n1 * n2)``, any leading dims, including none and empty ones.
        - Output: ``(*, o1 * o2)``.

    Raises:
        ValueError: for inputs the kernels do not handle (not two factors, mixed or
            non-floating dtypes, CPU tensors outside the interpreter), naming the
            fallback ``impl="bmm"``; or for shapes that do not fit together.
        RuntimeError: when Triton is not installed.

    Examples:
        >>> import torch
        >>> from torchkron.functional.impls.triton import is_available, kron_linear_triton
        >>> if is_available() and torch.cuda.is_available():  # doctest: +SKIP
        ...     a = torch.randn(1, 64, 64, device="cuda")
        ...     b = torch.randn(1, 64, 64, device="cuda")
        ...     y = kron_linear_triton(torch.randn(8, 4096, device="cuda"), [a, b])
    """
    sizes = check_factors(factors, "kron_linear_triton")
    dtype = _amp.autocast_dtype(x.device.type)
    if dtype is not None:  # as nn.Linear under autocast (see torchkron.functional._amp)
        x, factors = _amp.cast(x, dtype), [_amp.cast(f, dtype) for f in factors]
        bias = None if bias is None else _amp.cast(bias, dtype)
    reason = kernel_unsupported_reason(x, factors, bias)
    if reason is not None:
        raise ValueError(f"kron_linear_triton: {reason}.")
    check_input(x, sizes, "kron_linear_triton", hint=False)
    check_bias(bias, sizes, "kron_linear_triton")
    if not _triton_importable():
        raise RuntimeError(
            "kron_linear_triton: triton is not installed; pip install triton (or pip install "
            "-e '.[triton]' in a clone of the torchkron repository) "
            f"or {_FALLBACK}."
        )
    lead = x.shape[:-1]
    y = _apply(x.reshape(-1, sizes.in_features), factors, bias)
    return y.reshape(*lead, sizes.out_features)


def run(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, sizes: Sizes) -> Tensor:
    """``x @ W.T + bias`` for a 2-D ``x`` of shape ``(B, prod in_i)``, validated.

    Raises:
        RuntimeError: Triton, a CUDA device or CUDA tensors are missing, or not 2 factors.
        ValueError: arguments the kernels do not take (see :func:`kernel_unsupported_reason`).
    """
    reason = unsupported_reason(x, factors)
    if reason is not None:
        raise RuntimeError(f"kron_linear(impl='triton'): {reason}.")
    reason = kernel_unsupported_reason(x, factors, bias)
    if reason is not None:
        raise ValueError(f"kron_linear_triton: {reason}.")
    return _apply(x, factors, bias)


def _apply(x2: Tensor, factors: Sequence[Tensor], bias: Tensor | None) -> Tensor:
    """The kernels on a 2-D input, with autograd."""
    a, b = (f.contiguous() for f in factors)
    y: Tensor = _KronLinear2.apply(  # type: ignore[no-untyped-call]
        x2.contiguous(), a, b, None if bias is None else bias.contiguous()
    )
    return y
