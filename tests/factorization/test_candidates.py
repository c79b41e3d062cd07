"""The factorisation candidates of a layer (:mod:`torchkron.factorization.candidates`),
checked against brute force."""

from __future__ import annotations

import itertools
import math

import pytest

from torchkron.factorization.candidates import (
    _balanced,
    _min_flops,
    _row,
    _sort_key,
    count_candidates,
    layer_candidates,
    split_shapes,
)
from torchkron.functional import kron_flops


def _brute(in_f: int, out_f: int, k: int, *, allow_ones: bool) -> set[tuple[tuple[int, int], ...]]:
    """Every k-tuple of (out_i, in_i) with the right products, up to factor order."""
    low = 1 if allow_ones else 2

    def splits(n: int) -> list[tuple[int, ...]]:
        divisors = [d for d in range(low, n + 1) if n % d == 0]
        return [c for c in itertools.product(divisors, repeat=k) if math.prod(c) == n]

    found = set()
    for outs in splits(out_f):
        for ins in splits(in_f):
            pairs = list(zip(outs, ins, strict=True))
            if all(o * n > 1 for o, n in pairs):
                found.add(tuple(sorted(pairs, reverse=True)))
    return found


SIZES = [(12, 8), (16, 9), (30, 12), (36, 36), (7, 10), (8, 1), (24, 16)]


@pytest.mark.parametrize(("in_f", "out_f"), SIZES)
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("allow_ones", [False, True])
def test_split_shapes_match_brute_force(in_f, out_f, k, allow_ones):
    got = split_shapes(in_f, out_f, k, allow_ones=allow_ones)
    assert len(got) == len(set(got))
    assert set(got) == _brute(in_f, out_f, k, allow_ones=allow_ones)


@pytest.mark.parametrize(("in_f", "out_f"), SIZES)
def test_plan_rows_are_every_factorisation_once_sorted_by_weights(in_f, out_f):
    plan = layer_candidates(in_f, out_f, 4)
    expected = {((out_f, in_f),)}
    for k in (2, 3, 4):
        expected |= _brute(in_f, out_f, k, allow_ones=False)
    shapes = [r.shapes for r in plan.rows]
    assert len(shapes) == len(expected)
    assert set(shapes) == expected
    keys = [(r.weights, r.factors) for r in plan.rows]
    assert keys == sorted(keys)


def test_plan_of_the_seed_layer():
    plan = layer_candidates(784, 625, 4)
    per_k = {k: [r for r in plan.rows if r.factors == k] for k in (1, 2, 3, 4)}
    assert {k: len(rows) for k, rows in per_k.items()} == {1: 1, 2: 20, 3: 26, 4: 7}
    seed = next(r for r in plan.rows if r.shapes == ((25, 28), (25, 28)))
    assert (seed.weights, seed.flops, seed.tieable, seed.balanced) == (1400, 74_200, True, True)
    assert seed.compression == 350.0
    # 625 = 5^4: every 4-factor split has out-sizes 5, 5, 5, 5 and pairs them with the
    # seven ways to split 784 = 2^4 * 7^2 into four factors.
    assert {tuple(o for o, _ in r.shapes) for r in per_k[4]} == {(5, 5, 5, 5)}
    assert sorted(tuple(sorted(n for _, n in r.shapes)) for r in per_k[4]) == [
        (2, 2, 2, 98),
        (2, 2, 4, 49),
        (2, 2, 7, 28),
        (2, 2, 14, 14),
        (2, 4, 7, 14),
        (2, 7, 7, 8),
        (4, 4, 7, 7),
    ]
    assert [r.shapes for r in plan.rows if r.balanced] == [
        ((5, 7), (5, 7), (5, 4), (5, 4)),
        ((25, 14), (5, 8), (5, 7)),
        ((25, 28), (25, 28)),
        ((625, 784),),
    ]
    assert [r.shapes for r in plan.rows if r.tieable and r.factors > 1] == [((25, 28), (25, 28))]
    assert plan.rows[0].weights == 110
    assert plan.rows[-1].shapes == ((625, 784),)
    assert plan.notes == ()


