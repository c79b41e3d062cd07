"""``torchkron plan IN OUT``: every way to factor one layer, with what each costs.

A ``k``-factor Kronecker layer splits ``IN`` into ``k`` factors and ``OUT`` into ``k``
factors and pairs them: factor ``i`` is ``out_i x in_i``. :func:`layer_plans` lists every
distinct such split for ``k = 1 .. K``: the prime factors of each size grouped into ``k``
factors greater than 1 in every way, paired in every way, with two lists that differ only
in the order of their factors counted once (they describe the same layer up to a
permutation of rows and columns). ``allow_ones=True`` also admits factors with a size of 1
on one side (``out_i x 1`` or ``1 x in_i``), as :func:`torchkron.layer_factorizations`
does. Pure functions; the subcommand only formats them.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass
from typing import Any

from torchkron.cli import _positive_int
from torchkron.experiments.errors import UserError
from torchkron.factorization import (
    factor_shapes,
    factorizations,
    format_primes,
    layer_factorizations,
    nearest_factorable,
    prime_factors,
)
from torchkron.functional import dense_flops, kron_flops

__all__ = [
    "MAX_FACTORS",
    "Plan",
    "PlanRow",
    "format_plan",
    "layer_plans",
    "register",
    "split_shapes",
]

#: Factor counts above this are refused: pairings are enumerated by permutation (k!).
MAX_FACTORS = 8

Shapes = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PlanRow:
    """One factorisation of the layer and its cost at the plan's rank."""

    shapes: Shapes  # ((out_1, in_1), ..., (out_k, in_k)), largest first
    weights: int  # stored weights, bias excluded (a tied factor counted once)
    flops: int  # forward FLOPs per sample, bias excluded
    compression: float  # dense weights / weights
    tieable: bool  # every factor has the same shape, so U (x) ... (x) U is possible
    balanced: bool  # factor_shapes(IN, OUT, k): what KronLinear picks by default

    @property
    def factors(self) -> int:
        return len(self.shapes)


@dataclass(frozen=True)
class Plan:
    """Every factorisation of ``in_features -> out_features`` into 1 .. ``max_factors``."""

    in_features: int
    out_features: int
    max_factors: int
    rank: int
    tied: bool
    allow_ones: bool
    dense_weights: int
    dense_flops: int
    rows: tuple[PlanRow, ...]  # sorted by weights, then factors, then shapes
    notes: tuple[str, ...]  # sizes that do not split, with the nearest that do

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, src in zip(data["rows"], self.rows, strict=True):
            row["factors"] = src.factors
        return data


def _canonical(pairs: Any) -> Shapes:
    return tuple(sorted(((int(o), int(n)) for o, n in pairs), reverse=True))


def split_shapes(in_features: int, out_features: int, k: int, *, allow_ones: bool) -> list[Shapes]:
    """Every distinct ``k``-factor shape list of the layer, sorted (largest first).

    With ``allow_ones=False`` every ``out_i`` and ``in_i`` is greater than 1 (for ``k = 1``
    the single factor is the whole ``OUT x IN`` matrix); with ``True`` a factor may be
    ``out_i x 1`` or ``1 x in_i`` but never ``1 x 1`` (a scalar).
    """
    if k < 1 or k > MAX_FACTORS:
        raise ValueError(f"split_shapes: k must be in 1..{MAX_FACTORS}, got {k}.")
    if k == 1:
        return [((out_features, in_features),)]
    if allow_ones:
        return [_canonical(s) for s in layer_factorizations(in_features, out_features, k)]
    found: set[Shapes] = set()
    for outs in factorizations(out_features, k):
        for ins in factorizations(in_features, k):
            # Every distinct pairing of the in-factors with the (sorted) out-factors.
            for perm in set(itertools.permutations(ins)):
                found.add(_canonical(zip(outs, perm, strict=True)))
    return sorted(found, reverse=True)


def _balanced(in_features: int, out_features: int, k: int) -> Shapes | None:
    try:
        return _canonical(factor_shapes(in_features, out_features, k))
    except ValueError:
        return None


def _row(shapes: Shapes, dense: int, rank: int, tied: bool, balanced: Shapes | None) -> PlanRow:
    if len(shapes) == 1:
        # One factor is the dense layer itself: the reference, at rank 1 whatever R is.
        ((out_features, in_features),) = shapes
        return PlanRow(shapes, dense, dense_flops(in_features, out_features), 1.0, True, True)
    tieable = len(set(shapes)) == 1
    sizes = [o * n for o, n in shapes]
    weights = rank * (sizes[0] if tied and tieable else sum(sizes))
    flops = kron_flops([o for o, _ in shapes], [n for _, n in shapes], rank)
    return PlanRow(shapes, weights, flops, dense / weights, tieable, shapes == balanced)


def _size_notes(name: str, n: int, max_factors: int) -> list[str]:
    """Why ``n`` splits into no more than its prime count, and the nearest sizes that do."""
    count = len(prime_factors(n))
    if count >= max_factors:
        return []
    k = count + 1
    near = ", ".join(f"{m} = {format_primes(m)}" for m in nearest_factorable(n, k))
    what = "prime" if count == 1 else format_primes(n)
    return [
        f"{name} {n} ({what}) splits into at most {count} factor(s) > 1; nearest sizes "
        f"that split into {k}: {near}."
    ]


