"""``torchkron reproduce``: the arguments of :mod:`torchkron.experiments.mnist.reproduce`."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchkron.experiments.mnist.options import (
    add_dataset_arguments,
    add_jobs_argument,
    add_recipe_arguments,
    add_run_arguments,
    recipe_for,
    run_options,
)
from torchkron.experiments.options import positive_int

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variants",
        nargs="+",
        metavar="ID",
        help="variant ids (default: the seed's five and their equal-weight dense baselines)",
    )
    p.add_argument(
        "--seeds", type=positive_int, default=3, help="seeds per variant (default %(default)s)"
    )
    add_jobs_argument(p)
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="DIR",
        help="results folder to compare with at the end (default: the committed "
        "results/mnist of this checkout)",
    )
    p.add_argument(
        "--no-compare", action="store_true", help="skip the comparison with the reference"
    )
    add_run_arguments(
        p,
        "runs/mnist",
        "output folder (default %(default)s, untracked; the committed reference "
        "results/mnist is rewritten only when named here explicitly)",
    )
    add_recipe_arguments(p)
    add_dataset_arguments(p)


def run(args: argparse.Namespace) -> int:
    from torchkron.experiments.mnist.compare import default_reference
    from torchkron.experiments.mnist.reproduce import reproduce

    reference = None if args.no_compare else (args.reference or default_reference())
    done = reproduce(
        variants=args.variants,
        seeds=args.seeds,
        config=recipe_for(args),
        options=run_options(args),
        reference=reference,
    )
    print(done.report)
    if done.comparison_text is not None:
        print()
        print(done.comparison_text, end="")
        print(f"comparison: {done.comparison}")
    elif not args.no_compare:
        print("no committed reference found to compare with (pass --reference DIR)")
    if done.plots:
        print(f"plots: {', '.join(str(p) for p in done.plots)}")
    print(f"results: {done.results}")
    return 0
