"""The MNIST commands' option groups: data, recipe, run, and ``--dataset`` /
``--permute-pixels`` (which images ``reproduce`` and ``sweep`` train on).

The dataset is named, never guessed from a folder, and it sets the default ``--mean`` and
``--std`` (each dataset's training-set pixel statistics); given explicitly, they win. Both
choices are recorded in every run's config.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.options import (
    add_jobs_argument,
    config_from,
    default_of,
    finite_float,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
)

__all__ = [
    "DATASET_STATS",
    "DATASET_TITLES",
    "add_data_arguments",
    "add_dataset_arguments",
    "add_jobs_argument",
    "add_recipe_arguments",
    "add_run_arguments",
    "recipe_for",
    "run_options",
]

# The datasets' names and statistics, kept here without importing torch at CLI start-up;
# tests/experiments/data check them against data.mnist.DATASETS.
DATASET_STATS: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}

DATASET_TITLES: dict[str, str] = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--dataset`` and ``--permute-pixels``; call after ``add_recipe_arguments``.

    ``--mean``/``--std`` then default to the chosen dataset's statistics.
    """
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=tuple(DATASET_STATS),
        default="mnist",
        help="which MNIST-format dataset --data-dir holds (default %(default)s); sets the "
        "default --mean/--std and what an empty folder downloads",
    )
    g.add_argument(
        "--permute-pixels",
        type=non_negative_int,
        default=None,
        metavar="SEED",
        help="train and test on images whose 784 pixels are shuffled by one fixed random "
        "permutation drawn from SEED (torch.randperm with a torch.Generator seeded SEED); "
        "default: the images as they are",
    )
    stats = ", ".join(f"{m} for {name}" for name, (m, _) in DATASET_STATS.items())
    spreads = ", ".join(f"{s} for {name}" for name, (_, s) in DATASET_STATS.items())
    for action in p._actions:
        if action.dest == "mean":
            action.default, action.help = None, f"pixel mean (default: the dataset's, {stats})"
        elif action.dest == "std":
            action.default, action.help = None, f"pixel std (default: the dataset's, {spreads})"


def recipe_for(args: argparse.Namespace, **given: Any) -> TrainConfig:
    """The :class:`TrainConfig` of the parsed arguments, ``--mean``/``--std`` defaulting to
    the dataset's."""
    mean, std = DATASET_STATS[args.dataset]
    return config_from(
        TrainConfig,
        args,
        mean=mean if args.mean is None else args.mean,
        std=std if args.std is None else args.std,
        **given,
    )


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the four MNIST-format IDX files (plain or .gz); default: "
        "$TORCHKRON_DATA, else ~/.cache/torchkron/mnist (downloaded there if empty)",
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading MNIST when the data folder is empty",
    )


def add_recipe_arguments(
    p: argparse.ArgumentParser,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    epochs_help: str = "epochs (default %(default)s)",
    lr_help: str = "Adadelta learning rate (default %(default)s)",
) -> None:
    """Every field of :class:`TrainConfig` as an option, with the dataclass's defaults.

    ``epochs``/``lr`` and their help texts let a command (``compress``'s fine-tuning) use
    other defaults for the same options.
    """

    def default(name: str) -> Any:
        return default_of(TrainConfig, name)

    g = p.add_argument_group("recipe (PyTorch MNIST example defaults)")
    g.add_argument(
        "--epochs",
        type=positive_int,
        default=default("epochs") if epochs is None else epochs,
        help=epochs_help,
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=default("batch_size"),
        help="training batch (default %(default)s)",
    )
    g.add_argument(
        "--test-batch-size",
        type=positive_int,
        default=default("test_batch_size"),
        help="evaluation batch (default %(default)s)",
    )
    g.add_argument(
        "--lr", type=positive_float, default=default("lr") if lr is None else lr, help=lr_help
    )
    g.add_argument(
        "--rho",
        type=finite_float,
        default=default("rho"),
        help="Adadelta rho (default %(default)s)",
    )
    g.add_argument(
        "--eps",
        type=positive_float,
        default=default("eps"),
        help="Adadelta eps (default %(default)s)",
    )
    g.add_argument(
        "--gamma",
        type=fraction,
        default=default("gamma"),
        help="StepLR decay per epoch (default %(default)s)",
    )
    g.add_argument(
        "--mean",
        type=finite_float,
        default=default("mean"),
        help="pixel mean for normalisation (default %(default)s)",
    )
    g.add_argument(
        "--std",
        type=positive_float,
        default=default("std"),
        help="pixel std for normalisation (default %(default)s)",
    )
    g.add_argument(
        "--train-limit",
        type=non_negative_int,
        default=default("train_limit"),
        help="use only the first N training images (0: all; for quick checks)",
    )
    g.add_argument(
        "--test-limit",
        type=non_negative_int,
        default=default("test_limit"),
        help="use only the first N test images (0: all)",
    )
    g.add_argument(
        "--threads",
        type=non_negative_int,
        default=default("threads"),
        help="torch threads per run (default %(default)s; 0: torch's default)",
    )


def add_run_arguments(p: argparse.ArgumentParser, out: str, out_help: str = "") -> None:
    add_data_arguments(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path(out),
        help=out_help or "output folder (default %(default)s)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep finished runs and continue interrupted ones from their last epoch",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress lines (the log file still gets them)"
    )


def run_options(args: argparse.Namespace) -> Any:
    """The RunOptions of a training command, from the arguments of add_run_arguments."""
    from torchkron.experiments.mnist.runner import RunOptions

    return RunOptions(
        data_dir=args.data_dir,
        out_dir=args.out,
        command=args.command_line,
        resume=args.resume,
        workers=getattr(args, "jobs", 1),
        quiet=args.quiet,
        plots=not getattr(args, "no_plots", False),
        download=not args.no_download,
    )
