"""The MLP variants of the founding experiment (784 -> 625 -> 10 on MNIST).

A variant is a name and a recipe for the two layers; the registry below is the seed's
table plus the equal-weight dense baselines. Sweeps build more variants from
:class:`MLPSpec` directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.layers import DENSE, LinearSpec

__all__ = [
    "INPUT_FEATURES",
    "NUM_CLASSES",
    "SEED_VARIANTS",
    "LayerSpec",
    "MLPSpec",
    "build_mlp",
    "dense_baseline",
    "get_variant",
    "reproduction_variants",
]

INPUT_FEATURES = 784
HIDDEN_FEATURES = 625
NUM_CLASSES = 10


@dataclass(frozen=True)
class LayerSpec:
    """One fully connected layer of the MLP: its sizes and its structure.

    The structure is the harness's one :class:`LinearSpec`; the MNIST study uses dense,
    Kronecker with explicit factor shapes, and low-rank ``W = U V^T`` layers.
    """

    in_features: int
    out_features: int
    linear: LinearSpec = DENSE

    @classmethod
    def kron(
        cls,
        in_features: int,
        out_features: int,
        shapes: Sequence[tuple[int, int]],
        *,
        rank: int = 1,
        tied: bool = False,
    ) -> LayerSpec:
        """A Kronecker layer with these factor shapes ``((out_i, in_i), ...)``."""
        linear = LinearSpec("kron", rank=rank, tied=tied, shapes=tuple(shapes))
        return cls(in_features, out_features, linear)

    @classmethod
    def lowrank(cls, in_features: int, out_features: int, rank: int) -> LayerSpec:
        """A low-rank ``U V^T`` layer of this inner dimension (a baseline, not Kronecker)."""
        return cls(in_features, out_features, LinearSpec("lowrank", rank=rank))

    def build(self) -> nn.Module:
        return self.linear.build(self.in_features, self.out_features)

    def flops(self) -> int:
        """Forward FLOPs per sample (bias excluded)."""
        return self.linear.flops(self.in_features, self.out_features)

    def weights(self) -> int:
        """Weight count, biases excluded (a tied factor counted once)."""
        return self.linear.weights(self.in_features, self.out_features)

    def describe(self) -> str:
        linear = self.linear
        if linear.kind == "lowrank":
            r = linear.rank
            return f"low-rank U V^T ({self.out_features}x{r}, {self.in_features}x{r})"
        if linear.kind == "dense":
            return f"dense {self.in_features}x{self.out_features}"
        shapes = linear.kron_shapes(self.in_features, self.out_features)
        names = ["U", "V", "S", "T"]
        if linear.tied:
            letters = " (x) ".join(["U"] * len(shapes))
        else:
            letters = " (x) ".join(names[i] if i < 4 else f"F{i}" for i in range(len(shapes)))
        sizes = ", ".join(f"{o}x{n}" for o, n in shapes)
        rank = f", rank {linear.rank}" if linear.rank > 1 else ""
        return f"{letters} ({sizes}{rank})"

    def to_dict(self) -> dict[str, Any]:
        """As run files store a layer: sizes, Kronecker ``shapes`` (None: not Kronecker),
        Kronecker ``rank`` and ``tied``, and ``lowrank`` (its rank) for low-rank layers only,
        so that files written before low-rank layers existed keep matching."""
        linear = self.linear
        if linear.kind == "monarch":
            raise UserError(
                "MNIST run files store dense, Kronecker and low-rank layers only; a Monarch "
                "layer has no place in them."
            )
        kron = linear.kind == "kron"
        shapes = linear.kron_shapes(self.in_features, self.out_features) if kron else None
        data: dict[str, Any] = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "shapes": None if shapes is None else [list(s) for s in shapes],
            "rank": linear.rank if kron else 1,
            "tied": linear.tied if kron else False,
        }
        if linear.kind == "lowrank":
            data["lowrank"] = linear.rank
        return data

    @classmethod
    def from_dict(cls, data: Any) -> LayerSpec:
        """The layer a run file's ``spec.hidden`` / ``spec.output`` describes."""
        in_f, out_f = int(data["in_features"]), int(data["out_features"])
        if data.get("lowrank"):
            return cls.lowrank(in_f, out_f, int(data["lowrank"]))
        shapes = data.get("shapes")
        if shapes is None:
            return cls(in_f, out_f)
        return cls.kron(
            in_f,
            out_f,
            [(int(o), int(n)) for o, n in shapes],
            rank=int(data.get("rank", 1)),
            tied=bool(data.get("tied", False)),
        )


