"""The experiment's variants: weight counts the harness must print exactly."""

from __future__ import annotations

import pytest
import torch

from torchkron import KronLinear
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.mnist.variants import build_mlp, get_variant, reproduction_variants

EXPECTED = {
    "original": 496_250,
    "one-kron-mat": 6_950,
    "two-kron-mat": 7_650,
    "one-kron-mat-out-kron": 875,
    "two-kron-mat-out-kron": 1_575,
    "dense-h9": 7_146,
    "dense-h10": 7_940,
    "dense-h1": 794,
    "dense-h2": 1_588,
}


def test_reproduction_variants_and_weight_counts():
    specs = reproduction_variants()
    assert [s.name for s in specs] == list(EXPECTED)
    for spec in specs:
        assert spec.weights() == EXPECTED[spec.name]
        model = build_mlp(spec)
        # Count distinct weight tensors (biases excluded; a tied factor once).
        counted = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("bias"))
        assert counted == EXPECTED[spec.name], spec.name


def test_dense_baselines_match_by_rounding_weights_over_794():
    specs = {s.name: s for s in reproduction_variants()}
    for name in ("dense-h9", "dense-h10", "dense-h1", "dense-h2"):
        matched = specs[specs[name].extra["matches"]]
        assert round(matched.weights() / 794) == int(name.removeprefix("dense-h"))


def test_layers_are_the_seed_ones():
    model = build_mlp(get_variant("one-kron-mat-out-kron"))
    assert isinstance(model.hidden, KronLinear)
    assert model.hidden.tied
    assert model.hidden.shapes == ((25, 28), (25, 28))
    assert isinstance(model.output, KronLinear)
    assert model.output.shapes == ((5, 25), (2, 25))
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(3))


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(
        UserError, match=r"Unknown variant 'three-kron'; choose one of: original, one-kron-mat"
    ):
        get_variant("three-kron")
    assert get_variant("dense-h42").weights() == 42 * 794