def layer_plans(
    in_features: int,
    out_features: int,
    max_factors: int = 4,
    *,
    rank: int = 1,
    tied: bool = False,
    allow_ones: bool = False,
) -> Plan:
    """Every way to factor an ``in_features -> out_features`` layer into 1..``max_factors``.

    Args:
        in_features: input size of the layer.
        out_features: output size of the layer.
        max_factors: the largest number of factors ``K`` to list.
        rank: number of summed Kronecker products ``R`` (scales weights and FLOPs).
        tied: list only the factorisations that can be tied (all factors equal), with
            the weights of one shared factor.
        allow_ones: also list factors with a size of 1 on one side.

    Returns:
        The :class:`Plan`; rows sorted by weights, then number of factors, then shapes.

    Examples:
        >>> plan = layer_plans(784, 625, 2)
        >>> [(r.shapes, r.weights, r.balanced) for r in plan.rows[:1]]
        [(((25, 28), (25, 28)), 1400, True)]
    """
    for name, value in (
        ("in_features", in_features),
        ("out_features", out_features),
        ("rank", rank),
    ):
        if value < 1:
            raise ValueError(f"layer_plans: {name} must be at least 1, got {value}.")
    if not 1 <= max_factors <= MAX_FACTORS:
        raise ValueError(
            f"layer_plans: max_factors must be in 1..{MAX_FACTORS}, got {max_factors}."
        )
    dense = in_features * out_features
    rows: list[PlanRow] = []
    for k in range(1, max_factors + 1):
        balanced = _balanced(in_features, out_features, k)
        for shapes in split_shapes(in_features, out_features, k, allow_ones=allow_ones):
            row = _row(shapes, dense, rank, tied, balanced)
            if row.tieable or not tied:
                rows.append(row)
    rows.sort(key=lambda r: (r.weights, r.factors, r.flops, tuple(-x for p in r.shapes for x in p)))
    notes = _size_notes("in_features", in_features, max_factors)
    notes += _size_notes("out_features", out_features, max_factors)
    if tied and all(r.factors == 1 for r in rows):
        notes.append(
            "No factorisation into 2 or more equal factors: tying needs in_features and "
            "out_features to be k-th powers (m**k and n**k) for the same k."
        )
    return Plan(
        in_features,
        out_features,
        max_factors,
        rank,
        tied,
        allow_ones,
        dense,
        dense_flops(in_features, out_features),
        tuple(rows),
        tuple(notes),
    )


def _shapes_text(shapes: Shapes) -> str:
    return " (x) ".join(f"{o}x{n}" for o, n in shapes)


def format_plan(plan: Plan) -> str:
    """The plan as a text table with a header line and the notes."""
    mode = f"rank {plan.rank}, " + ("tied" if plan.tied else "untied")
    if plan.allow_ones:
        mode += ", size-1 factors allowed"
    lines = [
        f"{plan.in_features} -> {plan.out_features} ({plan.in_features} = "
        f"{format_primes(plan.in_features)}, {plan.out_features} = "
        f"{format_primes(plan.out_features)}): dense {plan.dense_weights:,} weights, "
        f"{plan.dense_flops:,} FLOPs/sample; {mode}; 1..{plan.max_factors} factors, "
        f"{len(plan.rows)} factorisation(s), sorted by weights.",
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


def _cmd_plan(args: argparse.Namespace) -> int:
    if args.factors > MAX_FACTORS:
        raise UserError(f"--factors must be at most {MAX_FACTORS}, got {args.factors}.")
    plan = layer_plans(
        args.in_features,
        args.out_features,
        args.factors,
        rank=args.rank,
        tied=args.tied,
        allow_ones=args.allow_ones,
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0


def register(subparsers: Any) -> None:
    """Add ``torchkron plan``."""
    p = subparsers.add_parser(
        "plan",
        help="list every way to factor an IN->OUT layer, with weights and FLOPs",
        description="List the ways to factor an IN -> OUT layer into 1..K Kronecker factors "
        "(the prime factors of IN and OUT grouped and paired every distinct way, up to the "
        "order of the factors), with factor shapes, weights, forward FLOPs per sample, "
        "compression against the dense layer, and whether the factors can be tied; sorted "
        "by weights, the balanced default marked *. Sizes that cannot be split into K "
        "factors are reported with the nearest sizes that can.",
    )
    p.add_argument("in_features", type=_positive_int, metavar="IN", help="input size of the layer")
    p.add_argument(
        "out_features", type=_positive_int, metavar="OUT", help="output size of the layer"
    )
    p.add_argument(
        "--factors",
        type=_positive_int,
        default=4,
        metavar="K",
        help=f"list 1..K factors (default %(default)s, at most {MAX_FACTORS})",
    )
    p.add_argument(
        "--rank",
        type=_positive_int,
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
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_plan)
