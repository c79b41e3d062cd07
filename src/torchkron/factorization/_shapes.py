"""Factor shapes of a layer: integer factorisations, divisors and the checks on them.

Pure functions on the sizes of a layer (:func:`factor_shapes`, :func:`factorizations`,
:func:`layer_factorizations`, :func:`divisors`), the validation of explicit shapes and
ranks shared by every layer type, and the largest useful rank of a shape list
(:func:`max_kronecker_rank`).
"""

from __future__ import annotations

import functools
import math
import operator
import warnings
from collections.abc import Iterator, Sequence

__all__ = [
    "MAX_SIZE",
    "FactorShapes",
    "RankClippedWarning",
    "check_positive_int",
    "check_rank",
    "check_shapes",
    "clip_rank",
    "divisors",
    "factor_example",
    "factor_shapes",
    "factorizations",
    "format_primes",
    "layer_factorizations",
    "max_kronecker_rank",
    "nearest_factorable",
    "prime_factors",
]

FactorShapes = list[tuple[int, int]]
"""Factor shapes ``[(out_1, in_1), ..., (out_k, in_k)]``, as ``nn.Linear`` orients them."""


class RankClippedWarning(UserWarning):
    """A requested rank was above :func:`max_kronecker_rank` and was lowered to it."""

    # Its public path, named in the docs (defined here, re-exported by the package).
    __module__ = "torchkron.factorization"


def check_positive_int(value: object, name: str, caller: str) -> int:
    """``value`` as a plain ``int >= 1``.

    Raises:
        TypeError: if ``value`` is not an integer (floats, strings and bools are refused
            rather than truncated or read as 0/1).
        ValueError: if it is below 1.
    """
    if isinstance(value, bool):
        raise TypeError(
            f"{caller}: {name} must be a positive int, got {value!r} (bool); pass an int."
        )
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{caller}: {name} must be a positive int, got {value!r} "
            f"({type(value).__name__}); pass an int."
        ) from None
    if number < 1:
        raise ValueError(f"{caller}: {name} must be a positive int, got {value!r}.")
    return int(number)


