"""The ``torchkron`` command line: one table of subcommands, and the error handling.

Each subcommand is a module of :mod:`torchkron.experiments.commands` with
``add_arguments(parser)`` and ``run(args) -> int``; :data:`COMMANDS` names it with its
help texts, in the order ``torchkron --help`` lists them. The command modules import their
study's heavy code (training, plotting) only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help texts and the module that implements it."""

    name: str
    help: str
    description: str

    @property
    def module(self) -> str:
        return f"torchkron.experiments.commands.{self.name}"


COMMANDS: tuple[Command, ...] = (
    Command(
        "reproduce",
        help="run the founding MNIST experiment (all variants x seeds) and write the report",
        description="Train every variant of the founding experiment with several seeds, "
        "then write runs/*.json, summary.json, results.md, accuracy.png and loss.png.",
    ),
    Command(
        "train",
        help="train one variant with one seed",
        description="Train one variant with one seed; writes OUT/runs/<variant>--seed<k>.json.",
    ),
    Command(
        "report",
        help="regenerate summary, table and plots from saved run files",
        description="Rebuild summary.json, results.md, accuracy.png and loss.png from "
        "DIR/runs/*.json alone.",
    ),
    Command(
        "bench",
        help="benchmark KronLinear against dense and other implementations",
        description="Time forward and training steps of KronLinear, nn.Linear and other "
        "Kronecker implementations at the listed shapes; writes JSON and markdown.",
    ),
    Command(
        "plan",
        help="list every way to factor an IN->OUT layer, with weights and FLOPs",
        description="List the ways to factor an IN -> OUT layer into 1..K Kronecker factors "
        "(the prime factors of IN and OUT grouped and paired every distinct way, up to the "
        "order of the factors), with factor shapes, weights, forward FLOPs per sample, "
        "compression against the dense layer, and whether the factors can be tied; sorted "
        "by weights, the balanced default marked *. Sizes that cannot be split into K "
        "factors are reported with the nearest sizes that can. Highly composite sizes have "
        "millions of factorisations: they are counted exactly and the --top cheapest shown.",
    ),
    Command(
        "sweep",
        help="train a grid of Kronecker and dense MLPs and map the accuracy-vs-size frontier",
        description="Train Kronecker input-hidden layers with 2-4 factors, ranks, tied and "
        "untied, with dense or Kronecker hidden-output layers, and dense 784-h-10 MLPs over "
        "widths h, each with several seeds, on the reproduction's recipe. Writes OUT/runs, "
        "summary.json, frontier.md and frontier.png. Resumable with --resume.",
    ),
    Command(
        "compress",
        help="convert a trained dense MLP to Kronecker layers, fine-tune, compare to scratch",
        description="Replace the Linear layers of a trained dense MLP by their nearest "
        "Kronecker layers (kronify with from_dense=True) at each rank, report the "
        "approximation error per layer and the test accuracy right after conversion, "
        "fine-tune for --epochs and report again; also train the same Kronecker nets from "
        "scratch on the full recipe. Writes OUT/runs, compress.json, compress.md and "
        "compress.png. Resumable with --resume.",
    ),
    Command(
        "adapt",
        help="adapt the MNIST MLP to Fashion-MNIST: LoKr vs LoRA at equal trainable parameters",
        description="Adapt the seed's original MLP, trained on MNIST (retrained into "
        "OUT/source when missing), to Fashion-MNIST with PEFT LoRA at several ranks, PEFT LoKr "
        "(accelerated by torchkron) at the configs matching each LoRA's trainable-parameter "
        "count, full fine-tuning and training from scratch; each arm's Adam rate picked on "
        "held-out training images, then several seeds at that rate. Writes OUT/runs, "
        "results.md, summary.json and accuracy.png; finished runs are kept, so a rerun "
        "resumes. Needs PEFT.",
    ),
    Command(
        "lm",
        help="character-level GPT on Tiny Shakespeare: dense vs Kronecker vs baselines",
        description="Train a nanoGPT-style GPT on Tiny Shakespeare with dense, Kronecker, "
        "low-rank or Monarch linear layers; run the CPU study; write its report.",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand in :data:`COMMANDS`."""
    import torchkron

    parser = argparse.ArgumentParser(
        prog="torchkron",
        description="Kronecker-factored linear layers: experiments, benchmarks and tools.",
    )
    parser.add_argument("--version", action="version", version=f"torchkron {torchkron.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        module = importlib.import_module(command.module)
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        module.add_arguments(p)
        run: Callable[[argparse.Namespace], int] = module.run
        p.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchkron`` console script."""
    try:
        parser = build_parser()  # imports torch: seconds, long enough for a Ctrl-C
    except KeyboardInterrupt:
        print("\ntorchkron: interrupted while starting; nothing was done.", file=sys.stderr)
        return 130
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    args.command_line = shlex.join(["torchkron", *words])
    from torchkron.experiments.common.errors import UserError

    if getattr(args, "jobs", 0) is None:
        from torchkron.experiments.common.workers import default_workers

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
