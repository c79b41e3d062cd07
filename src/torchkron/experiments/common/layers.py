"""One value type for the four linear-layer kinds the studies compare.

A :class:`LinearSpec` says how a linear layer is structured (dense, Kronecker, low-rank
or Monarch) without its sizes; :meth:`LinearSpec.build` makes the layer for given sizes
from the library's public classes, and :meth:`~LinearSpec.weights` /
:meth:`~LinearSpec.flops` count what that layer stores and computes. The MNIST study
places it between fixed sizes with explicit factor shapes (``shapes``); the GPT study
lets the sizes choose balanced shapes from the factor count (``factors``). Each study
keeps its own result-file form of the spec (``to_dict``/``from_dict`` in its module).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from torchkron.experiments.common.errors import UserError
from torchkron.factorization import factor_shapes
from torchkron.functional import dense_flops, executed_flops
from torchkron.layers import KronLinear, LowRankLinear, MonarchLinear

__all__ = ["DENSE", "KINDS", "LinearSpec"]

KINDS = ("dense", "kron", "lowrank", "monarch")


@dataclass(frozen=True)
class LinearSpec:
    """How to build one linear layer, independent of its sizes.

    Attributes:
        kind: ``"dense"``, ``"kron"``, ``"lowrank"`` or ``"monarch"``.
        factors: Kronecker factors ``k`` (balanced shapes from
            :func:`torchkron.factor_shapes`); set to ``len(shapes)`` when ``shapes`` is given.
        rank: Kronecker rank ``R`` or low-rank inner dimension ``r``.
        tied: Kronecker with one shared factor (needs equal factor shapes).
        nblocks: Monarch blocks per block-diagonal factor.
        shapes: explicit Kronecker factor shapes ``((out_i, in_i), ...)`` (``kind="kron"``
            only); ``None``: chosen from ``factors`` and the layer's sizes.

    Examples:
        >>> LinearSpec("kron", rank=2).build(64, 128)
        KronLinear(in_features=64, out_features=128, bias=True, factors=16x8 (x) 8x8, rank=2)
        >>> LinearSpec("kron", shapes=((25, 28), (25, 28)), tied=True).weights(784, 625)
        700
    """

    kind: str = "dense"
    factors: int = 2
    rank: int = 1
    tied: bool = False
    nblocks: int = 4
    shapes: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"Unknown layer kind {self.kind!r}; choose one of {', '.join(KINDS)}.")
        for name in ("factors", "rank", "nblocks"):
            if getattr(self, name) < 1:
                raise UserError(f"LinearSpec.{name} must be >= 1, got {getattr(self, name)}.")
        if self.shapes is not None:
            if self.kind != "kron":
                raise UserError(
                    f"LinearSpec.shapes are Kronecker factor shapes, but kind is {self.kind!r}; "
                    "drop shapes or use kind='kron'."
                )
            # Hashable and equal however given (lists from JSON); the count follows them.
            shapes = tuple((int(o), int(n)) for o, n in self.shapes)
            object.__setattr__(self, "shapes", shapes)
            object.__setattr__(self, "factors", len(shapes))

    def kron_shapes(self, in_features: int, out_features: int) -> list[tuple[int, int]]:
        """The Kronecker factor shapes of the layer: ``shapes``, else balanced ones."""
        if self.shapes is not None:
            return list(self.shapes)
        try:
            return factor_shapes(in_features, out_features, self.factors)
        except ValueError as exc:
            raise UserError(
                f"A {in_features} -> {out_features} layer cannot be split into {self.factors} "
                f"Kronecker factors ({exc}); use fewer factors."
            ) from None

    def build(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> nn.Module:
        """The layer: ``nn.Linear``, :class:`torchkron.KronLinear`,
        :class:`torchkron.LowRankLinear` or :class:`torchkron.MonarchLinear`, each with its
        own default init (``nn.Linear``'s variance); uses the global RNG."""
        if self.kind == "dense":
            return nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if self.kind == "kron":
            shapes = self.kron_shapes(in_features, out_features)
            if self.tied and len(set(shapes)) != 1:
                raise UserError(
                    f"Tied Kronecker factors need equal factor shapes, but {in_features} -> "
                    f"{out_features} splits into {shapes}; drop tying for this layer."
                )
            return KronLinear(
                in_features,
                out_features,
                bias=bias,
                shapes=shapes,
                rank=self.rank,
                tied=self.tied,
                device=device,
                dtype=dtype,
            )
        if self.kind == "lowrank":
            return LowRankLinear(
                in_features, out_features, self.rank, bias=bias, device=device, dtype=dtype
            )
        try:
            return MonarchLinear(
                in_features, out_features, self.nblocks, bias=bias, device=device, dtype=dtype
            )
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def weights(self, in_features: int, out_features: int) -> int:
        """Stored weights of the layer :meth:`build` makes (bias excluded, a tied factor
        counted once)."""
        if self.kind == "dense":
            return in_features * out_features
        if self.kind == "kron":
            sizes = [o * n for o, n in self.kron_shapes(in_features, out_features)]
            return self.rank * (sizes[0] if self.tied else sum(sizes))
        if self.kind == "lowrank":
            return self.rank * (in_features + out_features)
        mid = min(in_features, out_features)
        return mid * (in_features + out_features) // self.nblocks

    def flops(self, in_features: int, out_features: int) -> int:
        """Forward FLOPs per input row of the layer (bias excluded)."""
        if self.kind == "dense":
            return dense_flops(in_features, out_features)
        if self.kind == "kron":
            outs, ins = zip(*self.kron_shapes(in_features, out_features), strict=True)
            return executed_flops(outs, ins, self.rank)
        if self.kind == "lowrank":
            return 2 * self.rank * (in_features + out_features)
        return 2 * self.weights(in_features, out_features)

    def stages(self) -> int:
        """Multiplicative stages of the weight (factors), for init rescaling."""
        if self.kind == "kron":
            return self.factors
        return 1 if self.kind == "dense" else 2

    def describe(self) -> str:
        """A size-free one-line description, e.g. ``Kronecker k=2 R=4``."""
        if self.kind == "dense":
            return "dense"
        if self.kind == "kron":
            tied = ", tied" if self.tied else ""
            return f"Kronecker k={self.factors} R={self.rank}{tied}"
        if self.kind == "lowrank":
            return f"low-rank r={self.rank}"
        return f"Monarch b={self.nblocks}"


#: A dense ``nn.Linear``.
DENSE = LinearSpec()
