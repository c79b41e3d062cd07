"""The shapes the suite times, its dtypes and modes, and the goals set on them."""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = [
    "ALL_SHAPES",
    "BF16_GOALS",
    "DEFAULT_SHAPES",
    "DTYPES",
    "GOALS",
    "GPU_SHAPES",
    "GRAPH_MODES",
    "MEMORY_GOAL_BYTES",
    "MODES",
    "NO_DENSE",
    "PRIORITY_SHAPES",
    "QUICK_SHAPES",
    "RANK_SHAPES",
    "SCHEMA",
    "SHAPE_SETS",
    "SUMGRAD_CONTENDERS",
    "BenchShape",
    "modes_of",
    "shape_set",
]

SCHEMA = 1
MODES = ("forward", "train", "train_sumgrad")
# ``train_sumgrad``: ``layer(x).sum().backward()``, whose output gradient is a stride-0
# expanded tensor (issue 8: the chain's backward used to run 2-3x slower with it). Timed
# for these contenders only, against dense in the same run.
SUMGRAD_CONTENDERS = ("dense", "torchkron:bmm", "KronLinear")
# ``--graphs`` (CUDA): the forward and training steps captured once as a CUDA graph and
# replayed, which takes Python and kernel-launch overhead out of the time.
GRAPH_MODES = ("forward_graph", "train_graph")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class BenchShape:
    """One layer and batch size to time."""

    name: str
    factors: tuple[tuple[int, int], ...]  # (out_i, in_i) per factor
    batch: int
    rank: int = 1
    dense: bool = True  # False: W is too large to allocate; skip dense and materialize

    @property
    def in_features(self) -> int:
        return math.prod(n for _, n in self.factors)

    @property
    def out_features(self) -> int:
        return math.prod(o for o, _ in self.factors)

    def describe(self) -> str:
        facs = " (x) ".join(f"{o}x{n}" for o, n in self.factors)
        rank = f", R={self.rank}" if self.rank > 1 else ""
        return f"{self.in_features}->{self.out_features} [{facs}{rank}] batch {self.batch}"


DEFAULT_SHAPES: tuple[BenchShape, ...] = (
    BenchShape("784-625-b64", ((25, 28), (25, 28)), 64),
    BenchShape("784-625-b1000", ((25, 28), (25, 28)), 1000),
    BenchShape("784-625-r4-b64", ((25, 28), (25, 28)), 64, rank=4),
    BenchShape("1024-b256", ((32, 32), (32, 32)), 256),
    BenchShape("4096-b1024", ((64, 64), (64, 64)), 1024),
    BenchShape("4096-3f-b1024", ((16, 16), (16, 16), (16, 16)), 1024),
    BenchShape("4096-4f-b1024", ((8, 8), (8, 8), (8, 8), (8, 8)), 1024),
    BenchShape("4096-r4-b1024", ((64, 64), (64, 64)), 1024, rank=4),
    # W would be 65536 x 65536 (16 GiB in float32): no dense contender can run.
    BenchShape("65536-b64", ((256, 256), (256, 256)), 64, dense=False),
)

# A BERT/GPT MLP up-projection, 768 -> 3072 as 64x32 (x) 48x24, at 1024 rows, ranks 1, 4
# and 16 (issue 11: the time ratio against dense should follow the FLOP ratio).
RANK_SHAPES: tuple[BenchShape, ...] = tuple(
    BenchShape(f"768-3072-r{r}-b1024", ((64, 32), (48, 24)), 1024, rank=r) for r in (1, 4, 16)
)

# Row counts GPUs train with (batch x sequence): added to the default list on CUDA only,
# where a 1024-row step is bound by launches rather than arithmetic.
GPU_SHAPES: tuple[BenchShape, ...] = tuple(
    BenchShape(f"{name}-b{rows}", factors, rows, rank=rank)
    for rows in (8192, 16384)
    for name, factors, rank in (
        ("784-625", ((25, 28), (25, 28)), 1),
        ("1024", ((32, 32), (32, 32)), 1),
        ("4096", ((64, 64), (64, 64)), 1),
        ("4096-r4", ((64, 64), (64, 64)), 4),
        ("768-3072-r4", ((64, 32), (48, 24)), 4),
    )
)

