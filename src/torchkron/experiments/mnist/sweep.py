"""The sweep (``torchkron sweep``): train a grid of MLPs on MNIST and map the
accuracy-vs-size frontier.

The grid (every config x every seed, each one run of the reproduction's trainer):

- Kronecker input-hidden layers 784 -> 625 with ``k = 2, 3, 4`` balanced factors
  (:func:`torchkron.factor_shapes`), Kronecker rank ``R`` from :data:`DEFAULT_RANKS`,
  tied (only where every factor has the same shape: ``k = 2``, 25x28 twice) and untied,
  each with a dense or a Kronecker (5x25 (x) 2x25) hidden-output layer;
- dense 784 -> h -> 10 MLPs over the widths :data:`DEFAULT_WIDTHS`;
- with ``--lowrank-ranks R ...``, low-rank ``W = U V^T`` input-hidden layers (rank 1:
  1,409 weights, so 7,659 with the dense and 1,584 with the Kronecker hidden-output
  layer, the seed's ~7k and ~1.5k budgets), ids ``lowrank-r1-denseout``.

Config ids are stable and readable: ``kron-k3-r4-untied-denseout``, ``dense-h64``. A
config's ``family`` (one series of the frontier plot) is its id without the rank:
``kron-k3-untied-denseout``, or ``dense-width``. The seed's five variants are grid points
(``two-kron-mat`` is ``kron-k2-r1-untied-denseout``, ``original`` is ``dense-h625``); their
descriptions name them and the frontier labels them. Results go to ``OUT/runs`` as
reproduction run records, then ``OUT/summary.json``, ``frontier.md`` and ``frontier.png``
(:mod:`torchkron.experiments.mnist.frontier`).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.report_files import finish_report
from torchkron.experiments.mnist.runner import RunOptions
from torchkron.experiments.mnist.variants import (
    HIDDEN_FEATURES,
    INPUT_FEATURES,
    NUM_CLASSES,
    SEED_VARIANTS,
    LayerSpec,
    MLPSpec,
    dense_baseline,
)
from torchkron.factorization import factor_shapes

__all__ = [
    "DEFAULT_FACTORS",
    "DEFAULT_RANKS",
    "DEFAULT_WIDTHS",
    "DENSE_FAMILY",
    "OUTPUT_KRON_SHAPES",
    "Grid",
    "config_id",
    "dense_config",
    "family_id",
    "grid_specs",
    "kron_config",
    "run_sweep",
    "seed_variant_of",
]

DEFAULT_FACTORS = (2, 3, 4)
#: Ranks tried for every number of factors: 1, 2, 4, 8 always, and 16 for K=3, the only
#: K whose factored input-hidden layer stayed under the dense layer in executed forward
#: FLOPs at rank 16 when the grid was designed (beyond that it is no longer a cheap
#: layer). Fixed, not recomputed from today's contraction plans, so that a faster plan
#: does not change the experiment and orphan its committed runs.
DEFAULT_RANKS: dict[int, tuple[int, ...]] = {2: (1, 2, 4, 8), 3: (1, 2, 4, 8, 16), 4: (1, 2, 4, 8)}
DEFAULT_WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, HIDDEN_FEATURES)
#: The seed's hidden-output factorisation, 625 -> 10 as P (x) Q.
OUTPUT_KRON_SHAPES = ((5, 25), (2, 25))
DENSE_FAMILY = "dense-width"
#: Low-rank baselines are opt-in (``--lowrank-ranks 1``) so the default grid, and the
#: committed sweep it describes, stay as they are.
DEFAULT_LOWRANK_RANKS: tuple[int, ...] = ()
OUTPUTS = ("dense", "kron")
TIES = ("untied", "tied")
DENSE_HIDDEN_WEIGHTS = INPUT_FEATURES * HIDDEN_FEATURES
LOG_FILE = "sweep.log"


def family_id(factors: int, tied: bool, output: str) -> str:
    """The series a Kronecker config belongs to, e.g. ``kron-k2-tied-kronout``."""
    return f"kron-k{factors}-{'tied' if tied else 'untied'}-{output}out"


def config_id(factors: int, rank: int, tied: bool, output: str) -> str:
    """A Kronecker config's id, e.g. ``kron-k3-r4-untied-denseout``."""
    return f"kron-k{factors}-r{rank}-{'tied' if tied else 'untied'}-{output}out"


