"""Factor shapes, factorisations and the nearest Kronecker product."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.reference import random_factors, reference_weight

from torchkron.factorization import (
    factor_shapes,
    factorizations,
    layer_factorizations,
    nearest_factorable,
    nearest_kronecker,
    prime_factors,
)
from torchkron.factorization._nearest import _rearrange


def test_factor_shapes_seed_examples():
    assert factor_shapes(784, 625) == [(25, 28), (25, 28)]
    assert factor_shapes(625, 10) == [(5, 25), (2, 25)]
    assert factor_shapes(4096, 4096, 3) == [(16, 16)] * 3
    assert factor_shapes(784, 625, 4) == [(5, 7), (5, 7), (5, 4), (5, 4)]
    assert factor_shapes(10, 7, 1) == [(7, 10)]


@given(n=st.integers(2, 3000), k=st.integers(1, 4))
def test_factor_shapes_products_and_balance(n, k):
    if len(prime_factors(n)) < k:
        with pytest.raises(ValueError, match="cannot split"):
            factor_shapes(n, n, k)
        return
    shapes = factor_shapes(n, n, k)
    assert math.prod(o for o, _ in shapes) == n
    assert math.prod(i for _, i in shapes) == n
    # No other split of n into k factors > 1 is more balanced.
    target = math.log(n) / k
    score = sum((math.log(i) - target) ** 2 for _, i in shapes)
    for option in factorizations(n, k):
        assert score <= sum((math.log(f) - target) ** 2 for f in option) + 1e-12


def test_factor_shapes_prime_error_names_fix():
    msg = (
        r"factor_shapes: cannot split in_features=13 into 2 factors greater than 1: 13 is "
        r"prime\. Use fewer factors \(num_factors=1\), resize the layer to a size that splits "
        r"\(nearest: 12 = 2\^2 \* 3, 14 = 2 \* 7, 15 = 3 \* 5\), or pass explicit shapes"
    )
    with pytest.raises(ValueError, match=msg):
        factor_shapes(13, 16, 2)
    with pytest.raises(
        ValueError, match=r"out_features=12 into 4 factors .* 12 = 2\^2 \* 3 has only 3 prime"
    ):
        factor_shapes(16, 12, 4)
    with pytest.raises(ValueError, match=r"num_factors must be a positive int, got 0"):
        factor_shapes(16, 16, 0)


def _brute_factorizations(n, k):
    found = set()
    divisors = [d for d in range(2, n + 1) if n % d == 0]
    for combo in itertools.product(divisors, repeat=k):
        if math.prod(combo) == n:
            found.add(tuple(sorted(combo, reverse=True)))
    return found


@pytest.mark.parametrize("n", [1, 2, 12, 36, 64, 97, 210])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_factorizations_match_brute_force(n, k):
    assert set(factorizations(n, k)) == _brute_factorizations(n, k)


def _brute_layer(in_f, out_f, k):
    def splits(n):
        ds = [d for d in range(1, n + 1) if n % d == 0]
        return [c for c in itertools.product(ds, repeat=k) if math.prod(c) == n]

    found = set()
    for outs in splits(out_f):
        for ins in splits(in_f):
            pairs = list(zip(outs, ins, strict=False))
            if all(o * i > 1 for o, i in pairs):
                found.add(tuple(sorted(pairs, reverse=True)))
    return found


@pytest.mark.parametrize(("in_f", "out_f"), [(12, 6), (8, 9), (7, 10), (16, 16)])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_layer_factorizations_match_brute_force(in_f, out_f, k):
    got = [tuple(s) for s in layer_factorizations(in_f, out_f, k)]
    assert len(got) == len(set(got))
    assert set(got) == _brute_layer(in_f, out_f, k)


def test_nearest_factorable():
    assert nearest_factorable(13, 2) == [12, 14, 15]
    assert all(len(prime_factors(m)) >= 3 for m in nearest_factorable(31, 3))


# For k > 2 a sum of R products can expand into more than R orthogonal terms, so
# exactness at the same rank is claimed for two factors, or for one product.
@pytest.mark.parametrize(
    ("shapes", "rank"),
    [
        ([(3, 4), (5, 2)], 1),
        ([(3, 4), (5, 2)], 3),
        ([(2, 3), (3, 2), (2, 2)], 1),
        ([(2, 2), (1, 3), (3, 1), (2, 2)], 1),
    ],
)
def test_nearest_kronecker_exact_on_kronecker_matrices(shapes, rank):
    factors = random_factors(shapes, rank, seed=7)
    w = reference_weight(factors)
    approx, err = nearest_kronecker(w, shapes, rank)
    assert err < 1e-12
    assert [tuple(f.shape) for f in approx] == [(rank, o, n) for o, n in shapes]
    torch.testing.assert_close(reference_weight(approx), w, rtol=1e-10, atol=1e-10)


def test_nearest_kronecker_error_is_singular_value_tail_and_non_increasing():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 20, generator=g, dtype=torch.float64)
    shapes = [(3, 4), (4, 5)]
    s = torch.linalg.svdvals(_rearrange(w, 3, 4, 4, 5))
    errors = []
    for rank in range(1, 13):
        factors, err = nearest_kronecker(w, shapes, rank)
        tail = math.sqrt(float((s[rank:] ** 2).sum() / (s**2).sum()))
        assert err == pytest.approx(tail, abs=1e-10)
        direct = torch.linalg.matrix_norm(w - reference_weight(factors)) / torch.linalg.matrix_norm(
            w
        )
        assert err == pytest.approx(float(direct), abs=1e-12)
        errors.append(err)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1e-12  # rank 12 = the rearranged matrix's rank: exact


def test_nearest_kronecker_three_factors_non_increasing():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 8, generator=g, dtype=torch.float64)
    errs = [nearest_kronecker(w, [(2, 2)] * 3, r)[1] for r in range(1, 17)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(errs))
    assert errs[0] > 0.5
    assert errs[-1] < 1e-10  # 4 x 4 orthogonal terms: rank 16 is exact


def test_nearest_kronecker_three_factors_recovers_sum_with_enough_rank():
    factors = random_factors([(2, 3), (3, 2), (2, 2)], 2, seed=5)
    w = reference_weight(factors)
    assert nearest_kronecker(w, [(2, 3), (3, 2), (2, 2)], 4)[1] < 1e-12


def test_nearest_kronecker_keeps_dtype_and_handles_zero():
    factors, err = nearest_kronecker(torch.zeros(4, 6), [(2, 3), (2, 2)])
    assert err == 0.0
    assert factors[0].dtype == torch.float32


def test_nearest_kronecker_errors():
    with pytest.raises(
        ValueError, match=r"nearest_kronecker: shapes \[\(3, 4\), \(5, 5\)\] give a 20 -> 15 layer"
    ):
        nearest_kronecker(torch.zeros(12, 20), [(3, 4), (5, 5)])
    with pytest.raises(ValueError, match=r"rank must be an int >= 1, got 0"):
        nearest_kronecker(torch.zeros(4, 4), [(2, 2), (2, 2)], 0)
    with pytest.raises(ValueError, match=r"weight must be a 2-D matrix, got shape \(4,\)"):
        nearest_kronecker(torch.zeros(4), [(2, 2)])
