"""The --permute-pixels control: one fixed bijection, applied identically to both splits."""

from __future__ import annotations

import pytest
import torch
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.data.mnist import load_mnist
from torchkron.experiments.data.permute import (
    permute_pixels,
    pixel_permutation,
    unpermute_pixels,
)
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.trainer import prepare_data


def test_permutation_is_a_bijection_and_deterministic_from_its_seed():
    perm = pixel_permutation(7, 784)
    assert perm.dtype == torch.int64
    assert perm.shape == (784,)
    assert torch.equal(torch.sort(perm).values, torch.arange(784))  # a bijection
    assert torch.equal(perm, pixel_permutation(7, 784))  # same seed, same permutation
    assert not torch.equal(perm, pixel_permutation(8, 784))
    assert (perm != torch.arange(784)).sum() > 700  # it really moves pixels


def test_permutation_ignores_the_global_rng():
    torch.manual_seed(0)
    a = pixel_permutation(3, 784)
    torch.manual_seed(1)
    torch.rand(5)
    assert torch.equal(a, pixel_permutation(3, 784))


def test_permute_then_unpermute_is_the_identity():
    x = torch.randn(5, 784)
    perm = pixel_permutation(1, 784)
    moved = permute_pixels(x, perm)
    assert torch.equal(moved[:, 10], x[:, perm[10]])
    assert torch.equal(unpermute_pixels(moved, perm), x)


def test_permutation_of_wrong_size_and_negative_seed_are_refused():
    with pytest.raises(ValueError, match="images have 784 pixels but the permutation has 10"):
        permute_pixels(torch.zeros(2, 784), pixel_permutation(0, 10))
    with pytest.raises(ValueError, match="seed must be 0 or more, got -1"):
        pixel_permutation(-1, 10)


def test_prepare_data_permutes_train_and_test_identically(tmp_path):
    data = load_mnist(write_synthetic_mnist(tmp_path), download=False)
    plain = prepare_data(data, TrainConfig())
    permuted = prepare_data(data, TrainConfig(permute_pixels=5))
    perm = pixel_permutation(5, 784)
    for split in ("train_x", "test_x"):
        a, b = getattr(plain, split), getattr(permuted, split)
        assert torch.equal(b, a[:, perm]), split
        assert not torch.equal(a, b)
    assert torch.equal(plain.train_y, permuted.train_y)
    assert torch.equal(plain.test_y, permuted.test_y)