def seed_variant_of(hidden: LayerSpec, output: LayerSpec) -> str | None:
    """The seed variant with exactly these two layers, if any."""
    for spec in SEED_VARIANTS:
        if spec.hidden == hidden and spec.output == output:
            return spec.name
    return None


def _output_layer(output: str) -> LayerSpec:
    if output == "kron":
        return LayerSpec.kron(HIDDEN_FEATURES, NUM_CLASSES, OUTPUT_KRON_SHAPES)
    return LayerSpec(HIDDEN_FEATURES, NUM_CLASSES)


def _described(text: str, hidden: LayerSpec, output: LayerSpec) -> str:
    seed = seed_variant_of(hidden, output)
    return f"{text}; the seed's {seed}" if seed else text


def kron_config(factors: int, rank: int, tied: bool, output: str, *, order: int) -> MLPSpec:
    """The MLP with a ``factors``-factor rank-``rank`` Kronecker input-hidden layer."""
    shapes = tuple(factor_shapes(INPUT_FEATURES, HIDDEN_FEATURES, factors))
    if tied and len(set(shapes)) != 1:
        raise UserError(
            f"A tied {factors}-factor input-hidden layer needs equal factor shapes, but "
            f"784 -> 625 splits into {shapes}; only 2 factors (25x28 twice) can be tied."
        )
    hidden = LayerSpec.kron(INPUT_FEATURES, HIDDEN_FEATURES, shapes, rank=rank, tied=tied)
    out = _output_layer(output)
    text = f"input-hidden = {hidden.describe()}, hidden-output = {out.describe()}"
    return MLPSpec(
        config_id(factors, rank, tied, output),
        _described(text, hidden, out),
        hidden,
        out,
        family=family_id(factors, tied, output),
        order=order,
    )


def lowrank_config(rank: int, output: str, *, order: int) -> MLPSpec:
    """The MLP with a rank-``rank`` low-rank input-hidden layer, e.g. ``lowrank-r1-kronout``."""
    hidden = LayerSpec.lowrank(INPUT_FEATURES, HIDDEN_FEATURES, rank)
    out = _output_layer(output)
    return MLPSpec(
        f"lowrank-r{rank}-{output}out",
        f"input-hidden = {hidden.describe()}, hidden-output = {out.describe()}",
        hidden,
        out,
        family=f"lowrank-{output}out",
        order=order,
    )


def dense_config(width: int, *, order: int) -> MLPSpec:
    """The dense 784 -> ``width`` -> 10 MLP, id ``dense-h<width>``."""
    spec = dense_baseline(width)
    return replace(
        spec,
        description=_described(spec.description, spec.hidden, spec.output),
        family=DENSE_FAMILY,
        order=order,
    )


@dataclass(frozen=True)
class Grid:
    """Which configs to train: the axes of the grid, then optional id patterns.

    Attributes:
        factors: numbers of input-hidden factors (empty: no Kronecker configs).
        ranks: Kronecker ranks for every ``k``; ``None``: :data:`DEFAULT_RANKS` per ``k``.
        ties: ``"untied"`` and/or ``"tied"`` (tied only where possible).
        outputs: hidden-output layers, ``"dense"`` and/or ``"kron"``.
        widths: dense baseline widths (empty: no dense configs).
        lowrank_ranks: ranks of low-rank input-hidden baselines (empty: none), each with
            the selected hidden-output layers.
        only: shell patterns on config ids; when given, a config must match one.
    """

    factors: tuple[int, ...] = DEFAULT_FACTORS
    ranks: tuple[int, ...] | None = None
    ties: tuple[str, ...] = TIES
    outputs: tuple[str, ...] = OUTPUTS
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    only: tuple[str, ...] = ()
    lowrank_ranks: tuple[int, ...] = DEFAULT_LOWRANK_RANKS


