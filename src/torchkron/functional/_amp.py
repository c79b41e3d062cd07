"""``torch.autocast``: the casts autocast would make for ``nn.Linear``, made once, up front.

Under autocast ``nn.Linear`` computes in the autocast dtype: its input, weight and bias
are cast by recorded (differentiable) casts, the GEMM runs in the low dtype, the output
stays in it, and each gradient flows back through its cast into its tensor's own dtype
(float32 parameters get float32 gradients). :func:`torchkron.functional.kron_linear`
does the same: :func:`cast` brings the input, factors and bias to the compute dtype,
and the chosen implementation then runs *with autocast off* on tensors of one dtype.
Letting autocast cast inside instead would mix dtypes: the hand-written backwards run
outside autocast and met a float32 factor with a bfloat16 gradient, and a float32 bias
added to a bfloat16 product promoted the output back to float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["autocast_dtype", "cast", "cast_dtype"]


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes a GEMM in on ``device_type``, or None when it is off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def cast_dtype(t: Tensor, dtype: torch.dtype) -> torch.dtype:
    """The dtype autocast gives ``t`` for a GEMM computed in ``dtype``: ``dtype`` for
    floating tensors other than float64, the tensor's own otherwise."""
    if t.dtype == torch.float64 or not t.is_floating_point():
        return t.dtype
    return dtype


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` as autocast passes it to a GEMM computed in ``dtype`` (a recorded cast; the
    same tensor when there is nothing to cast)."""
    target = cast_dtype(t, dtype)
    return t if t.dtype == target else t.to(target)