def test_rank_and_tying_scale_weights_and_flops():
    plan = layer_candidates(784, 625, 2, rank=3, tied=True)
    assert [(r.shapes, r.weights) for r in plan.rows] == [
        (((25, 28), (25, 28)), 3 * 700),
        (((625, 784),), 490_000),  # one factor is the dense layer itself
    ]
    assert plan.rows[0].flops == kron_flops([25, 25], [28, 28], 3)
    untied = layer_candidates(784, 625, 2, rank=3)
    row = next(r for r in untied.rows if r.shapes == ((125, 7), (5, 112)))
    assert row.weights == 3 * (125 * 7 + 5 * 112)
    assert row.flops == kron_flops([125, 5], [7, 112], 3)
    assert row.compression == 490_000 / row.weights


def test_sizes_that_do_not_split_name_the_nearest_that_do():
    plan = layer_candidates(607, 10, 3)
    assert [r.shapes for r in plan.rows] == [((10, 607),)]
    assert plan.notes == (
        "in_features 607 (prime) splits into at most 1 factor(s) > 1; nearest sizes that "
        "split into 2: 605 = 5 * 11^2, 606 = 2 * 3 * 101, 608 = 2^5 * 19.",
        "out_features 10 (2 * 5) splits into at most 2 factor(s) > 1; nearest sizes that "
        "split into 3: 8 = 2^3, 12 = 2^2 * 3, 16 = 2^4.",
    )
    tied = layer_candidates(12, 10, 2, tied=True)
    assert tied.notes[-1].startswith("No factorisation into 2 or more equal factors")


@pytest.mark.parametrize(("in_f", "out_f"), [(720, 360), (1024, 1024), (210, 2310)])
@pytest.mark.parametrize("allow_ones", [False, True])
def test_counts_and_top_rows_match_full_enumeration(in_f, out_f, allow_ones):
    full = sorted(
        (
            _row(s, in_f * out_f, 2, False, _balanced(in_f, out_f, k))
            for k in range(1, 5)
            for s in split_shapes(in_f, out_f, k, allow_ones=allow_ones)
        ),
        key=_sort_key,
    )
    assert count_candidates(in_f, out_f, 4, allow_ones=allow_ones) == len(full)
    plan = layer_candidates(in_f, out_f, 4, rank=2, allow_ones=allow_ones, top=40)
    assert plan.total_rows == len(full)
    assert list(plan.rows) == full[:40]
    assert plan.truncated
    assert plan.exhaustive


def test_highly_composite_sizes_are_counted_and_the_best_found():
    assert count_candidates(720720, 720720, 4) == 166_782_267
    plan = layer_candidates(720720, 720720, 4, top=3)
    assert (plan.total_rows, len(plan.rows), plan.exhaustive) == (166_782_267, 3, True)
    assert [(r.shapes, r.weights) for r in plan.rows] == [
        (((429, 2), (420, 2), (2, 429), (2, 420)), 3396),
        (((429, 2), (280, 3), (3, 280), (2, 429)), 3396),
        (((429, 2), (280, 3), (3, 286), (2, 420)), 3396),
    ]


def test_largest_32_bit_sizes_answer():
    # 3491888400 has 1344 divisors, the most of any 32-bit number.
    plan = layer_candidates(3491888400, 3491888400, 4, top=1)
    assert plan.total_rows == 1_663_792_294_887
    assert plan.rows[0].shapes == ((29640, 2), (19635, 3), (3, 19635), (2, 29640))
    for n in (2**31 - 1, 4294967291):  # a Mersenne prime and the largest 32-bit prime
        plan = layer_candidates(n, 720720, 4)
        assert plan.total_rows == 1
        assert [r.shapes for r in plan.rows] == [((720720, n),)]


def test_dp_flops_equal_kron_flops():
    for outs, ins in [((25, 25), (28, 28)), ((2, 3, 4), (5, 1, 7)), ((3, 2, 2, 5), (2, 7, 3, 2))]:
        assert _min_flops(outs, ins, 3) == kron_flops(list(outs), list(ins), 3)