def _kron_specs(grid: Grid) -> list[MLPSpec]:
    specs: list[MLPSpec] = []
    for k in sorted(set(grid.factors)):
        if k < 2:
            raise UserError(f"--factors must be 2 or more (1 is the dense layer), got {k}.")
        try:
            shapes = factor_shapes(INPUT_FEATURES, HIDDEN_FEATURES, k)
        except ValueError:
            raise UserError(
                f"784 -> 625 cannot be split into {k} factors (625 = 5^4 has 4 prime "
                "factors); use --factors between 2 and 4."
            ) from None
        ranks = grid.ranks if grid.ranks is not None else DEFAULT_RANKS.get(k, (1,))
        tieable = len(set(shapes)) == 1
        for ti, tie in enumerate(TIES):
            if tie not in grid.ties or (tie == "tied" and not tieable):
                continue  # tying needs equal factors; the grid includes it where possible
            for oi, output in enumerate(OUTPUTS):
                if output not in grid.outputs:
                    continue
                for rank in sorted(set(ranks)):
                    # Fixed by the config alone, so tables sort alike whatever was selected.
                    order = 1000 * k + 100 * (2 * ti + oi) + min(rank, 99)
                    specs.append(kron_config(k, rank, tie == "tied", output, order=order))
    return specs


def grid_specs(grid: Grid) -> list[MLPSpec]:
    """The configs of ``grid``, dense widths first, then by factors, tying, output, rank.

    Configs whose input-hidden layer would have as many weights as the dense one are
    dropped (they cannot compress anything).
    """
    specs = [dense_config(h, order=min(h, 999)) for h in sorted(set(grid.widths))]
    specs += [s for s in _kron_specs(grid) if s.hidden.weights() < DENSE_HIDDEN_WEIGHTS]
    specs += [
        lowrank_config(r, output, order=9000 + 10 * oi + min(r, 9))
        for r in sorted(set(grid.lowrank_ranks))
        for oi, output in enumerate(OUTPUTS)
        if output in grid.outputs
    ]
    for pattern in grid.only:
        if not any(fnmatch.fnmatchcase(s.name, pattern) for s in specs):
            raise UserError(
                f"--only {pattern!r} matches no config of the grid; `torchkron sweep --list` "
                "shows the config ids."
            )
    if grid.only:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.name, p) for p in grid.only)]
    if not specs:
        raise UserError("The grid is empty: the options select no config; see --list.")
    return specs


def list_text(specs: Sequence[MLPSpec], seeds: int, epochs: int) -> str:
    """The grid as lines ``id  weights  description`` and a total."""
    width = max(len(s.name) for s in specs)
    lines = [f"{s.name.ljust(width)}  {s.weights():>9,}  {s.description}" for s in specs]
    runs = len(specs) * seeds
    lines.append(f"{len(specs)} configs x {seeds} seed(s) = {runs} runs, {runs * epochs} epochs.")
    return "\n".join(lines)


def run_sweep(
    *, specs: Sequence[MLPSpec], seeds: int, config: TrainConfig, options: RunOptions
) -> Path:
    """Train every config x seed (finished runs are kept), then write the frontier files.

    Returns the path of ``frontier.md``.
    """
    from torchkron.experiments.mnist.frontier import frontier_text, write_frontier
    from torchkron.experiments.mnist.runner import Job, open_session, run_jobs, track

    jobs = [Job(spec, seed) for spec in specs for seed in range(seeds)]
    with open_session(jobs, options, LOG_FILE, dataset=config.dataset) as (progress, mnist):
        done = track(progress, jobs, options.out_dir, config.epochs)
        progress.message(
            f"data: {mnist.source}; {len(specs)} configs x {seeds} seed(s) x {config.epochs} "
            f"epochs = {len(jobs) * config.epochs} epochs, {done} already done; "
            f"{options.workers} worker(s)"
        )
        start = time.perf_counter()
        run_jobs(jobs, config, options, mnist, progress=progress)
        return finish_report(
            progress,
            start,
            "frontier",
            write_frontier,
            frontier_text,
            out_dir=options.out_dir,
            plots=options.plots,
        )
