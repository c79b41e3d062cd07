"""``torchkron report``: the arguments of :mod:`torchkron.experiments.mnist.report`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dir", type=Path, metavar="DIR", help="output folder of a reproduce run (holds runs/)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def run(args: argparse.Namespace) -> int:
    from torchkron.experiments.mnist.report import report_text, write_report

    paths = write_report(args.dir, plots=not args.no_plots)
    print(report_text(json.loads(paths.summary.read_text())))
    print(f"wrote {paths.summary}, {paths.results}" + ("" if args.no_plots else " and plots"))
    return 0
