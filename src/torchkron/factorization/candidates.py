"""The factorisation candidates of one layer: every way to factor it, with what each costs.

A ``k``-factor Kronecker layer splits ``IN`` into ``k`` factors and ``OUT`` into ``k``
factors and pairs them: factor ``i`` is ``out_i x in_i``. :func:`layer_candidates` lists every
distinct such split for ``k = 1 .. K``: the prime factors of each size grouped into ``k``
factors greater than 1 in every way, paired in every way, with two lists that differ only
in the order of their factors counted once (they describe the same layer up to a
permutation of rows and columns). ``allow_ones=True`` also admits factors with a size of 1
on one side (``out_i x 1`` or ``1 x in_i``), as :func:`torchkron.layer_factorizations`
does. Pure functions; ``torchkron plan`` only formats them.

Highly composite sizes have astronomically many factorisations (``720720 -> 720720``
has over 10^8 with up to 4 factors), so nothing enumerates them all: :func:`count_candidates`
counts them exactly by Burnside's lemma, and :func:`layer_candidates` finds the ``top``
cheapest by a branch-and-bound search over factor pairs (pairs generated in canonical
order, each partial list pruned by the AM-GM lower bound ``j * (P Q)^(1/j)`` on the
weights its ``j`` remaining factors need). Time and memory are bounded by ``top`` and the
divisor counts, not by the number of factorisations.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from torchkron.factorization._shapes import (
    divisors,
    factor_shapes,
    factorizations,
    format_primes,
    layer_factorizations,
    nearest_factorable,
    prime_factors,
)
from torchkron.functional import dense_flops

__all__ = [
    "MAX_ALL_ROWS",
    "MAX_FACTORS",
    "MAX_SIZE",
    "SEARCH_BUDGET",
    "Candidate",
    "Candidates",
    "Shapes",
    "count_candidates",
    "layer_candidates",
    "split_shapes",
]

#: Factor counts above this are refused (FLOPs pick a contraction order among k!).
MAX_FACTORS = 8

#: Layer sizes above this are refused: any 32-bit size is answered in seconds.
MAX_SIZE = 2**32

#: ``top=None`` (list every factorisation) is refused above this many rows.
MAX_ALL_ROWS = 100_000

#: Work budget of the search for the ``top`` cheapest rows: candidate factor pairs
#: examined. A count, not a time, so the answer is the same on every machine; only the
#: largest highly composite sizes with many factors reach it (the result then says so).
SEARCH_BUDGET = 2_000_000


class _BudgetSpent(Exception):
    pass


#: Relative slack over the AM-GM floor of successive search passes (the last: none).
_SLACKS = (1e-3, 1e-2, 0.1, 1.0, 10.0, math.inf)

#: Factor counts with at most this many rows are searched in one pass without cutoff.
_FEW_ROWS = 5_000

Shapes = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Candidate:
    """One factorisation of the layer and its cost at the searched rank."""

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
class Candidates:
    """Every factorisation of ``in_features -> out_features`` into 1 .. ``max_factors``."""

    in_features: int
    out_features: int
    max_factors: int
    rank: int
    tied: bool
    allow_ones: bool
    dense_weights: int
    dense_flops: int
    rows: tuple[Candidate, ...]  # sorted by weights, then factors, then shapes
    notes: tuple[str, ...]  # sizes that do not split, with the nearest that do
    total_rows: int = -1  # every factorisation there is; rows holds the best len(rows)
    top: int | None = None  # the most rows asked for (None: all)
    exhaustive: bool = True  # False: the search hit SEARCH_BUDGET, rows are the best found

    @property
    def truncated(self) -> bool:
        return self.total_rows > len(self.rows)

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


@functools.lru_cache(maxsize=65536)
def _min_flops(outs: tuple[int, ...], ins: tuple[int, ...], rank: int) -> int:
    """:func:`torchkron.functional.kron_flops`: the cheapest contraction order's FLOPs.

    The same minimum, by a DP over the set of contracted modes (``2**k * k`` steps)
    instead of trying all ``k!`` orders: contracting mode ``i`` after the set ``S`` costs
    ``2 R * prod_{j in S} out_j * prod_{j not in S, j != i} in_j * in_i * out_i``,
    whatever order ``S`` was contracted in.
    """
    k = len(outs)
    cost = [0] + [-1] * ((1 << k) - 1)
    for done in range(1 << k):
        if cost[done] < 0:
            continue
        dims = [outs[j] if done >> j & 1 else ins[j] for j in range(k)]
        size = math.prod(dims)
        for i in range(k):
            if not done >> i & 1:
                step = 2 * rank * (size // ins[i]) * ins[i] * outs[i]
                nxt = done | 1 << i
                if cost[nxt] < 0 or cost[done] + step < cost[nxt]:
                    cost[nxt] = cost[done] + step
    return cost[-1]


def _row(shapes: Shapes, dense: int, rank: int, tied: bool, balanced: Shapes | None) -> Candidate:
    if len(shapes) == 1:
        # One factor is the dense layer itself: the reference, at rank 1 whatever R is.
        ((out_features, in_features),) = shapes
        return Candidate(shapes, dense, dense_flops(in_features, out_features), 1.0, True, True)
    tieable = len(set(shapes)) == 1
    sizes = [o * n for o, n in shapes]
    weights = rank * (sizes[0] if tied and tieable else sum(sizes))
    flops = _min_flops(tuple(o for o, _ in shapes), tuple(n for _, n in shapes), rank)
    return Candidate(shapes, weights, flops, dense / weights, tieable, shapes == balanced)


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


def _solutions(weights: tuple[int, ...], total: int) -> int:
    """Number of ``x >= 0`` with ``sum weights[j] * x[j] == total``."""
    ways = [1] + [0] * total
    for w in weights:
        for t in range(w, total + 1):
            ways[t] += ways[t - w]
    return ways[total]


def _tuples(n: int, cycles: tuple[int, ...]) -> int:
    """Ordered ``(a_j >= 1)`` with ``prod a_j ** cycles[j] == n``, prime by prime."""
    if not cycles:
        return 1 if n == 1 else 0
    primes = prime_factors(n)
    return math.prod(_solutions(cycles, primes.count(p)) for p in set(primes))


def _partitions(k: int, largest: int | None = None) -> Iterator[tuple[int, ...]]:
    largest = k if largest is None else largest
    if k == 0:
        yield ()
        return
    for first in range(min(k, largest), 0, -1):
        for rest in _partitions(k - first, first):
            yield (first, *rest)


def _above_one(n: int, cycles: tuple[int, ...]) -> int:
    """Ordered ``(a_j >= 2)`` with ``prod a_j ** cycles[j] == n`` (inclusion-exclusion)."""
    count = 0
    for forced in itertools.product((False, True), repeat=len(cycles)):
        free = tuple(c for c, f in zip(cycles, forced, strict=True) if not f)
        count += (-1 if sum(forced) % 2 else 1) * _tuples(n, free)
    return count


def _count_k(in_features: int, out_features: int, k: int, allow_ones: bool) -> int:
    """Distinct ``k``-factor shape lists (up to factor order), by Burnside's lemma.

    The symmetric group permutes the ``k`` factor positions; a permutation of cycle type
    ``lambda`` fixes the ordered lists that are constant on its cycles, i.e. one pair
    ``(o_j, n_j)`` per cycle with ``prod o_j ** lambda_j == OUT`` (same for IN). The
    constraint on each pair (both sizes > 1, or not both 1) is imposed by
    inclusion-exclusion over the cycles whose sizes are forced to 1.
    """
    if k == 1:
        return 1
    total = 0
    for cycle_type in _partitions(k):
        perms = math.factorial(k)
        for length, mult in ((c, cycle_type.count(c)) for c in set(cycle_type)):
            perms //= length**mult * math.factorial(mult)
        m = len(cycle_type)
        fixed = 0
        if allow_ones:
            for forced in itertools.product((False, True), repeat=m):
                free = tuple(c for c, f in zip(cycle_type, forced, strict=True) if not f)
                sign = -1 if sum(forced) % 2 else 1
                fixed += sign * _tuples(out_features, free) * _tuples(in_features, free)
        else:
            fixed = _above_one(out_features, cycle_type) * _above_one(in_features, cycle_type)
        total += perms * fixed
    return total // math.factorial(k)


def _tied_shapes(in_features: int, out_features: int, k: int, allow_ones: bool) -> Shapes | None:
    """``((o, n),) * k`` with ``o**k == OUT`` and ``n**k == IN``, if there is one."""
    o, n = _int_root(out_features, k), _int_root(in_features, k)
    if o is None or n is None:
        return None
    if (o * n == 1) if allow_ones else (k > 1 and (o == 1 or n == 1)):
        return None
    return ((o, n),) * k


def _int_root(n: int, k: int) -> int | None:
    r = int(math.exp(math.log(n) / k) + 0.5)
    for c in (r - 1, r, r + 1):
        if c >= 1 and int(c) ** k == n:
            return c
    return None


def count_candidates(
    in_features: int,
    out_features: int,
    max_factors: int = 4,
    *,
    tied: bool = False,
    allow_ones: bool = False,
) -> int:
    """How many rows :func:`layer_candidates` has in all, without enumerating them.

    Examples:
        >>> count_candidates(784, 625, 4)
        54
        >>> count_candidates(720720, 720720, 4)
        166782267
    """
    if tied:
        return sum(
            _tied_shapes(in_features, out_features, k, allow_ones) is not None
            for k in range(1, max_factors + 1)
        )
    return sum(
        _count_k(in_features, out_features, k, allow_ones) for k in range(1, max_factors + 1)
    )


def _sort_key(row: Candidate) -> tuple[Any, ...]:
    return (row.weights, row.factors, row.flops, tuple(-x for p in row.shapes for x in p))


class _Best:
    """The ``top`` smallest rows by :func:`_sort_key` (a bounded max-heap)."""

    def __init__(self, top: int | None, budget: int) -> None:
        self.top = top
        self.heap: list[tuple[Any, ...]] = []  # (negated key, row)
        self.shapes: set[Shapes] = set()  # rows in the heap (a re-run pass finds them again)
        self.budget = budget  # candidate pairs the search may still examine
        self.cutoff = math.inf  # weights above this are not searched in this pass

    def full(self) -> bool:
        return self.top is not None and len(self.heap) >= self.top

    def worst_weights(self) -> float:
        return min(self.cutoff, float(-self.heap[0][0][0]) if self.full() else math.inf)

    def push(self, row: Candidate) -> None:
        if row.shapes in self.shapes:
            return
        key = _sort_key(row)
        neg = (-key[0], -key[1], -key[2], tuple(-x for x in key[3]))
        if not self.full():
            heapq.heappush(self.heap, (neg, row))
        elif neg > self.heap[0][0]:
            self.shapes.discard(heapq.heapreplace(self.heap, (neg, row))[1].shapes)
        else:
            return
        self.shapes.add(row.shapes)

    def rows(self) -> list[Candidate]:
        return sorted((row for _, row in self.heap), key=_sort_key)


def _ascending(idx: Any, values: Any, chunk: int = 256) -> Iterator[int]:
    """``idx`` in ascending order of ``values[idx]``, sorting only as far as it is read."""
    while idx.size:
        if idx.size > chunk:
            part = np.argpartition(values[idx], chunk)
            head, idx = idx[part[:chunk]], idx[part[chunk:]]
        else:
            head, idx = idx, idx[:0]
        yield from (int(i) for i in head[np.argsort(values[head], kind="stable")])


def _search(
    in_features: int,
    out_features: int,
    k: int,
    *,
    allow_ones: bool,
    emit: Any,
    best: _Best,
    rank: int,
) -> None:
    """Every canonical ``k``-factor list whose weights can still make ``best``.

    Pairs ``(o, n)`` of a list come in non-increasing order of ``(o * n, o)``, so each
    multiset is generated once. A partial list with area ``S`` and ``j`` factors left for
    the remainder ``P x Q`` needs at least ``S + j * (P Q)^(1/j)`` (AM-GM), and its next
    pair's area ``d`` must satisfy ``d**j >= P Q`` (every later area is ``<= d``).
    """
    douts = np.array(divisors(out_features), dtype=np.uint64)
    dins = np.array(divisors(in_features), dtype=np.uint64)
    tol = 1e-9

    def allowed(o: Any, n: Any) -> Any:
        return (o * n > 1) if allow_ones else ((o > 1) & (n > 1))

    def window(area: int, pq: float, j: int, cap_d: int) -> tuple[float, float]:
        """Areas ``d`` the next pair may have: ``d**j >= P Q``, bound within budget."""
        low = math.exp(math.log(pq) / j)
        high = float(cap_d)
        budget = best.worst_weights() / rank - area
        if math.isfinite(budget):

            def need(d: float) -> float:  # least total of this pair and the rest
                return d + (j - 1) * math.exp(math.log(pq / d) / (j - 1))

            # need() increases for d >= low; bisect (in log space) for need(d) = budget.
            lo_d, hi_d = low, max(low, min(high, budget))
            if need(hi_d) > budget:
                for _ in range(60):
                    mid = math.sqrt(lo_d * hi_d)
                    lo_d, hi_d = (mid, hi_d) if need(mid) <= budget else (lo_d, mid)
            high = min(high, hi_d)
        return low * (1 - tol), high * (1 + tol)

    def rec(p: int, q: int, j: int, cap: tuple[int, int], area: int, prefix: list[Any]) -> None:
        po = douts[np.uint64(p) % douts == 0]
        qi = dins[np.uint64(q) % dins == 0]
        pq = float(p) * float(q)
        low, high = window(area, pq, j, cap[0])
        if low > high:
            return
        # For each out-size o, the in-sizes n with low <= o * n <= high (sorted divisors).
        pof, qif = po.astype(np.float64), qi.astype(np.float64)
        start = np.searchsorted(qif, low / pof, "left")
        counts = np.maximum(np.searchsorted(qif, high / pof, "right") - start, 0)
        rows = np.repeat(np.arange(po.size), counts)
        cols = np.repeat(start - (np.cumsum(counts) - counts), counts) + np.arange(rows.size)
        best.budget -= rows.size
        if best.budget < 0 and best.top is not None:
            raise _BudgetSpent
        o, n = po[rows], qi[cols]
        d = o * n
        ok = allowed(o, n) & ((d < cap[0]) | ((d == cap[0]) & (o <= cap[1])))
        df = d.astype(np.float64)
        ok &= j * np.log(df) >= math.log(pq) - tol
        if j == 2:
            ro, rn = np.uint64(p) // o, np.uint64(q) // n
            rd = ro * rn
            ok &= allowed(ro, rn) & ((rd < d) | ((rd == d) & (ro <= o)))
            total = area + df + rd.astype(np.float64)
        else:
            total = area + df + (j - 1) * np.exp(np.log(pq / df) / (j - 1))
        idx = np.nonzero(ok)[0]
        for i in _ascending(idx, total):
            if rank * total[i] > best.worst_weights() * (1 + tol):
                break
            oi, ni = int(o[i]), int(n[i])
            if j == 2:
                emit([*prefix, (oi, ni), (p // oi, q // ni)])
            else:
                rec(p // oi, q // ni, j - 1, (oi * ni, oi), area + oi * ni, [*prefix, (oi, ni)])

    top = (out_features * in_features + 1, 0)
    rec(out_features, in_features, k, top, 0, [])


def layer_candidates(
    in_features: int,
    out_features: int,
    max_factors: int = 4,
    *,
    rank: int = 1,
    tied: bool = False,
    allow_ones: bool = False,
    top: int | None = None,
) -> Candidates:
    """The ways to factor an ``in_features -> out_features`` layer into 1..``max_factors``.

    Args:
        in_features: input size of the layer (at most :data:`MAX_SIZE`).
        out_features: output size of the layer (at most :data:`MAX_SIZE`).
        max_factors: the largest number of factors ``K`` to list.
        rank: number of summed Kronecker products ``R`` (scales weights and FLOPs).
        tied: list only the factorisations that can be tied (all factors equal), with
            the weights of one shared factor.
        allow_ones: also list factors with a size of 1 on one side.
        top: keep only the ``top`` cheapest rows (``total_rows`` still counts them
            all); ``None`` lists every one, refused above :data:`MAX_ALL_ROWS`.

    Returns:
        The :class:`Candidates`; rows sorted by weights, then number of factors, then FLOPs,
        then shapes.

    Examples:
        >>> found = layer_candidates(784, 625, 2)
        >>> [(r.shapes, r.weights, r.balanced) for r in found.rows[:1]]
        [(((25, 28), (25, 28)), 1400, True)]
        >>> big = layer_candidates(720720, 720720, top=3)
        >>> big.total_rows, len(big.rows)
        (166782267, 3)
    """
    for name, value in (
        ("in_features", in_features),
        ("out_features", out_features),
        ("rank", rank),
    ):
        if value < 1:
            raise ValueError(f"layer_candidates: {name} must be at least 1, got {value}.")
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if value > MAX_SIZE:
            raise ValueError(
                f"layer_candidates: {name} must be at most 2**32 = {MAX_SIZE:,}, got {value:,}."
            )
    if not 1 <= max_factors <= MAX_FACTORS:
        raise ValueError(
            f"layer_candidates: max_factors must be in 1..{MAX_FACTORS}, got {max_factors}."
        )
    if top is not None and top < 1:
        raise ValueError(f"layer_candidates: top must be at least 1 (or None for all), got {top}.")
    total = count_candidates(
        in_features, out_features, max_factors, tied=tied, allow_ones=allow_ones
    )
    if top is None and total > MAX_ALL_ROWS:
        raise ValueError(
            f"layer_candidates: {in_features} -> {out_features} has {total:,} factorisations into "
            f"1..{max_factors} factors, too many to list (at most {MAX_ALL_ROWS:,}); pass "
            f"top=M for the M cheapest, or fewer factors."
        )
    dense = in_features * out_features
    best = _Best(top, SEARCH_BUDGET)
    exhaustive = True
    # Most factors first: they hold the cheapest rows, which tighten the bound early.
    for k in range(max_factors, 0, -1):
        balanced = _balanced(in_features, out_features, k)
        if k == 1 or tied:
            shapes = (
                ((out_features, in_features),)
                if k == 1
                else _tied_shapes(in_features, out_features, k, allow_ones)
            )
            if shapes is not None:
                best.push(_row(_canonical(shapes), dense, rank, tied, balanced))
            continue

        def emit(pairs: list[tuple[int, int]], balanced: Shapes | None = balanced) -> None:
            best.push(_row(_canonical(pairs), dense, rank, tied, balanced))

        # Passes with a growing cutoff on the weights, starting just above the AM-GM
        # floor k * (OUT * IN)^(1/k): a narrow window from the first node on. A pass is
        # final once the best `top` rows all lie within its cutoff (unseen rows weigh
        # more), or when it had no cutoff.
        floor = rank * k * math.exp(math.log(float(dense)) / k)
        few = _count_k(in_features, out_features, k, allow_ones) <= _FEW_ROWS
        for slack in (math.inf,) if top is None or few else _SLACKS:
            best.cutoff = floor * (1 + slack)
            best.budget = SEARCH_BUDGET  # per pass, so one k cannot starve another
            try:
                _search(
                    in_features,
                    out_features,
                    k,
                    allow_ones=allow_ones,
                    emit=emit,
                    best=best,
                    rank=rank,
                )
            except _BudgetSpent:
                exhaustive = False
                break
            if best.full() and -best.heap[0][0][0] <= best.cutoff:
                break
        best.cutoff = math.inf
    rows = best.rows()
    notes = _size_notes("in_features", in_features, max_factors)
    notes += _size_notes("out_features", out_features, max_factors)
    if not exhaustive:
        notes.append(
            f"The search for the cheapest rows examined its budget of {SEARCH_BUDGET:,} "
            f"candidate factors and stopped: the rows shown are the cheapest it found, "
            f"and cheaper ones may exist. Use fewer factors (--factors) for an exhaustive "
            f"answer."
        )
    if tied and all(r.factors == 1 for r in rows):
        notes.append(
            "No factorisation into 2 or more equal factors: tying needs in_features and "
            "out_features to be k-th powers (m**k and n**k) for the same k."
        )
    return Candidates(
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
        total,
        top,
        exhaustive,
    )
