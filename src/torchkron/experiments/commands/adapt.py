"""``torchkron adapt``: the arguments of :mod:`torchkron.experiments.adapters`."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchkron.experiments.options import (
    add_jobs_argument,
    non_negative_int,
    positive_float,
    positive_int,
)

__all__ = ["DEFAULT_OUT", "add_arguments", "run"]

DEFAULT_OUT = Path("runs/adapters")
#: Adam learning rates searched per arm (each arm picks its own on the validation images).
DEFAULT_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_LORA_RANKS = (1, 4, 16)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding mnist/ (for the source model) and fashion-mnist/ (the target), "
        "each with the four IDX files; default: each dataset's own cache folder "
        "(~/.cache/torchkron/<dataset>, downloaded there if empty)",
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading a dataset whose folder is empty",
    )
    p.add_argument(
        "--lora-ranks",
        type=positive_int,
        nargs="+",
        default=list(DEFAULT_LORA_RANKS),
        metavar="R",
        help="LoRA ranks, one budget each; LoKr gets the config nearest each LoRA's "
        "trainable-parameter count (default 1 4 16)",
    )
    p.add_argument(
        "--lrs",
        type=positive_float,
        nargs="+",
        default=list(DEFAULT_LRS),
        metavar="LR",
        help="Adam learning rates searched for every arm on the validation images "
        "(default 3e-4 1e-3 3e-3 1e-2)",
    )
    p.add_argument(
        "--extend",
        type=non_negative_int,
        default=2,
        metavar="N",
        help="an arm whose best rate is the largest (smallest) tried tries the next rate of "
        "the 1-3-10 ladder beyond it, up to N times (default %(default)s; 0: the grid only)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=3,
        help="seeds reported at each arm's picked rate (default %(default)s)",
    )
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=positive_int, default=5, help="epochs of every arm (default 5)")
    g.add_argument("--batch-size", type=positive_int, default=64, help="default %(default)s")
    g.add_argument("--test-batch-size", type=positive_int, default=1000, help="default %(default)s")
    g.add_argument(
        "--val-size",
        type=positive_int,
        default=5000,
        help="training images held out (the last ones) to pick the rates (default %(default)s)",
    )
    g.add_argument(
        "--source-epochs",
        type=positive_int,
        default=35,
        help="epochs of the MNIST source model when it has to be trained (default "
        "%(default)s, the reproduction's recipe: the model of results/mnist's original seed 0)",
    )
    g.add_argument(
        "--train-limit",
        type=non_negative_int,
        default=0,
        help="use only the first N training images of each dataset (0: all; for quick checks)",
    )
    g.add_argument(
        "--test-limit",
        type=non_negative_int,
        default=0,
        help="use only the first N test images (0: all)",
    )
    g.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads per run (default 1)"
    )
    add_jobs_argument(p)
    p.add_argument("--no-plots", action="store_true", help="skip accuracy.png")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite results.md, summary.json and accuracy.png from OUT/runs",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress lines (OUT/adapt.log still gets them)"
    )


def run(args: argparse.Namespace) -> int:
    if args.report_only:
        from torchkron.experiments.adapters.report import write_report

        for path in write_report(args.out, plots=not args.no_plots):
            print(f"wrote {path}")
        return 0
    from torchkron.experiments.adapters.runner import StudyOptions, run_study
    from torchkron.experiments.adapters.trainer import AdaptConfig
    from torchkron.experiments.mnist.config import TrainConfig

    data = args.data_dir
    config = AdaptConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        test_batch_size=args.test_batch_size,
        val_size=args.val_size,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        threads=args.threads,
    )
    options = StudyOptions(
        out_dir=args.out,
        command=args.command_line,
        config=config,
        lrs=sorted(set(args.lrs)),
        lora_ranks=sorted(set(args.lora_ranks)),
        seeds=args.seeds,
        # The reproduction's recipe (TrainConfig's defaults), one thread: deterministic.
        source_recipe=TrainConfig(
            epochs=args.source_epochs,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            threads=1,
        ),
        mnist_dir=None if data is None else data / "mnist",
        fashion_dir=None if data is None else data / "fashion-mnist",
        download=not args.no_download,
        workers=args.jobs,
        extend=args.extend,
        quiet=args.quiet,
        plots=not args.no_plots,
    )
    print(f"report: {run_study(options)}")
    return 0
