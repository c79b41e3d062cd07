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
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="BASE",
        help="another reproduce folder (e.g. results/mnist) to set this study against: "
        "how much of the Kronecker nets' advantage over the equal-weight dense nets "
        "survives, whether tying U = V still costs nothing, how far each falls behind "
        "original (a section of results.md)",
    )
    p.add_argument(
        "--filters-from",
        type=Path,
        nargs="+",
        default=None,
        metavar="SRC",
        help="first rewrite DIR/filters.npz from the saved seed-0 models (SRC/models/, "
        "untracked) of original, one-kron-mat and two-kron-mat in each SRC folder; "
        "DIR/filters.npz, where present, is drawn as DIR/filters.png",
    )


def run(args: argparse.Namespace) -> int:
    from torchkron.experiments.mnist.report import report_text, write_report

    if args.filters_from:
        from torchkron.experiments.mnist.filters import FILTERS_FILE, extract_filters

        print(f"wrote {extract_filters(args.filters_from, args.dir / FILTERS_FILE)}")
    paths = write_report(args.dir, plots=not args.no_plots, baseline=args.baseline)
    print(report_text(json.loads(paths.summary.read_text())))
    print(f"wrote {paths.summary}, {paths.results}" + ("" if args.no_plots else " and plots"))
    return 0
