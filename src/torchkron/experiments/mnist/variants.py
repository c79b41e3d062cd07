"""The MLP variants of the founding experiment (784 -> 625 -> 10 on MNIST).

A variant is a name and a recipe for the two layers; the registry below is the seed's
table plus the equal-weight dense baselines. Sweeps build more variants from
:class:`MLPSpec` directly.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from torchkron.experiments.common.errors import UserError
from torchkron.functional import dense_flops, executed_flops
from torchkron.layers import KronLinear, LowRankLinear

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
    """One fully connected layer: dense, Kronecker with the given factor shapes, or
    low-rank ``W = U V^T`` (``lowrank`` = its rank, with ``shapes=None``)."""

    in_features: int
    out_features: int
    shapes: tuple[tuple[int, int], ...] | None = None  # None: dense nn.Linear
    rank: int = 1
    tied: bool = False
    lowrank: int = 0  # > 0: a LowRankLinear of this rank (a baseline, not Kronecker)

    def build(self) -> nn.Module:
        if self.lowrank:
            return LowRankLinear(self.in_features, self.out_features, self.lowrank)
        if self.shapes is None:
            return nn.Linear(self.in_features, self.out_features)
        return KronLinear(
            self.in_features,
            self.out_features,
            shapes=list(self.shapes),
            rank=self.rank,
            tied=self.tied,
        )

    def flops(self) -> int:
        """Forward FLOPs per sample (bias excluded)."""
        if self.lowrank:
            return 2 * self.lowrank * (self.in_features + self.out_features)
        if self.shapes is None:
            return dense_flops(self.in_features, self.out_features)
        outs, ins = zip(*self.shapes, strict=True)
        return executed_flops(outs, ins, self.rank)

    def weights(self) -> int:
        """Weight count, biases excluded (a tied factor counted once)."""
        if self.lowrank:
            return self.lowrank * (self.in_features + self.out_features)
        if self.shapes is None:
            return self.in_features * self.out_features
        sizes = [o * n for o, n in self.shapes]
        return self.rank * (sizes[0] if self.tied else sum(sizes))

    def describe(self) -> str:
        if self.lowrank:
            r = self.lowrank
            return f"low-rank U V^T ({self.out_features}x{r}, {self.in_features}x{r})"
        if self.shapes is None:
            return f"dense {self.in_features}x{self.out_features}"
        names = ["U", "V", "S", "T"]
        if self.tied:
            letters = " (x) ".join(["U"] * len(self.shapes))
        else:
            letters = " (x) ".join(names[i] if i < 4 else f"F{i}" for i in range(len(self.shapes)))
        sizes = ", ".join(f"{o}x{n}" for o, n in self.shapes)
        rank = f", rank {self.rank}" if self.rank > 1 else ""
        return f"{letters} ({sizes}{rank})"


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
        kron_layers = sum(layer.shapes is not None for layer in (self.hidden, self.output))
        flops = self.hidden.flops() + self.output.flops()
        return 0.3 + 3.0e-6 * flops + 0.1 * kron_layers

    def to_dict(self) -> dict[str, Any]:
        """As stored in run files (JSON types: tuples become lists)."""
        converted: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        for layer in ("hidden", "output"):
            # Only low-rank layers store the key, so earlier run files keep matching.
            if not converted[layer].get("lowrank"):
                converted[layer].pop("lowrank", None)
        return converted


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
    hidden = LayerSpec(INPUT_FEATURES, HIDDEN_FEATURES, _IN_KRON, tied=tied)
    output = LayerSpec(HIDDEN_FEATURES, NUM_CLASSES, _OUT_KRON) if out_kron else _DENSE_OUT
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
