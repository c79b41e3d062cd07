"""The command line's argument types and the option groups several commands share.

Each training setting is declared once: its default lives in the study's config dataclass
(:class:`~torchkron.experiments.mnist.config.TrainConfig`,
:class:`~torchkron.experiments.lm.config.LMConfig`), its flag, type and help here or in
the one command that uses it, and :func:`config_from` builds the config from the parsed
arguments by field name.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

from torchkron.experiments.mnist.config import TrainConfig

__all__ = [
    "add_data_arguments",
    "add_jobs_argument",
    "add_recipe_arguments",
    "add_run_arguments",
    "config_from",
    "default_of",
    "finite_float",
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "run_options",
]

_T = TypeVar("_T")


def _whole_number(text: str) -> int:
    """``text`` as an int, or the argparse error every integer option shares."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _number(text: str) -> float:
    """``text`` as a float (``inf`` and ``nan`` included), or the shared argparse error."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def finite_float(text: str) -> float:
    """A finite number (``inf`` and ``nan`` are rejected: they would train to NaN)."""
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def default_of(config: type[Any], name: str) -> Any:
    """The default of field ``name`` of the config dataclass ``config``."""
    for f in fields(config):
        if f.name == name and f.default is not MISSING:
            return f.default
    raise KeyError(f"{config.__name__} has no field {name!r} with a default")


def config_from(config: type[_T], args: argparse.Namespace, **given: Any) -> _T:
    """``config`` built from the parsed arguments named like its fields (``given`` wins)."""
    values = {f.name: getattr(args, f.name) for f in fields(config) if hasattr(args, f.name)}  # type: ignore[arg-type]
    return config(**{**values, **given})


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


def add_jobs_argument(p: argparse.ArgumentParser, runs: str = "runs") -> None:
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help=f"{runs} trained side by side in worker processes (default: one per CPU core)",
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
