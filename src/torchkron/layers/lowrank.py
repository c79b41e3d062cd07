"""``LowRankLinear``: a baseline ``nn.Linear`` whose weight is ``U V^T``.

A drop-in ``nn.Linear`` replacement with the same constructor conventions as
:class:`torchkron.KronLinear`, initialised so that the dense weight it represents has
``nn.Linear``'s variance ``1 / (3 in_features)`` (the output variance of a layer depends
on its weight only through that variance for independent zero-mean entries).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from torchkron.layers._common import (
    FactorFans,
    add_bias,
    check_args,
    check_dtype,
    check_init,
    check_input,
    extra_repr,
    init_bias,
    per_factor_init_,
)

__all__ = ["LowRankLinear"]


class LowRankLinear(nn.Module):
    r"""Linear layer ``y = x W^T + b`` with ``W = U V^T``, ``U (out, r)``, ``V (in, r)``.

    Computed as two matmuls ``(x V) U^T``; stores ``rank * (in + out)`` weights instead of
    ``in * out``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        rank: inner dimension ``r`` of the factorisation.
        bias: if ``False``, the layer learns no additive bias.
        init: ``"variance"`` (default): :meth:`factor_std`, so ``W`` has ``nn.Linear``'s
            variance. ``"per-factor"``: each factor drawn as a dense matrix of its own
            size (:meth:`factor_fans`; Qiu et al. 2024), the init that
            :func:`torchkron.param_groups`' learning rates assume (docs/training.md).
        device: device of the parameters.
        dtype: dtype of the parameters.

    Attributes:
        u: ``(out_features, rank)``.
        v: ``(in_features, rank)``.
        weight: the dense ``(out_features, in_features)`` weight ``U V^T``, built on access.
        bias: ``(out_features,)`` or ``None``.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Examples:
        >>> layer = LowRankLinear(128, 512, rank=16)
        >>> layer(torch.randn(4, 7, 128)).shape
        torch.Size([4, 7, 512])
        >>> layer.num_weights()
        10240
    """

    in_features: int
    out_features: int
    rank: int
    init: str

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        *,
        init: str = "variance",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.init = check_init("LowRankLinear", init)
        check_dtype("LowRankLinear", dtype)
        check_args("LowRankLinear", in_features, out_features, "rank", rank)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.u = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.v = nn.Parameter(torch.empty(in_features, rank, **kw))
        self.bias: nn.Parameter | None
        add_bias(self, bias, out_features, kw)
        self.reset_parameters()

    @property
    def weight(self) -> Tensor:
        return self.u @ self.v.T

    def num_weights(self) -> int:
        """Number of stored weights (bias excluded)."""
        return self.rank * (self.in_features + self.out_features)

    def factor_std(self) -> float:
        """Std of ``U`` and ``V`` entries so that ``W = U V^T`` has ``nn.Linear``'s variance.

        An entry of ``U V^T`` sums ``rank`` products of two independent zero-mean
        entries: variance ``rank * std**4 = 1 / (3 in)``.
        """
        return float((1.0 / (3.0 * self.in_features * self.rank)) ** 0.25)

    def factor_fans(self) -> list[FactorFans]:
        """Each factor as a dense matrix: ``V`` maps ``in`` to ``rank``, ``U`` ``rank`` to ``out``.

        Examples:
            >>> fans = LowRankLinear(128, 512, rank=16).factor_fans()
            >>> [(f.name, f.fan_in, f.fan_out) for f in fans]
            [('v', 128, 16), ('u', 16, 512)]
        """
        return [
            FactorFans("v", self.in_features, self.rank),
            FactorFans("u", self.rank, self.out_features),
        ]

    def reset_parameters(self) -> None:
        """Draw the factors by ``init`` (:meth:`factor_std` or :meth:`factor_fans`), bias as
        ``nn.Linear``."""
        if self.init == "per-factor":
            per_factor_init_(self)
            return
        bound = math.sqrt(3.0) * self.factor_std()
        with torch.no_grad():
            self.u.uniform_(-bound, bound)
            self.v.uniform_(-bound, bound)
            init_bias(self.bias, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        check_input("LowRankLinear", x, self.in_features)
        y = torch.nn.functional.linear(torch.matmul(x, self.v), self.u)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return extra_repr(self, "rank", self.rank)