# The rank-1 BERT/GPT MLP shape at GPU row counts (the rank-4 one is in GPU_SHAPES).
_GPU_RANK1_SHAPES: tuple[BenchShape, ...] = tuple(
    BenchShape(f"768-3072-r1-b{rows}", ((64, 32), (48, 24)), rows) for rows in (16384, 8192)
)

QUICK_SHAPES: tuple[BenchShape, ...] = (
    BenchShape("quick-2f", ((4, 6), (5, 3)), 8),
    BenchShape("quick-3f-r2", ((2, 3), (3, 2), (2, 2)), 4, rank=2),
    BenchShape("quick-nodense", ((8, 8), (8, 8)), 4, dense=False),
)

# The goals of the benchmark issue: KronLinear's training step against nn.Linear's.
GOALS: dict[str, float] = {"784-625-b64": 6.0, "1024-b256": 12.0, "4096-b1024": 22.0}
MEMORY_GOAL_BYTES = 1 << 30  # peak of a 65536 -> 65536 training step at batch 64
# Issue 11's GPU goal: the bfloat16 training step at 16,384 rows of 4096 -> 4096.
BF16_GOALS: dict[str, float] = {"4096-b16384": 3.0}
ALL_SHAPES: tuple[BenchShape, ...] = (
    *DEFAULT_SHAPES,
    *RANK_SHAPES,
    *GPU_SHAPES,
    *_GPU_RANK1_SHAPES,
    *QUICK_SHAPES,
)
NO_DENSE = {s.name for s in ALL_SHAPES if not s.dense}
_BY_NAME = {s.name: s for s in ALL_SHAPES}

# A GPU session with a time budget (``--budget``) runs its shapes in this order, so that
# what is cut off is what matters least: issue 11's goal shape first, then large row
# counts, the suite's 1,024-row shapes, and the no-dense shape last.
PRIORITY_SHAPES: tuple[BenchShape, ...] = tuple(
    _BY_NAME[n]
    for n in (
        "4096-b16384",
        "4096-b8192",
        "4096-b1024",
        "4096-r4-b16384",
        "768-3072-r1-b16384",
        "768-3072-r4-b16384",
        "1024-b16384",
        "784-625-b64",
        "784-625-b1000",
        "784-625-r4-b64",
        "1024-b256",
        "4096-r4-b1024",
        "4096-3f-b1024",
        "4096-4f-b1024",
        "768-3072-r1-b8192",
        "1024-b8192",
        "4096-r4-b8192",
        "65536-b64",
    )
)

#: Named shape sets (``--shape-set``): ``cpu`` is the default on the CPU, ``cuda`` on a
#: GPU; ``priority`` is the GPU session's list, most important first.
SHAPE_SETS: dict[str, tuple[BenchShape, ...]] = {
    "cpu": DEFAULT_SHAPES + RANK_SHAPES,
    "cuda": DEFAULT_SHAPES + RANK_SHAPES + GPU_SHAPES,
    "priority": PRIORITY_SHAPES,
}


def shape_set(name: str | None, device_type: str, quick: bool = False) -> tuple[BenchShape, ...]:
    """The shapes of a run: ``--quick``'s, the named set's, else the device's default set."""
    if quick:
        return QUICK_SHAPES
    if name is None:
        return SHAPE_SETS["cuda" if device_type == "cuda" else "cpu"]
    return SHAPE_SETS[name]


def modes_of(name: str, graphs: bool = False) -> tuple[str, ...]:
    """The modes a contender is timed in (with ``graphs``, the CUDA-graph replays too)."""
    modes = MODES if name in SUMGRAD_CONTENDERS else MODES[:2]
    return modes + GRAPH_MODES if graphs else modes
