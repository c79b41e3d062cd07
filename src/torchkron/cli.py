"""The ``torchkron`` command line. Subcommands import their code on demand."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["finite_float", "main"]


def _whole_number(text: str) -> int:
    """``text`` as an int, or the argparse error every integer option shares."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
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


def _positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    # No finiteness check, unlike finite_float: ``lm``'s options have always accepted inf.
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _data_dir_help() -> str:
    return (
        "folder with the four MNIST-format IDX files (plain or .gz); default: "
        "$TORCHKRON_DATA, else ~/.cache/torchkron/mnist (downloaded there if empty)"
    )


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None, help=_data_dir_help())
    p.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading MNIST when the data folder is empty",
    )


def add_recipe_arguments(
    p: argparse.ArgumentParser,
    *,
    epochs: int = 35,
    lr: float = 1.0,
    epochs_help: str = "epochs (default %(default)s)",
    lr_help: str = "Adadelta learning rate (default %(default)s)",
) -> None:
    """Every knob of the training recipe, defaulting to the PyTorch MNIST example.

    ``epochs``/``lr`` and their help texts let a command (``compress``'s fine-tuning) use
    other defaults for the same options.
    """
    g = p.add_argument_group("recipe (PyTorch MNIST example defaults)")
    g.add_argument("--epochs", type=_positive_int, default=epochs, help=epochs_help)
    g.add_argument(
        "--batch-size", type=_positive_int, default=64, help="training batch (default %(default)s)"
    )
    g.add_argument(
        "--test-batch-size",
        type=_positive_int,
        default=1000,
        help="evaluation batch (default %(default)s)",
    )
    g.add_argument("--lr", type=_positive_float, default=lr, help=lr_help)
    g.add_argument(
        "--rho", type=finite_float, default=0.9, help="Adadelta rho (default %(default)s)"
    )
    g.add_argument(
        "--eps", type=_positive_float, default=1e-6, help="Adadelta eps (default %(default)s)"
    )
    g.add_argument(
        "--gamma", type=_fraction, default=0.7, help="StepLR decay per epoch (default %(default)s)"
    )
    g.add_argument(
        "--mean",
        type=finite_float,
        default=0.1307,
        help="pixel mean for normalisation (default %(default)s)",
    )
    g.add_argument(
        "--std",
        type=_positive_float,
        default=0.3081,
        help="pixel std for normalisation (default %(default)s)",
    )
    g.add_argument(
        "--train-limit",
        type=_non_negative_int,
        default=0,
        help="use only the first N training images (0: all; for quick checks)",
    )
    g.add_argument(
        "--test-limit",
        type=_non_negative_int,
        default=0,
        help="use only the first N test images (0: all)",
    )
    g.add_argument(
        "--threads",
        type=_non_negative_int,
        default=1,
        help="torch threads per run (default %(default)s; 0: torch's default)",
    )


def add_jobs_argument(p: argparse.ArgumentParser, runs: str = "runs") -> None:
    p.add_argument(
        "--jobs",
        type=_positive_int,
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


def config_from(args: argparse.Namespace) -> Any:
    from torchkron.experiments.training.config import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        test_batch_size=args.test_batch_size,
        lr=args.lr,
        rho=args.rho,
        eps=args.eps,
        gamma=args.gamma,
        mean=args.mean,
        std=args.std,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        threads=args.threads,
    )


