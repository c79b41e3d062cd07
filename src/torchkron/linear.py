"""``KronLinear``: a drop-in ``nn.Linear`` whose weight is a sum of Kronecker products."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchkron.factorization import check_shapes, factor_shapes, nearest_kronecker
from torchkron.functional import kron_linear, kron_weight

__all__ = ["KronLinear"]


class KronLinear(nn.Module):
    r"""Linear layer ``y = x W^T + b`` with ``W = sum_r F_1[r] (x) ... (x) F_k[r]``.

    The weight is never built in the forward or backward pass: the input is contracted
    with one factor at a time (:func:`torchkron.functional.kron_linear`). It stores
    ``R * sum_i out_i * in_i`` weights instead of ``out_features * in_features``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: if ``False``, the layer learns no additive bias.
        shapes: factor shapes ``[(out_1, in_1), ..., (out_k, in_k)]`` with
            ``prod out_i == out_features`` and ``prod in_i == in_features``. Default:
            :func:`torchkron.factor_shapes` ``(in_features, out_features, num_factors)``.
        num_factors: number of factors ``k`` when ``shapes`` is not given.
        rank: number of summed Kronecker products ``R``.
        tied: use one factor for every position (``U (x) U``); all shapes must be equal.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Attributes:
        factors: tuple of ``k`` tensors, factor ``i`` of shape ``(R, out_i, in_i)``; with
            ``tied=True`` the same Parameter ``k`` times.
        weight: the dense ``(out_features, in_features)`` weight, built on access.
        bias: ``(out_features,)`` or ``None``.
        approximation_error: relative Frobenius error of :meth:`from_linear`, else ``None``.

    Shape:
        - Input: ``(*, in_features)``, any leading dims.
        - Output: ``(*, out_features)``.

    Examples:
        >>> layer = KronLinear(784, 625)  # (25 x 28) (x) (25 x 28)
        >>> layer(torch.randn(64, 784)).shape
        torch.Size([64, 625])
        >>> KronLinear(784, 625, tied=True).num_weights()  # U (x) U
        700
        >>> KronLinear(625, 10, shapes=[(5, 25), (2, 25)]).num_weights()
        175
    """

    in_features: int
    out_features: int
    shapes: tuple[tuple[int, int], ...]
    rank: int
    tied: bool
    approximation_error: float | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        shapes: Sequence[tuple[int, int]] | None = None,
        num_factors: int = 2,
        rank: int = 1,
        tied: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KronLinear: {name} must be a positive int, got {value!r}.")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(
                f"KronLinear: rank must be an int >= 1 (the number of summed Kronecker "
                f"products), got {rank!r}; use rank=1 for a single product."
            )
        if shapes is None:
            resolved = factor_shapes(in_features, out_features, num_factors)
        else:
            resolved = check_shapes(shapes, in_features, out_features, "KronLinear")
        if tied and len(set(resolved)) != 1:
            raise ValueError(
                f"KronLinear: tied=True needs every factor to have the same shape, got "
                f"shapes {resolved}; use tied=False, or shapes that are all equal (e.g. "
                f"[(m, n)] * k with m**k == {out_features} and n**k == {in_features})."
            )
        self.in_features = in_features
        self.out_features = out_features
        self.shapes = tuple(resolved)
        self.rank = rank
        self.tied = tied
        self.approximation_error = None
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        if tied:
            self.tied_factor = nn.Parameter(torch.empty(rank, *resolved[0], **kw))
        else:
            for i, (o, n) in enumerate(resolved):
                self.register_parameter(f"factor_{i}", nn.Parameter(torch.empty(rank, o, n, **kw)))
        self.bias: nn.Parameter | None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @property
    def num_factors(self) -> int:
        return len(self.shapes)

    @property
    def factors(self) -> tuple[Tensor, ...]:
        if self.tied:
            shared: Tensor = self.tied_factor
            return (shared,) * len(self.shapes)
        return tuple(getattr(self, f"factor_{i}") for i in range(len(self.shapes)))

    @property
    def weight(self) -> Tensor:
        return kron_weight(self.factors)

    def num_weights(self) -> int:
        """Number of stored weights (tied factors counted once, bias excluded)."""
        per_factor = [o * n for o, n in self.shapes]
        return self.rank * (per_factor[0] if self.tied else sum(per_factor))

    def factor_std(self) -> float:
        """Std of each factor's entries so that ``W`` has ``nn.Linear``'s variance.

        ``nn.Linear`` draws ``W ~ U(-1/sqrt(in), 1/sqrt(in))``: variance ``1 / (3 in)``.
        An entry of a ``k``-factor product of independent zero-mean factors has variance
        ``std**(2k)``, and a sum of ``R`` terms ``R * std**(2k)``.
        """
        var_w = 1.0 / (3.0 * self.in_features)
        return float((var_w / self.rank) ** (1.0 / (2 * len(self.shapes))))

    def reset_parameters(self) -> None:
        """Draw factors uniformly with the std of :meth:`factor_std`; bias as ``nn.Linear``."""
        bound = math.sqrt(3.0) * self.factor_std()
        with torch.no_grad():
            for p in dict.fromkeys(self.factors):  # a tied factor once
                p.uniform_(-bound, bound)
            if self.bias is not None:
                b = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-b, b)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            got = tuple(x.shape)
            raise ValueError(
                f"KronLinear: expected input of shape (*, {self.in_features}), got {got}; "
                f"the last dimension must be in_features={self.in_features}."
            )
        return kron_linear(x, self.factors, self.bias)

    def extra_repr(self) -> str:
        shapes = " (x) ".join(f"{o}x{n}" for o, n in self.shapes)
        parts = [
            f"in_features={self.in_features}",
            f"out_features={self.out_features}",
            f"bias={self.bias is not None}",
            f"factors={shapes}",
        ]
        if self.rank != 1:
            parts.append(f"rank={self.rank}")
        if self.tied:
            parts.append("tied=True")
        return ", ".join(parts)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        shapes: Sequence[tuple[int, int]] | None = None,
        num_factors: int = 2,
        rank: int = 1,
    ) -> KronLinear:
        """The ``KronLinear`` nearest to a dense layer in Frobenius norm.

        Factors come from :func:`torchkron.nearest_kronecker`; the bias is copied. The
        relative error ``||W - W_kron||_F / ||W||_F`` is stored in
        ``approximation_error``.

        Examples:
            >>> dense = nn.Linear(784, 625)
            >>> layer = KronLinear.from_linear(dense, rank=4)
            >>> 0.0 < layer.approximation_error < 1.0
            True
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(
                f"KronLinear.from_linear: expected an nn.Linear, got {type(linear).__name__}."
            )
        w = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            shapes=shapes,
            num_factors=num_factors,
            rank=rank,
            device=w.device,
            dtype=w.dtype,
        )
        factors, error = nearest_kronecker(w, layer.shapes, rank)
        with torch.no_grad():
            for param, value in zip(layer.factors, factors, strict=True):
                param.copy_(value)
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.approximation_error = error
        return layer

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (builds the dense weight)."""
        ref = self.factors[0]
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None and linear.bias is not None:
                linear.bias.copy_(self.bias)
        return linear