MAX_SIZE = 2**63 - 1
"""The largest size a tensor dimension can have (int64 indexing): the largest size
:func:`prime_factors` (and so every shape helper) factors."""


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n >= 1`` with multiplicity, ascending (``[]`` for 1).

    Fast for every size up to :data:`MAX_SIZE` (Miller-Rabin and Pollard's rho beyond
    small trial division), so a size read from an untrusted file cannot hang a caller.
    """
    if n < 1:
        raise ValueError(f"prime_factors: n must be a positive integer, got {n}.")
    if n > MAX_SIZE:
        raise ValueError(
            f"prime_factors: {n} is larger than any tensor dimension (at most 2**63 - 1); "
            f"check the layer size."
        )
    return list(_prime_factors(n))


_SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


@functools.lru_cache(maxsize=4096)
def _prime_factors(n: int) -> tuple[int, ...]:
    # Trial division by small numbers (every layer size in practice ends here), then
    # Pollard's rho on what is left: trial division alone takes ~2**30 steps on
    # 2**61 - 1. Cached, because planning and messages factor the same sizes often.
    out: list[int] = []
    p = 2
    while p < 1000 and p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1 if p == 2 else 2
    stack = [n] if n > 1 else []
    while stack:
        m = stack.pop()
        if _is_prime(m):
            out.append(m)
        else:
            d = _rho(m)
            stack += [d, m // d]
    return tuple(sorted(out))


def _is_prime(n: int) -> bool:
    # Miller-Rabin with the first 12 prime bases: exact for every n < 3.3e24.
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _SMALL_PRIMES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _rho(n: int) -> int:
    """A nontrivial divisor of a composite ``n`` with no factor below 1000 (Pollard)."""
    c = 1
    while True:
        x = y = 2
        d = 1
        while d == 1:
            x = (x * x + c) % n
            y = (y * y + c) % n
            y = (y * y + c) % n
            d = math.gcd(abs(x - y), n)
        if d != n:
            return d
        c += 1


def format_primes(n: int) -> str:
    """``n`` as a product of prime powers, e.g. ``784 = 2^4 * 7^2`` gives ``'2^4 * 7^2'``."""
    primes = prime_factors(n)
    if not primes:
        return "1"
    parts = []
    for p in sorted(set(primes)):
        c = primes.count(p)
        parts.append(f"{p}^{c}" if c > 1 else str(p))
    return " * ".join(parts)


def factorizations(n: int, k: int, *, min_factor: int = 2) -> Iterator[tuple[int, ...]]:
    """Every way to write ``n`` as a product of ``k`` factors ``>= min_factor``.

    Factors come in non-increasing order, so each multiset appears once.

    Examples:
        >>> sorted(factorizations(12, 2))
        [(4, 3), (6, 2)]
    """
    if k < 1:
        raise ValueError(f"factorizations: k must be at least 1, got {k}.")

    def rec(m: int, parts: int, cap: int) -> Iterator[tuple[int, ...]]:
        if parts == 1:
            if min_factor <= m <= cap:
                yield (m,)
            return
        # The largest factor comes first; it is at least m ** (1 / parts).
        for d in reversed(_divisors(m)):
            if min_factor <= d <= cap and d**parts >= m:
                yield from ((d, *rest) for rest in rec(m // d, parts - 1, d))

    if min_factor == 1 and n == 1:
        yield (1,) * k
        return
    yield from rec(n, k, n)


def nearest_factorable(n: int, num_factors: int, *, limit: int = 3) -> list[int]:
    """The sizes nearest to ``n`` that split into ``num_factors`` factors ``> 1``."""
    found: list[int] = []
    delta = 1
    while len(found) < limit and delta < 10 * n + 100:
        for m in (n - delta, n + delta):
            if m >= 2 and len(prime_factors(m)) >= num_factors and len(found) < limit:
                found.append(m)
        delta += 1
    return sorted(found)


def _balanced(n: int, k: int, what: str) -> tuple[int, ...]:
    """The split of ``n`` into ``k`` factors > 1 whose logs are closest to equal."""
    if k == 1:
        return (n,)
    if len(prime_factors(n)) < k:
        primes = prime_factors(n)
        why = (
            f"{n} is prime"
            if len(primes) == 1
            else f"{n} = {format_primes(n)} has only {len(primes)} prime factor(s)"
        )
        near = ", ".join(f"{m} = {format_primes(m)}" for m in nearest_factorable(n, k))
        # The size goes on its own side of the (out_i, in_i) pairs.
        example = (
            f"[(out_1, 1), (out_2, {n})]" if what == "in_features" else f"[(1, in_1), ({n}, in_2)]"
        )
        raise ValueError(
            f"factor_shapes: cannot split {what}={n} into {k} factors greater than 1: {why}. "
            f"Use fewer factors (num_factors={max(1, len(primes))}), resize the layer to a "
            f"size that splits (nearest: {near}), or pass explicit shapes such as "
            f"{example}."
        )
    return _most_balanced(n, k)


def _most_balanced(n: int, k: int) -> tuple[int, ...]:
    """``min(factorizations(n, k), key=(score, factors))`` by branch and bound.

    ``score`` is ``sum (log f - log(n) / k)**2``. A partial split whose remainder ``m``
    still needs ``j`` factors scores at least ``j * (log(m) / j - target)**2`` more (equal
    logs minimise a sum of squares with a fixed sum), so most branches are cut: highly
    composite sizes have too many factorisations to list them all.
    """
    target = math.log(n) / k
    best: list[tuple[float, tuple[int, ...]]] = []

    def rec(m: int, parts: int, cap: int, prefix: tuple[int, ...], partial: float) -> None:
        if parts == 1:
            if 2 <= m <= cap:
                fs = (*prefix, m)
                key = (sum((math.log(f) - target) ** 2 for f in fs), fs)
                if not best or key < best[0]:
                    best[:] = [key]
            return
        for d in reversed(_divisors(m)):
            if d > cap:
                continue
            if d < 2 or d**parts < m:  # descending: every later divisor fails too
                break
            cost = partial + (math.log(d) - target) ** 2
            rest = parts - 1
            bound = cost + rest * (math.log(m // d) / rest - target) ** 2
            if best and bound > best[0][0] + 1e-9:
                continue
            rec(m // d, rest, d, (*prefix, d), cost)

    rec(n, k, n, (), 0.0)
    return best[0][1]


def factor_shapes(in_features: int, out_features: int, num_factors: int = 2) -> FactorShapes:
    """Balanced factor shapes for an ``in_features -> out_features`` layer.

    Each size is split into ``num_factors`` factors as close to equal as its prime
    factors allow; the largest out-factor is paired with the largest in-factor.

    Args:
        in_features: input size of the layer.
        out_features: output size of the layer.
        num_factors: number of Kronecker factors ``k``.

    Returns:
        ``[(out_1, in_1), ..., (out_k, in_k)]``.

    Raises:
        ValueError: if a size cannot be split into ``num_factors`` factors greater than 1.

    Examples:
        >>> factor_shapes(784, 625)
        [(25, 28), (25, 28)]
        >>> factor_shapes(625, 10)
        [(5, 25), (2, 25)]
    """
    in_features = check_positive_int(in_features, "in_features", "factor_shapes")
    out_features = check_positive_int(out_features, "out_features", "factor_shapes")
    num_factors = check_positive_int(num_factors, "num_factors", "factor_shapes")
    outs = _balanced(out_features, num_factors, "out_features")
    ins = _balanced(in_features, num_factors, "in_features")
    return list(zip(outs, ins, strict=True))


def check_shapes(
    shapes: Sequence[tuple[int, int]], in_features: int, out_features: int, caller: str
) -> FactorShapes:
    """Validate explicit factor shapes against the layer sizes; return them as a list.

    Raises:
        TypeError: if ``shapes`` is not a sequence of ``(out_i, in_i)`` pairs of ints
            (a float such as ``4.5`` or a string is refused, not truncated).
        ValueError: if a size is below 1 or the products do not match the layer.
    """
    raw: object = shapes  # callers pass anything; check it before trusting the annotation
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise TypeError(
            f"{caller}: shapes must be a list of (out_i, in_i) pairs of ints, got "
            f"{shapes!r} ({type(shapes).__name__}); {_example(in_features, out_features)}."
        )
    clean: FactorShapes = []
    for i, entry in enumerate(shapes):
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
            raise TypeError(
                f"{caller}: shapes[{i}] = {entry!r} is not an (out_i, in_i) pair; shapes "
                f"must be a list of pairs of ints, {_example(in_features, out_features)}."
            )
        pair = []
        for size in entry:
            if isinstance(size, bool) or not _is_index(size):
                raise TypeError(
                    f"{caller}: shapes[{i}] = {tuple(entry)!r} has a size {size!r} of type "
                    f"{type(size).__name__}; factor sizes must be ints, "
                    f"{_example(in_features, out_features)}."
                )
            pair.append(operator.index(size))
        clean.append((pair[0], pair[1]))
    if not clean:
        raise ValueError(f"{caller}: shapes is empty; give at least one (out_i, in_i) pair.")
    if any(o < 1 or n < 1 for o, n in clean):
        raise ValueError(f"{caller}: every factor size must be >= 1, got shapes {clean}.")
    prod_out = math.prod(o for o, _ in clean)
    prod_in = math.prod(n for _, n in clean)
    if prod_out != out_features or prod_in != in_features:
        raise ValueError(
            f"{caller}: shapes {clean} give a {prod_in} -> {prod_out} layer (in-sizes multiply "
            f"to {prod_in}, out-sizes to {prod_out}), but the layer is {in_features} -> "
            f"{out_features}. Choose in-sizes whose product is {in_features} and out-sizes "
            f"whose product is {out_features}, e.g. "
            f"factor_shapes({in_features}, {out_features}, {len(clean)})."
        )
    return clean


def _is_index(value: object) -> bool:
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _example(in_features: int, out_features: int) -> str:
    # Built only for a message: valid shapes need no factoring of their sizes.
    return f"e.g. shapes={factor_example(in_features, out_features)}"


def factor_example(in_features: int, out_features: int) -> str:
    """A valid ``shapes`` value for the layer, for error messages."""
    try:
        return str(factor_shapes(in_features, out_features, 2))
    except (TypeError, ValueError):
        return f"[({out_features}, {in_features})]"


def layer_factorizations(
    in_features: int, out_features: int, num_factors: int
) -> list[FactorShapes]:
    """Every distinct set of ``num_factors`` factor shapes for a layer.

    Each factor is ``(out_i, in_i)`` with ``out_i * in_i > 1`` (a ``1 x 1`` factor is a
    scalar and adds nothing); sizes of 1 on one side are allowed. Two lists that differ
    only in the order of their factors describe the same layer up to a permutation of
    rows and columns, so each appears once, sorted.
    """
    if num_factors < 1:
        raise ValueError(f"layer_factorizations: num_factors must be >= 1, got {num_factors}.")
    seen: set[tuple[tuple[int, int], ...]] = set()
    out_splits = _ordered_splits(out_features, num_factors)
    in_splits = _ordered_splits(in_features, num_factors)
    for outs in out_splits:
        for ins in in_splits:
            pairs = tuple(zip(outs, ins, strict=True))
            if any(o * n == 1 for o, n in pairs):
                continue
            seen.add(tuple(sorted(pairs, reverse=True)))
    return [list(p) for p in sorted(seen, reverse=True)]


def _ordered_splits(n: int, k: int) -> set[tuple[int, ...]]:
    """All ordered k-tuples of positive ints (1 allowed) whose product is n."""
    if k == 1:
        return {(n,)}
    out: set[tuple[int, ...]] = set()
    for d in _divisors(n):
        for rest in _ordered_splits(n // d, k - 1):
            out.add((d, *rest))
    return out


def divisors(n: int) -> list[int]:
    """Divisors of ``n >= 1``, ascending, built from its prime factors (no scan up to sqrt n).

    Examples:
        >>> divisors(12)
        [1, 2, 3, 4, 6, 12]
    """
    return list(_divisors(n))


@functools.lru_cache(maxsize=4096)
def _divisors(n: int) -> tuple[int, ...]:
    # Cached (planning factors the same sizes many times); a tuple, so no caller can
    # change the cached value.
    found = [1]
    primes = prime_factors(n)
    for p in sorted(set(primes)):
        powers = [p**e for e in range(1, primes.count(p) + 1)]
        found += [d * q for d in found for q in powers]
    return tuple(sorted(found))


def max_kronecker_rank(shapes: Sequence[tuple[int, int]]) -> int:
    """The largest rank :func:`nearest_kronecker` can use for ``shapes``.

    For two factors it is the rank bound of the rearranged ``(o_1 n_1) x (o_2 n_2)``
    matrix, ``min(o_1 n_1, o_2 n_2)``. For ``k`` factors the sequential SVD splits level
    ``i`` into at most ``min(o_i n_i, prod_{j>i} o_j n_j)`` terms, so it is the product of
    those bounds over ``i < k`` (1 for a single factor). At this rank the approximation
    is exact: every ``(prod out_i) x (prod in_i)`` matrix is a sum of that many Kronecker
    products, and terms beyond it could only be zero.

    Examples:
        >>> max_kronecker_rank([(25, 28), (25, 28)])
        700
        >>> max_kronecker_rank([(2, 2)] * 3)
        16
    """
    sizes = [o * n for o, n in shapes]
    bound = 1
    for i in range(len(sizes) - 1):
        bound *= min(sizes[i], math.prod(sizes[i + 1 :]))
    return bound


def check_rank(rank: object, caller: str) -> int:
    """``rank`` as a plain ``int >= 1`` (TypeError for bools/floats, ValueError below 1)."""
    if isinstance(rank, bool) or not _is_index(rank):
        raise TypeError(
            f"{caller}: rank must be an int >= 1, got {rank!r} ({type(rank).__name__}); "
            f"pass the number of summed Kronecker products, e.g. rank=4."
        )
    value = operator.index(rank)  # type: ignore[arg-type]
    if value < 1:
        raise ValueError(f"{caller}: rank must be an int >= 1, got {value}.")
    return int(value)


def clip_rank(rank: int, shapes: Sequence[tuple[int, int]], caller: str) -> int:
    """``min(rank, max_kronecker_rank(shapes))``, warning when that lowers ``rank``."""
    bound = max_kronecker_rank(shapes)
    if rank <= bound:
        return rank
    sizes = [o * n for o, n in shapes]
    if len(sizes) == 2:
        why = f"min of the rearranged {sizes[0]} x {sizes[1]} matrix's dimensions"
    elif len(sizes) == 1:
        why = "a single factor is the whole matrix"
    else:
        why = "the most terms the sequential SVD can split the matrix into"
    warnings.warn(
        f"{caller}: rank={rank} is above the largest achievable rank {bound} for shapes "
        f"{[tuple(p) for p in shapes]} ({why}); using rank={bound}, which represents the "
        f"weight exactly. Pass rank<={bound} to silence this warning.",
        RankClippedWarning,
        stacklevel=3,
    )
    return bound
