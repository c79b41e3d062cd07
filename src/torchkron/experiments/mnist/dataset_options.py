"""``--dataset`` and ``--permute-pixels``: which images ``reproduce`` and ``sweep`` train on.

The dataset is named, never guessed from a folder, and it sets the default ``--mean`` and
``--std`` (each dataset's training-set pixel statistics); given explicitly, they win. Both
choices are recorded in every run's config.
"""

from __future__ import annotations

import argparse
from typing import Any

from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.options import config_from, non_negative_int

__all__ = ["DATASET_STATS", "DATASET_TITLES", "add_dataset_arguments", "recipe_for"]

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
