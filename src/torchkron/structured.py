"""Baseline structured linear layers to compare Kronecker layers against.

- :class:`LowRankLinear`: ``W = U V^T`` (two linear maps, nothing in between).
- :class:`MonarchLinear`: block-diagonal, permutation, block-diagonal (Dao et al.,
  "Monarch: Expressive Structured Matrices for Efficient and Accurate Training", ICML 2022).

Both are drop-in ``nn.Linear`` replacements with the same constructor conventions as
:class:`torchkron.KronLinear`, and initialise so that the dense weight they represent
has ``nn.Linear``'s variance ``1 / (3 in_features)`` (the output variance of a layer
depends on its weight only through that variance for independent zero-mean entries).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from torchkron.linear import _add_bias, _init_bias

__all__ = ["LowRankLinear", "MonarchLinear"]


def _check_args(cls: str, in_features: int, out_features: int, name: str, value: int) -> None:
    """Refuse non-positive feature counts and a structure size ``name`` (rank, nblocks) < 1."""
    for feature, size in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{cls}: {feature} must be a positive int, got {size!r}.")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: {name} must be an int >= 1, got {value!r}.")


def _check_input(cls: str, x: Tensor, in_features: int) -> None:
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"{cls}: expected input of shape (*, {in_features}), got {tuple(x.shape)}; "
            f"the last dimension must be in_features={in_features}."
        )


def _extra_repr(layer: LowRankLinear | MonarchLinear, name: str, value: int) -> str:
    """``nn.Linear``'s repr fields with the structure size ``name=value`` before ``bias``."""
    return (
        f"in_features={layer.in_features}, out_features={layer.out_features}, "
        f"{name}={value}, bias={layer.bias is not None}"
    )


