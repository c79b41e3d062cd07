"""kron_linear / kron_weight against the materialised torch.kron reference, in float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.reference import random_factors, reference_weight

from torchkron.functional import (
    contraction_order,
    dense_flops,
    kron_flops,
    kron_linear,
    kron_weight,
)
from torchkron.functional._plan import order_flops

shapes_st = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4)
lead_st = st.lists(st.integers(0, 3), min_size=0, max_size=2)


@given(shapes=shapes_st, rank=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_kron_weight_matches_torch_kron(shapes, rank, seed):
    factors = random_factors(shapes, rank, seed=seed)
    torch.testing.assert_close(kron_weight(factors), reference_weight(factors), rtol=0, atol=1e-12)


@given(shapes=shapes_st, rank=st.integers(1, 3), lead=lead_st, seed=st.integers(0, 2**16))
def test_kron_linear_matches_reference(shapes, rank, lead, seed):
    factors = random_factors(shapes, rank, seed=seed)
    w = reference_weight(factors)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*lead, w.shape[1], generator=g, dtype=torch.float64)
    bias = torch.randn(w.shape[0], generator=g, dtype=torch.float64)
    y = kron_linear(x, factors, bias)
    assert y.shape == (*lead, w.shape[0])
    torch.testing.assert_close(y, x @ w.T + bias, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("shapes", "rank"),
    [
        ([(3, 4)], 2),
        ([(2, 3), (4, 2)], 1),
        ([(2, 3), (4, 2)], 3),
        ([(2, 2), (3, 1), (1, 3)], 2),
        ([(2, 1), (1, 2), (2, 2), (3, 2)], 2),
    ],
)
def test_kron_linear_gradcheck(shapes, rank):
    factors = [f.requires_grad_() for f in random_factors(shapes, rank, seed=3)]
    n_in = math.prod(n for _, n in shapes)
    n_out = math.prod(o for o, _ in shapes)
    x = torch.randn(2, 3, n_in, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n_out, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b, *f: kron_linear(x, f, b), (x, bias, *factors))
    assert torch.autograd.gradgradcheck(lambda x, *f: kron_linear(x, f), (x, *factors))


def test_empty_batch_and_unbatched_input():
    factors = random_factors([(2, 3), (4, 5)], 2)
    w = reference_weight(factors)
    assert kron_linear(torch.zeros(0, 15, dtype=torch.float64), factors).shape == (0, 8)
    x = torch.randn(15, dtype=torch.float64)
    torch.testing.assert_close(kron_linear(x, factors), w @ x)


def test_contraction_order_is_flop_optimal():
    cases = [((25, 25), (28, 28), 1), ((5, 2), (25, 25), 1), ((2, 8, 3, 5), (7, 2, 9, 4), 3)]
    for outs, ins, rank in cases:
        best = min(
            order_flops(p, outs, ins, rank) for p in itertools.permutations(range(len(outs)))
        )
        assert order_flops(contraction_order(outs, ins, rank), outs, ins, rank) == best
    # Shrinking modes go first: 625 -> 10 contracts the 2x25 factor... whichever is cheaper.
    assert kron_flops((5, 2), (25, 25)) == min(
        order_flops(p, (5, 2), (25, 25), 1) for p in [(0, 1), (1, 0)]
    )


def test_flop_counts():
    assert dense_flops(784, 625) == 2 * 784 * 625
    # 784 -> 625 as (25x28)(x)(25x28): 28*28*25 + 28*25*25 MACs per row.
    assert kron_flops((25, 25), (28, 28)) == 2 * (28 * 28 * 25 + 28 * 25 * 25)


def test_bad_input_last_dimension():
    factors = random_factors([(25, 28), (25, 28)], 1)
    msg = (
        r"kron_linear: the input has shape \(4, 10\), but its last dimension must be "
        r"in_features=784 \(the product of the factors' in-sizes 28 x 28\); reshape the "
        r"input to \(\*, 784\) or use factors whose in-sizes multiply to 10\."
    )
    with pytest.raises(ValueError, match=msg):
        kron_linear(torch.zeros(4, 10, dtype=torch.float64), factors)


def test_bad_factors():
    with pytest.raises(ValueError, match=r"kron_linear: got no factors"):
        kron_linear(torch.zeros(2, 3), [])
    with pytest.raises(
        ValueError, match=r"factor 1 has shape \(3, 4\), but every factor must be 3-D"
    ):
        kron_linear(torch.zeros(2, 12), [torch.zeros(1, 2, 3), torch.zeros(3, 4)])
    with pytest.raises(ValueError, match=r"the factors' leading \(rank\) dimensions differ"):
        kron_linear(torch.zeros(2, 12), [torch.zeros(1, 2, 3), torch.zeros(2, 2, 4)])
    with pytest.raises(ValueError, match=r"bias has shape \(3,\), but it must be \(4,\)"):
        kron_linear(torch.zeros(2, 6), [torch.zeros(1, 2, 3), torch.zeros(1, 2, 2)], torch.zeros(3))
