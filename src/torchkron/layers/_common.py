"""What every layer type shares: bias creation and init, argument and input checks, repr."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "INITS",
    "FactorFans",
    "add_bias",
    "check_args",
    "check_dtype",
    "check_init",
    "check_input",
    "extra_repr",
    "init_bias",
    "per_factor_init_",
]


def add_bias(module: nn.Module, bias: bool, out_features: int, kw: dict[str, Any]) -> None:
    """Give ``module`` an uninitialised ``(out_features,)`` bias, or register ``None``."""
    module.register_parameter(
        "bias", nn.Parameter(torch.empty(out_features, **kw)) if bias else None
    )


def init_bias(bias: nn.Parameter | None, in_features: int) -> None:
    """Draw ``bias`` (if any) as ``nn.Linear`` does: ``U(-1/sqrt(in), 1/sqrt(in))``."""
    if bias is not None:
        b = 1.0 / math.sqrt(in_features)
        bias.uniform_(-b, b)


def check_args(cls: str, in_features: int, out_features: int, name: str, value: int) -> None:
    """Refuse non-positive feature counts and a structure size ``name`` (rank, nblocks) < 1."""
    for feature, size in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{cls}: {feature} must be a positive int, got {size!r}.")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: {name} must be an int >= 1, got {value!r}.")


def check_dtype(cls: str, dtype: torch.dtype | None) -> None:
    """Refuse complex dtypes: KronLinear's hand-written backward passes transpose without
    conjugating (wrong gradients), and the other layers, its baselines, stay real too."""
    if isinstance(dtype, torch.dtype) and dtype.is_complex:
        raise TypeError(
            f"{cls}: complex dtypes are not supported (got {dtype}): torchkron's layers are "
            f"real-valued (KronLinear's hand-written backward passes transpose without "
            f"conjugating, so complex gradients would be wrong). Use a real dtype (float32, "
            f"float64, bfloat16, float16); for a complex map, keep the real and imaginary "
            f"parts in two real layers."
        )


def check_input(cls: str, x: Tensor, in_features: int) -> None:
    if x.is_complex():
        check_dtype(cls, x.dtype)
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"{cls}: expected input of shape (*, {in_features}), got {tuple(x.shape)}; "
            f"the last dimension must be in_features={in_features}."
        )


class _SizedLayer(Protocol):
    """A layer with ``nn.Linear``'s sizes and bias attributes."""

    in_features: int
    out_features: int
    bias: nn.Parameter | None


def extra_repr(layer: _SizedLayer, name: str, value: int) -> str:
    """``nn.Linear``'s repr fields with the structure size ``name=value`` before ``bias``."""
    return (
        f"in_features={layer.in_features}, out_features={layer.out_features}, "
        f"{name}={value}, bias={layer.bias is not None}"
    )


# The per-factor init (``init="per-factor"``) and torchkron.optim's learning-rate
# multipliers both read a structured layer as its factors, each a dense matrix.
INITS = ("variance", "per-factor")


class FactorFans(NamedTuple):
    """One factor of a structured layer, seen as a dense matrix of its own size.

    Attributes:
        name: the factor's parameter name on the layer (``"factor_0"``, ``"u"``, ...).
        fan_in: ``d_in`` of the factor: the number of inputs each of its outputs sums.
        fan_out: ``d_out`` of the factor.
        uses: how many factor positions this tensor fills (``k`` for a tied
            ``KronLinear`` factor, else 1).
        scale: the factor's share of a sum's init scale: ``R ** (-1 / (2k))`` for the
            ``k`` factors of ``KronLinear``'s ``R`` summed products, else 1.
    """

    name: str
    fan_in: int
    fan_out: int
    uses: int = 1
    scale: float = 1.0

    def per_factor_std(self) -> float:
        """``scale * sqrt(1 / fan_in) * min(1, sqrt(fan_out / fan_in))`` (Qiu et al. 2024)."""
        ratio = min(1.0, math.sqrt(self.fan_out / self.fan_in))
        return self.scale * math.sqrt(1.0 / self.fan_in) * ratio


def check_init(cls: str, init: object) -> str:
    """``init`` if it names a known init scheme, else a ``ValueError`` listing them."""
    if init not in INITS:
        raise ValueError(
            f"{cls}: init must be one of {', '.join(map(repr, INITS))}, got {init!r}; "
            f"'variance' (the default) matches nn.Linear's output variance, 'per-factor' "
            f"draws each factor as a dense matrix of its own size."
        )
    return str(init)


class _FactoredLayer(_SizedLayer, Protocol):
    def factor_fans(self) -> list[FactorFans]: ...


def per_factor_init_(layer: _FactoredLayer) -> None:
    """``init="per-factor"``: each factor ``N(0, per_factor_std**2)``, bias as ``nn.Linear``."""
    with torch.no_grad():
        for fan in layer.factor_fans():
            getattr(layer, fan.name).normal_(0.0, fan.per_factor_std())
        init_bias(layer.bias, layer.in_features)
