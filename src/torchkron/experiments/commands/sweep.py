"""``torchkron sweep``: the arguments of :mod:`torchkron.experiments.mnist.sweep`."""

from __future__ import annotations

import argparse

from torchkron.experiments.mnist.options import (
    add_dataset_arguments,
    add_jobs_argument,
    add_recipe_arguments,
    add_run_arguments,
    recipe_for,
    run_options,
)
from torchkron.experiments.mnist.sweep import (
    DEFAULT_FACTORS,
    DEFAULT_LOWRANK_RANKS,
    DEFAULT_WIDTHS,
    OUTPUTS,
    TIES,
    Grid,
    grid_specs,
    list_text,
    run_sweep,
)
from torchkron.experiments.options import positive_int

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid (default: everything)")
    g.add_argument(
        "--factors",
        type=positive_int,
        nargs="*",
        default=list(DEFAULT_FACTORS),
        metavar="K",
        help="input-hidden factor counts (default 2 3 4; none: no Kronecker configs)",
    )
    g.add_argument(
        "--ranks",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="R",
        help="Kronecker ranks for every K (default 1 2 4 8, and 16 too for K=3)",
    )
    g.add_argument(
        "--ties",
        nargs="+",
        choices=TIES,
        default=list(TIES),
        help="untied and/or tied input-hidden factors; tied only where all factors are "
        "equal (K=2) (default both)",
    )
    g.add_argument(
        "--outputs",
        nargs="+",
        choices=OUTPUTS,
        default=list(OUTPUTS),
        help="hidden-output layer: dense and/or kron, 5x25 (x) 2x25 (default both)",
    )
    g.add_argument(
        "--widths",
        type=positive_int,
        nargs="*",
        default=list(DEFAULT_WIDTHS),
        metavar="H",
        help="dense 784-H-10 baseline widths (default 1 2 4 ... 512 625; none: no dense)",
    )
    g.add_argument(
        "--lowrank-ranks",
        type=positive_int,
        nargs="*",
        default=list(DEFAULT_LOWRANK_RANKS),
        metavar="R",
        help="low-rank U V^T input-hidden baselines of these ranks (default none; rank 1 "
        "has 7,659 / 1,584 weights with a dense / Kronecker hidden-output layer)",
    )
    g.add_argument(
        "--only",
        nargs="+",
        metavar="PATTERN",
        help="keep only configs whose id matches one of these shell patterns, e.g. "
        "'kron-k2-r1-*' dense-h64",
    )
    g.add_argument("--list", action="store_true", help="print the selected configs and exit")
    p.add_argument(
        "--seeds", type=positive_int, default=3, help="seeds per config (default %(default)s)"
    )
    add_jobs_argument(p)
    p.add_argument("--no-plots", action="store_true", help="skip frontier.png")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite summary.json, frontier.md and frontier.png from "
        "OUT/runs alone",
    )
    add_run_arguments(p, "runs/sweep")
    add_recipe_arguments(p)
    add_dataset_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.report_only:
        from torchkron.experiments.mnist.frontier import frontier_text, write_frontier
        from torchkron.experiments.mnist.report_files import rewrite_report

        return rewrite_report(args.out, write_frontier, frontier_text, plots=not args.no_plots)
    grid = Grid(
        factors=tuple(args.factors),
        ranks=tuple(args.ranks) if args.ranks else None,
        ties=tuple(args.ties),
        outputs=tuple(args.outputs),
        widths=tuple(args.widths),
        only=tuple(args.only or ()),
        lowrank_ranks=tuple(args.lowrank_ranks),
    )
    specs = grid_specs(grid)
    config = recipe_for(args)
    if args.list:
        print(list_text(specs, args.seeds, config.epochs))
        return 0
    markdown = run_sweep(specs=specs, seeds=args.seeds, config=config, options=run_options(args))
    print(f"frontier: {markdown}")
    return 0