class LowRankLinear(nn.Module):
    r"""Linear layer ``y = x W^T + b`` with ``W = U V^T``, ``U (out, r)``, ``V (in, r)``.

    Computed as two matmuls ``(x V) U^T``; stores ``rank * (in + out)`` weights instead of
    ``in * out``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        rank: inner dimension ``r`` of the factorisation.
        bias: if ``False``, the layer learns no additive bias.
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

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_args("LowRankLinear", in_features, out_features, "rank", rank)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.u = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.v = nn.Parameter(torch.empty(in_features, rank, **kw))
        self.bias: nn.Parameter | None
        _add_bias(self, bias, out_features, kw)
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

    def reset_parameters(self) -> None:
        """Draw ``U`` and ``V`` uniformly with :meth:`factor_std`; bias as ``nn.Linear``."""
        bound = math.sqrt(3.0) * self.factor_std()
        with torch.no_grad():
            self.u.uniform_(-bound, bound)
            self.v.uniform_(-bound, bound)
            _init_bias(self.bias, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        _check_input("LowRankLinear", x, self.in_features)
        y = torch.nn.functional.linear(torch.matmul(x, self.v), self.u)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return _extra_repr(self, "rank", self.rank)


class MonarchLinear(nn.Module):
    r"""Monarch linear layer: block-diagonal, permutation, block-diagonal (Dao et al. 2022).

    With ``b = nblocks`` the input is cut into ``b`` blocks of ``in / b`` features, each
    mapped by its own matrix of ``blkdiag1`` to ``m / b`` features (``m = min(in, out)``);
    the ``m`` intermediate features, read as a ``(m / b, b)`` grid, are transposed so that
    each block of the second stage sees one feature of many first-stage blocks; the
    ``b`` blocks of ``blkdiag2`` then map ``m / b`` features to ``out / b`` each. This is
    the rectangular Monarch layer of the authors' ``fly`` code (``blockdiag_butterfly``,
    version 1). It stores ``m (in + out) / b`` weights.

    Args:
        in_features: size of each input sample; divisible by ``nblocks``.
        out_features: size of each output sample; divisible by ``nblocks``.
        nblocks: number of blocks ``b`` of each block-diagonal factor.
        bias: if ``False``, the layer learns no additive bias.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Attributes:
        blkdiag1: ``(b, m / b, in / b)``.
        blkdiag2: ``(b, out / b, m / b)``.
        weight: the dense ``(out_features, in_features)`` weight, built on access.
        bias: ``(out_features,)`` or ``None``.

    Shape:
        - Input: ``(*, in_features)``.
        - Output: ``(*, out_features)``.

    Examples:
        >>> layer = MonarchLinear(128, 512, nblocks=8)
        >>> layer(torch.randn(3, 128)).shape
        torch.Size([3, 512])
        >>> layer.num_weights()
        10240
    """

    in_features: int
    out_features: int
    nblocks: int

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_args("MonarchLinear", in_features, out_features, "nblocks", nblocks)
        mid = min(in_features, out_features)
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if size % nblocks:
                raise ValueError(
                    f"MonarchLinear: {name}={size} is not divisible by nblocks={nblocks}; "
                    "choose nblocks dividing both in_features and out_features."
                )
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        b = nblocks
        self.blkdiag1 = nn.Parameter(torch.empty(b, mid // b, in_features // b, **kw))
        self.blkdiag2 = nn.Parameter(torch.empty(b, out_features // b, mid // b, **kw))
        self.bias: nn.Parameter | None
        _add_bias(self, bias, out_features, kw)
        self.reset_parameters()

    @property
    def mid_features(self) -> int:
        return min(self.in_features, self.out_features)

    def num_weights(self) -> int:
        """Number of stored weights (bias excluded)."""
        return self.blkdiag1.numel() + self.blkdiag2.numel()

    def factor_std(self) -> tuple[float, float]:
        """Stds of the two block-diagonal factors' entries.

        Output ``s * b + l`` sums, over its ``m / b`` intermediate features, one entry of
        each factor; those features come from the ``b`` input blocks evenly, so an entry
        of the product sums ``m / b**2`` such products on average (fewer than one, i.e.
        structural zeros, when ``b**2 > m``). The output variance ``in * mean var(W)``
        equals ``nn.Linear``'s when ``(m / b**2) std1**2 std2**2 = 1 / (3 in)``; both
        stages get the same std.
        """
        inner = self.mid_features / self.nblocks**2
        std = (1.0 / (3.0 * self.in_features * inner)) ** 0.25
        return float(std), float(std)

    def reset_parameters(self) -> None:
        """Draw both factors uniformly with :meth:`factor_std`; bias as ``nn.Linear``."""
        s1, s2 = self.factor_std()
        with torch.no_grad():
            self.blkdiag1.uniform_(-math.sqrt(3.0) * s1, math.sqrt(3.0) * s1)
            self.blkdiag2.uniform_(-math.sqrt(3.0) * s2, math.sqrt(3.0) * s2)
            _init_bias(self.bias, self.in_features)

    def _multiply(self, x: Tensor) -> Tensor:
        b = self.nblocks
        lead = x.shape[:-1]
        h = x.reshape(-1, b, self.in_features // b).transpose(0, 1)  # (b, N, in/b)
        h = torch.bmm(h, self.blkdiag1.transpose(1, 2))  # (b, N, m/b)
        n = h.shape[1]
        # Flatten the intermediate as (b, m/b) and reread it as (m/b, b) transposed:
        # second-stage block j takes intermediate features j, j + b, j + 2b, ...
        h = h.permute(1, 0, 2).reshape(n, self.mid_features // b, b)  # (N, m/b, b)
        h = h.permute(2, 0, 1)  # (b, N, m/b)
        h = torch.bmm(h, self.blkdiag2.transpose(1, 2))  # (b, N, out/b)
        # Output feature s * b + l comes from block l, row s.
        y = h.permute(1, 2, 0).reshape(*lead, self.out_features)
        return y

    def forward(self, x: Tensor) -> Tensor:
        _check_input("MonarchLinear", x, self.in_features)
        y = self._multiply(x)
        return y if self.bias is None else y + self.bias

    @property
    def weight(self) -> Tensor:
        eye = torch.eye(self.in_features, dtype=self.blkdiag1.dtype, device=self.blkdiag1.device)
        return self._multiply(eye).T

    def extra_repr(self) -> str:
        return _extra_repr(self, "nblocks", self.nblocks)