@dataclass(frozen=True)
class MLPSpec:
    """An ``in -> hidden (ReLU) -> classes`` MLP: the experiment's model family."""

    name: str
    description: str
    hidden: LayerSpec
    output: LayerSpec
    family: str = "custom"  # "seed", "dense-baseline", or a sweep family
    order: int = 1000  # position in tables
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def weights(self) -> int:
        return self.hidden.weights() + self.output.weights()

    def epoch_cost(self) -> float:
        """Rough seconds per MNIST epoch on one 2020s x86 core: a fixed per-step overhead
        plus the matmul work (fitted to the reproduction's measured epochs; used only to
        order runs and to weigh the ETA)."""
        kron_layers = sum(layer.linear.kind == "kron" for layer in (self.hidden, self.output))
        flops = self.hidden.flops() + self.output.flops()
        return 0.3 + 3.0e-6 * flops + 0.1 * kron_layers

    def to_dict(self) -> dict[str, Any]:
        """As stored in run files (JSON types: tuples become lists)."""
        return {
            "name": self.name,
            "description": self.description,
            "hidden": self.hidden.to_dict(),
            "output": self.output.to_dict(),
            "family": self.family,
            "order": self.order,
            "extra": json.loads(json.dumps(self.extra)),
        }

    @classmethod
    def from_dict(cls, data: Any) -> MLPSpec:
        """The spec a run file (or a checkpoint) stores; ``extra`` is not restored."""
        return cls(
            str(data["name"]),
            str(data.get("description", "")),
            LayerSpec.from_dict(data["hidden"]),
            LayerSpec.from_dict(data["output"]),
            family=str(data.get("family", "custom")),
            order=int(data.get("order", 1000)),
        )


class MLP(nn.Module):
    """``log_softmax(output(relu(hidden(x))))`` on flattened images."""

    def __init__(self, hidden: nn.Module, output: nn.Module) -> None:
        super().__init__()
        self.hidden = hidden
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.output(torch.relu(self.hidden(x.flatten(1)))), dim=-1)


def build_mlp(spec: MLPSpec) -> MLP:
    """A freshly initialised model (uses the global RNG: seed it first)."""
    return MLP(spec.hidden.build(), spec.output.build())


_IN_KRON = ((25, 28), (25, 28))
_OUT_KRON = ((5, 25), (2, 25))
_DENSE_OUT = LayerSpec(HIDDEN_FEATURES, NUM_CLASSES)


def _seed_variant(name: str, description: str, tied: bool, out_kron: bool, order: int) -> MLPSpec:
    hidden = LayerSpec.kron(INPUT_FEATURES, HIDDEN_FEATURES, _IN_KRON, tied=tied)
    output = LayerSpec.kron(HIDDEN_FEATURES, NUM_CLASSES, _OUT_KRON) if out_kron else _DENSE_OUT
    return MLPSpec(name, description, hidden, output, family="seed", order=order)


SEED_VARIANTS: tuple[MLPSpec, ...] = (
    MLPSpec(
        "original",
        "dense 784x625 and 625x10",
        LayerSpec(INPUT_FEATURES, HIDDEN_FEATURES),
        _DENSE_OUT,
        family="seed",
        order=0,
    ),
    _seed_variant(
        "one-kron-mat", "input-hidden = U (x) U, U 25x28 (one shared factor)", True, False, 1
    ),
    _seed_variant("two-kron-mat", "input-hidden = U (x) V, U, V 25x28", False, False, 2),
    _seed_variant(
        "one-kron-mat-out-kron",
        "as one-kron-mat, and hidden-output = P (x) Q, P 5x25, Q 2x25",
        True,
        True,
        3,
    ),
    _seed_variant(
        "two-kron-mat-out-kron", "as two-kron-mat, with the same out-kron", False, True, 4
    ),
)


def dense_baseline(hidden: int, *, order: int = 100, matches: str | None = None) -> MLPSpec:
    """The dense ``784 -> hidden -> 10`` MLP, id ``dense-h<hidden>``."""
    if hidden < 1:
        raise UserError(f"A dense baseline needs a hidden width >= 1, got {hidden}.")
    extra = {"matches": matches} if matches else {}
    weights = (INPUT_FEATURES + NUM_CLASSES) * hidden
    what = f"dense 784x{hidden} and {hidden}x10 ({weights:,} weights)"
    if matches:
        what += f", equal-weight baseline for {matches}"
    return MLPSpec(
        f"dense-h{hidden}",
        what,
        LayerSpec(INPUT_FEATURES, hidden),
        LayerSpec(hidden, NUM_CLASSES),
        family="dense-baseline",
        order=order,
        extra=extra,
    )


def matched_width(weights: int) -> int:
    """Hidden width of the dense 784-h-10 MLP closest in weights: round(weights / 794)."""
    return max(1, round(weights / (INPUT_FEATURES + NUM_CLASSES)))


def reproduction_variants() -> list[MLPSpec]:
    """The seed's five variants, then one equal-weight dense baseline per Kronecker one."""
    specs = list(SEED_VARIANTS)
    seen: dict[int, MLPSpec] = {}
    for i, spec in enumerate(SEED_VARIANTS[1:]):
        h = matched_width(spec.weights())
        if h not in seen:
            seen[h] = dense_baseline(h, order=10 + i, matches=spec.name)
    return specs + list(seen.values())


_DENSE_RE = re.compile(r"dense-h(\d+)")


def get_variant(name: str) -> MLPSpec:
    """A variant by id: a seed variant, a reproduction baseline, or any ``dense-h<N>``."""
    for spec in reproduction_variants():
        if spec.name == name:
            return spec
    m = _DENSE_RE.fullmatch(name)
    if m:
        return dense_baseline(int(m.group(1)))
    known = ", ".join(s.name for s in reproduction_variants())
    raise UserError(f"Unknown variant {name!r}; choose one of: {known}, or dense-h<N>.")
