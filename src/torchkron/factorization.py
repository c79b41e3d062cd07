"""Choosing factor shapes and approximating dense weights by Kronecker products.

Pure functions: integer factorisations of layer sizes (:func:`factor_shapes`,
:func:`factorizations`, :func:`layer_factorizations`) and the nearest Kronecker product
of a matrix in Frobenius norm (:func:`nearest_kronecker`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from torchkron.functional import kron_weight

__all__ = [
    "FactorShapes",
    "check_shapes",
    "factor_shapes",
    "factorizations",
    "format_primes",
    "layer_factorizations",
    "nearest_factorable",
    "nearest_kronecker",
    "prime_factors",
]

FactorShapes = list[tuple[int, int]]
"""Factor shapes ``[(out_1, in_1), ..., (out_k, in_k)]``, as ``nn.Linear`` orients them."""


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n >= 1`` with multiplicity, ascending (``[]`` for 1)."""
    if n < 1:
        raise ValueError(f"prime_factors: n must be a positive integer, got {n}.")
    out: list[int] = []
    p = 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


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
    options = list(factorizations(n, k))
    if not options:
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
    target = math.log(n) / k
    return min(options, key=lambda fs: (sum((math.log(f) - target) ** 2 for f in fs), fs))


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
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"factor_shapes: {name} must be a positive int, got {value!r}.")
    if not isinstance(num_factors, int) or num_factors < 1:
        raise ValueError(f"factor_shapes: num_factors must be a positive int, got {num_factors!r}.")
    outs = _balanced(out_features, num_factors, "out_features")
    ins = _balanced(in_features, num_factors, "in_features")
    return list(zip(outs, ins, strict=True))


def check_shapes(
    shapes: Sequence[tuple[int, int]], in_features: int, out_features: int, caller: str
) -> FactorShapes:
    """Validate explicit factor shapes against the layer sizes; return them as a list."""
    try:
        clean = [(int(o), int(n)) for o, n in shapes]
    except (TypeError, ValueError):
        raise ValueError(
            f"{caller}: shapes must be a list of (out_i, in_i) pairs of ints, got {shapes!r}."
        ) from None
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


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def _rearrange(weight: Tensor, o1: int, n1: int, o2: int, n2: int) -> Tensor:
    """Van Loan-Pitsianis rearrangement: ``A (x) B`` becomes ``vec(A) vec(B)^T``."""
    # W[(a1, a2), (b1, b2)] -> R[(a1, b1), (a2, b2)]
    return weight.reshape(o1, o2, n1, n2).permute(0, 2, 1, 3).reshape(o1 * n1, o2 * n2)


def nearest_kronecker(
    weight: Tensor, shapes: Sequence[tuple[int, int]], rank: int = 1
) -> tuple[list[Tensor], float]:
    """The sum of ``rank`` Kronecker products nearest to ``weight`` in Frobenius norm.

    For two factors this is the Van Loan-Pitsianis rearrangement followed by a truncated
    SVD, which is optimal (Eckart-Young) and exact once ``rank`` reaches the rank of the
    rearranged matrix. For ``k > 2`` factors it is a sequential SVD: the first factor is
    split off by an SVD, each remainder is split again, and the ``rank`` heaviest of the
    resulting mutually orthogonal Kronecker terms are kept (a beam of ``rank`` branches
    per level). That is exact on sums of Kronecker products whose expansion has at most
    ``rank`` terms, and the error never exceeds the dropped terms' weight; it is not
    guaranteed optimal for ``k > 2``, a problem that is NP-hard in general.

    The computation runs in float64 and the factors are returned in ``weight``'s dtype.

    Args:
        weight: ``(prod out_i, prod in_i)`` matrix.
        shapes: ``[(out_1, in_1), ..., (out_k, in_k)]``.
        rank: number of summed Kronecker terms ``R >= 1``.

    Returns:
        ``(factors, relative_error)``: factors in the ``(R, out_i, in_i)`` layout of
        :func:`torchkron.functional.kron_linear`, and ``||W - W_hat||_F / ||W||_F``
        (0 for a zero ``weight``).

    Examples:
        >>> a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
        >>> factors, err = nearest_kronecker(torch.kron(a, b), [(3, 4), (5, 6)])
        >>> err < 1e-12
        True
    """
    if weight.dim() != 2:
        raise ValueError(
            f"nearest_kronecker: weight must be a 2-D matrix, got shape {tuple(weight.shape)}."
        )
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"nearest_kronecker: rank must be an int >= 1, got {rank!r}.")
    out_features, in_features = (int(d) for d in weight.shape)
    clean = check_shapes(shapes, in_features, out_features, "nearest_kronecker")
    w64 = weight.detach().to(torch.float64)
    factors = _nearest(w64, clean, rank)
    approx = kron_weight(factors)
    norm = torch.linalg.matrix_norm(w64)
    err = float(torch.linalg.matrix_norm(w64 - approx) / norm) if norm > 0 else 0.0
    return [f.to(weight.dtype) for f in factors], err


def _nearest(weight: Tensor, shapes: FactorShapes, rank: int) -> list[Tensor]:
    """Sequential SVD with a beam of ``rank`` branches; returns ``(R, o_i, n_i)`` factors.

    Level ``i`` splits each kept remainder ``M`` into ``sum_j s_j U_j (x) M_j`` by the SVD
    of its rearrangement (orthonormal ``U_j``, ``M_j``). Every leaf of that tree is one
    Kronecker product, the leaves are mutually orthogonal, and a leaf's weight is the
    product of the singular values on its path, so keeping the ``rank`` heaviest leaves
    leaves exactly the dropped weights as error. With two factors this is the truncated
    SVD of the Van Loan-Pitsianis rearrangement, which is optimal.
    """
    k = len(shapes)
    # (weight, factors so far, remainder to split with the remaining shapes)
    beam: list[tuple[float, list[Tensor], Tensor]] = [(1.0, [], weight)]
    for level, (o, n) in enumerate(shapes[:-1]):
        rest = shapes[level + 1 :]
        o_rest, n_rest = math.prod(a for a, _ in rest), math.prod(b for _, b in rest)
        candidates: list[tuple[float, list[Tensor], Tensor]] = []
        for scale, prefix, remainder in beam:
            u, s, vh = torch.linalg.svd(
                _rearrange(remainder, o, n, o_rest, n_rest), full_matrices=False
            )
            for j in range(min(rank, s.numel())):
                if s[j] <= 0:
                    break
                head = u[:, j].reshape(o, n)
                candidates.append(
                    (scale * float(s[j]), [*prefix, head], vh[j].reshape(o_rest, n_rest))
                )
        candidates.sort(key=lambda c: -c[0])
        beam = candidates[:rank]
    factors = [weight.new_zeros(rank, o, n) for o, n in shapes]
    for r, (scale, prefix, last) in enumerate(beam):
        # Spread the weight evenly over the factors (each path matrix has unit norm).
        root = scale ** (1.0 / k)
        for i, mat in enumerate([*prefix, last]):
            factors[i][r] = root * mat
    return factors
