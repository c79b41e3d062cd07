"""The free hidden-unit permutation of an MLP block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchkron.factorization import hidden_permutation, nearest_kronecker, permute_hidden

D = torch.float64
S1 = [(8, 6), (4, 5)]  # fc1: 30 -> 32 hidden units
S2 = [(5, 8), (3, 4)]  # fc2: 32 -> 15


def _planted(seed: int, swaps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An MLP whose layers are exact Kronecker products once the hidden units are put
    back in order: the planted order is scrambled by ``swaps`` transpositions."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.kron(
        torch.randn(8, 6, generator=gen, dtype=D), torch.randn(4, 5, generator=gen, dtype=D)
    )
    w2 = torch.kron(
        torch.randn(5, 8, generator=gen, dtype=D), torch.randn(3, 4, generator=gen, dtype=D)
    )
    p = torch.arange(32)
    pairs = torch.randperm(32, generator=gen)[: 2 * swaps].reshape(swaps, 2)
    for i, j in pairs.tolist():
        p[[i, j]] = p[[j, i]]
    return w1[p], torch.randn(32, generator=gen, dtype=D)[p], w2[:, p]


def test_permutation_recovers_a_planted_kronecker_order():
    w1, b1, w2 = _planted(0, swaps=3)
    perm, before, after = hidden_permutation(w1, w2, S1, S2)
    assert before > 0.05  # scrambled: both layers are far from Kronecker
    assert after < 1e-20  # the planted order (up to a Kronecker symmetry) is found
    p1, _, p2 = permute_hidden(w1, b1, w2, perm)
    assert nearest_kronecker(p1, S1)[1] < 1e-10
    assert nearest_kronecker(p2, S2)[1] < 1e-10


def test_permutation_preserves_the_function_exactly():
    w1, b1, w2 = _planted(1, swaps=10)
    perm, before, after = hidden_permutation(w1, w2, S1, S2)
    assert after < before
    p1, pb1, p2 = permute_hidden(w1, b1, w2, perm)
    x = torch.randn(7, 30, dtype=D)
    assert pb1 is not None
    torch.testing.assert_close(
        F.gelu(x @ p1.mT + pb1) @ p2.mT, F.gelu(x @ w1.mT + b1) @ w2.mT, rtol=1e-14, atol=1e-14
    )


def test_permutation_never_worsens_random_weights():
    gen = torch.Generator().manual_seed(2)
    w1, w2 = (
        torch.randn(32, 30, generator=gen, dtype=D),
        torch.randn(15, 32, generator=gen, dtype=D),
    )
    perm, before, after = hidden_permutation(w1, w2, S1, S2, rank=2)
    assert sorted(perm.tolist()) == list(range(32))
    assert after <= before


def test_bad_permutation_inputs_raise():
    with pytest.raises(
        ValueError, match=r"w1 must be \(h, d\) and w2 \(d_out, h\) with the same h"
    ):
        hidden_permutation(torch.zeros(32, 30), torch.zeros(15, 31), S1, S2)
    with pytest.raises(ValueError, match=r"perm must be a permutation of the 4 hidden units"):
        permute_hidden(torch.zeros(4, 3), None, torch.zeros(2, 4), torch.tensor([0, 0, 1, 2]))
