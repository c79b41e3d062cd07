"""``torchkron plan IN OUT``: every way to factor one layer, with what each costs.

The search is :mod:`torchkron.factorization.candidates` (:func:`layer_candidates`,
:func:`count_candidates`); this module formats its result as a table or JSON and holds the
subcommand's arguments.
"""

from __future__ import annotations

import argparse
import json

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.options import positive_int
from torchkron.factorization import format_primes
from torchkron.factorization.candidates import (
    MAX_ALL_ROWS,
    MAX_FACTORS,
    MAX_SIZE,
    Candidates,
    Shapes,
    count_candidates,
    layer_candidates,
)

__all__ = ["add_arguments", "format_plan", "run"]


def _shapes_text(shapes: Shapes) -> str:
    return " (x) ".join(f"{o}x{n}" for o, n in shapes)


def format_plan(plan: Candidates) -> str:
    """The plan as a text table with a header line and the notes."""
    mode = f"rank {plan.rank}, " + ("tied" if plan.tied else "untied")
    if plan.allow_ones:
        mode += ", size-1 factors allowed"
    lines = [
        f"{plan.in_features} -> {plan.out_features} ({plan.in_features} = "
        f"{format_primes(plan.in_features)}, {plan.out_features} = "
        f"{format_primes(plan.out_features)}): dense {plan.dense_weights:,} weights, "
        f"{plan.dense_flops:,} FLOPs/sample; {mode}; 1..{plan.max_factors} factors, "
        + (
            f"{plan.total_rows:,} factorisations, showing the best {len(plan.rows)} by "
            f"weights (--top M for more, --factors K for fewer factors)."
            if plan.truncated
            else f"{len(plan.rows)} factorisation(s), sorted by weights."
        ),
        "",
    ]
    header = ["k", "factor shapes (out x in)", "weights", "FLOPs/sample", "compression"]
    header += ["tieable", "default"]
    table = [header]
    for r in plan.rows:
        table.append(
            [
                str(r.factors),
                _shapes_text(r.shapes),
                f"{r.weights:,}",
                f"{r.flops:,}",
                f"{r.compression:,.1f}x",
                "yes" if r.tieable else "no",
                "*" if r.balanced else "",
            ]
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    left = {1}  # the shapes column reads better left-aligned
    for row in table:
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += [
        "",
        "k = 1 is the dense layer itself. * marks the balanced default of "
        "KronLinear(num_factors=k) for that k.",
    ]
    lines += plan.notes
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.factors > MAX_FACTORS:
        raise UserError(f"--factors must be at most {MAX_FACTORS}, got {args.factors}.")
    for name, value in (("IN", args.in_features), ("OUT", args.out_features)):
        if value > MAX_SIZE:
            raise UserError(f"{name} must be at most 2**32 = {MAX_SIZE:,}, got {value:,}.")
    if args.all:
        total = count_candidates(
            args.in_features,
            args.out_features,
            args.factors,
            tied=args.tied,
            allow_ones=args.allow_ones,
        )
        if total > MAX_ALL_ROWS:
            raise UserError(
                f"--all would list {total:,} factorisations (at most {MAX_ALL_ROWS:,}); use "
                f"--top M for the M cheapest, or fewer --factors."
            )
    plan = layer_candidates(
        args.in_features,
        args.out_features,
        args.factors,
        rank=args.rank,
        tied=args.tied,
        allow_ones=args.allow_ones,
        top=None if args.all else args.top,
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("in_features", type=positive_int, metavar="IN", help="input size of the layer")
    p.add_argument(
        "out_features", type=positive_int, metavar="OUT", help="output size of the layer"
    )
    p.add_argument(
        "--factors",
        type=positive_int,
        default=4,
        metavar="K",
        help=f"list 1..K factors (default %(default)s, at most {MAX_FACTORS})",
    )
    p.add_argument(
        "--rank",
        type=positive_int,
        default=1,
        metavar="R",
        help="summed Kronecker products: scales weights and FLOPs (default %(default)s)",
    )
    p.add_argument(
        "--tied",
        action="store_true",
        help="list only factorisations that can be tied (all factors equal), counting the "
        "shared factor once",
    )
    p.add_argument(
        "--allow-ones",
        action="store_true",
        help="also list factors with a size of 1 on one side (out_i x 1 or 1 x in_i)",
    )
    p.add_argument(
        "--top",
        type=positive_int,
        default=100,
        metavar="M",
        help="show the M cheapest factorisations (default %(default)s); the header still "
        "counts them all",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help=f"show every factorisation (refused above {MAX_ALL_ROWS:,})",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
