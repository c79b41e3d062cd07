"""``torchkron train``: the arguments of ``mnist.reproduce.train_one`` (one run)."""

from __future__ import annotations

import argparse

from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.options import add_recipe_arguments, add_run_arguments, run_options
from torchkron.experiments.options import config_from, non_negative_int

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variant", required=True, metavar="ID", help="variant id, e.g. one-kron-mat or dense-h10"
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (default %(default)s)")
    add_run_arguments(p, "runs/mnist")
    add_recipe_arguments(p)


def run(args: argparse.Namespace) -> int:
    from torchkron.experiments.mnist.reproduce import train_one

    record = train_one(
        variant=args.variant,
        seed=args.seed,
        config=config_from(TrainConfig, args),
        options=run_options(args),
    )
    hist = record["history"]
    print(
        f"{record['variant']} seed {record['seed']}: {record['weights']:,} weights, final test "
        f"accuracy {hist['test_accuracy'][-1]:.2f}%, test loss {hist['test_loss'][-1]:.4f}"
    )
    return 0
