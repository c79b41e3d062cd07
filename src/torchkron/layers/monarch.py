"""``MonarchLinear``: block-diagonal, permutation, block-diagonal (Dao et al., "Monarch:
Expressive Structured Matrices for Efficient and Accurate Training", ICML 2022).

A baseline drop-in ``nn.Linear`` replacement with the same constructor conventions as
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

__all__ = ["MonarchLinear"]


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
        init: ``"variance"`` (default): :meth:`factor_std`, so ``W`` has ``nn.Linear``'s
            variance. ``"per-factor"``: each factor drawn as a dense matrix of its own
            size (:meth:`factor_fans`; Qiu et al. 2024), the init that
            :func:`torchkron.param_groups`' learning rates assume (docs/training.md).
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
    init: str

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int,
        bias: bool = True,
        *,
        init: str = "variance",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.init = check_init("MonarchLinear", init)
        check_dtype("MonarchLinear", dtype)
        check_args("MonarchLinear", in_features, out_features, "nblocks", nblocks)
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
        add_bias(self, bias, out_features, kw)
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

    def factor_fans(self) -> list[FactorFans]:
        """Each factor as a dense matrix: its blocks map ``in/b -> m/b`` and ``m/b -> out/b``.

        Examples:
            >>> fans = MonarchLinear(128, 512, nblocks=8).factor_fans()
            >>> [(f.name, f.fan_in, f.fan_out) for f in fans]
            [('blkdiag1', 16, 16), ('blkdiag2', 16, 64)]
        """
        b, mid = self.nblocks, self.mid_features
        return [
            FactorFans("blkdiag1", self.in_features // b, mid // b),
            FactorFans("blkdiag2", mid // b, self.out_features // b),
        ]

    def reset_parameters(self) -> None:
        """Draw the factors by ``init`` (:meth:`factor_std` or :meth:`factor_fans`), bias as
        ``nn.Linear``."""
        if self.init == "per-factor":
            per_factor_init_(self)
            return
        s1, s2 = self.factor_std()
        with torch.no_grad():
            self.blkdiag1.uniform_(-math.sqrt(3.0) * s1, math.sqrt(3.0) * s1)
            self.blkdiag2.uniform_(-math.sqrt(3.0) * s2, math.sqrt(3.0) * s2)
            init_bias(self.bias, self.in_features)

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
        check_input("MonarchLinear", x, self.in_features)
        y = self._multiply(x)
        return y if self.bias is None else y + self.bias

    @property
    def weight(self) -> Tensor:
        eye = torch.eye(self.in_features, dtype=self.blkdiag1.dtype, device=self.blkdiag1.device)
        return self._multiply(eye).T

    def extra_repr(self) -> str:
        return extra_repr(self, "nblocks", self.nblocks)