def run_options(args: argparse.Namespace) -> Any:
    """The RunOptions of a training command, from the arguments of add_run_arguments."""
    from torchkron.experiments.training.runner import RunOptions

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


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from torchkron.experiments.commands.reproduce import reproduce
    from torchkron.experiments.reporting.compare import default_reference

    reference = None if args.no_compare else (args.reference or default_reference())
    done = reproduce(
        variants=args.variants,
        seeds=args.seeds,
        config=config_from(args),
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
    print(f"results: {done.results}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from torchkron.experiments.commands.reproduce import train_one

    record = train_one(
        variant=args.variant, seed=args.seed, config=config_from(args), options=run_options(args)
    )
    hist = record["history"]
    print(
        f"{record['variant']} seed {record['seed']}: {record['weights']:,} weights, final test "
        f"accuracy {hist['test_accuracy'][-1]:.2f}%, test loss {hist['test_loss'][-1]:.4f}"
    )
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import json

    from torchkron.experiments.commands.report import report_text, write_report

    paths = write_report(args.dir, plots=not args.no_plots)
    print(report_text(json.loads(paths.summary.read_text())))
    print(f"wrote {paths.summary}, {paths.results}" + ("" if args.no_plots else " and plots"))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from torchkron.experiments.commands import bench

    return int(bench.main(args))


def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark KronLinear against dense and other implementations",
        description="Time forward and training steps of KronLinear, nn.Linear and other "
        "Kronecker implementations at the listed shapes; writes JSON and markdown.",
    )
    try:
        from torchkron.experiments.commands import bench
    except ImportError:  # pragma: no cover - bench is part of the package
        return
    bench.add_arguments(p)
    p.set_defaults(func=_cmd_bench)


def _build_parser() -> argparse.ArgumentParser:
    from torchkron import __version__

    parser = argparse.ArgumentParser(
        prog="torchkron",
        description="Kronecker-factored linear layers: experiments, benchmarks and tools.",
    )
    parser.add_argument("--version", action="version", version=f"torchkron {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "reproduce",
        help="run the founding MNIST experiment (all variants x seeds) and write the report",
        description="Train every variant of the founding experiment with several seeds, "
        "then write runs/*.json, summary.json, results.md, accuracy.png and loss.png.",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        metavar="ID",
        help="variant ids (default: the seed's five and their equal-weight dense baselines)",
    )
    p.add_argument(
        "--seeds", type=_positive_int, default=3, help="seeds per variant (default %(default)s)"
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
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "train",
        help="train one variant with one seed",
        description="Train one variant with one seed; writes OUT/runs/<variant>--seed<k>.json.",
    )
    p.add_argument(
        "--variant", required=True, metavar="ID", help="variant id, e.g. one-kron-mat or dense-h10"
    )
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default %(default)s)")
    add_run_arguments(p, "runs/mnist")
    add_recipe_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "report",
        help="regenerate summary, table and plots from saved run files",
        description="Rebuild summary.json, results.md, accuracy.png and loss.png from "
        "DIR/runs/*.json alone.",
    )
    p.add_argument(
        "dir", type=Path, metavar="DIR", help="output folder of a reproduce run (holds runs/)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=_cmd_report)

    _add_bench(sub)
    for module in _SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


# Modules that add their own subcommand with ``register(subparsers)``; they import their
# heavy dependencies only when the subcommand runs.
_SUBCOMMAND_MODULES = tuple(
    f"torchkron.experiments.commands.{m}" for m in ("plan", "sweep", "compress", "lm")
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchkron`` console script."""
    try:
        parser = _build_parser()  # imports torch: seconds, long enough for a Ctrl-C
    except KeyboardInterrupt:
        print("\ntorchkron: interrupted while starting; nothing was done.", file=sys.stderr)
        return 130
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    args.command_line = shlex.join(["torchkron", *words])
    from torchkron.experiments.errors import UserError

    if getattr(args, "jobs", 0) is None:
        from torchkron.experiments.commands.reproduce import default_workers

        args.jobs = default_workers()
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"torchkron {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ntorchkron {args.command}: interrupted; finished epochs are checkpointed, rerun "
            "the same command with --resume to continue.",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # e.g. piped into head
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        # A file-system failure not caught closer to its cause: still a message, not a
        # traceback, with the path and the cause.
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"torchkron {args.command}: error: could not access{where}: "
            f"{exc.strerror or exc}. Check the path and the free disk space.",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
