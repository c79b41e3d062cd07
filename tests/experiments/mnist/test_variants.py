"""The experiment's variants: weight counts the harness must print exactly."""

from __future__ import annotations

import json

import pytest
import torch

from torchkron import KronLinear, LowRankLinear
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.layers import LinearSpec
from torchkron.experiments.mnist.variants import (
    LayerSpec,
    MLPSpec,
    build_mlp,
    get_variant,
    reproduction_variants,
)

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


# Specs as run files store them (results/mnist and results/sweep), written before the
# harness had one LinearSpec for both studies: the code must keep writing these bytes.
STORED_SEED_SPEC = (
    '{"name": "two-kron-mat-out-kron", "description": "as two-kron-mat, with the same '
    'out-kron", "hidden": {"in_features": 784, "out_features": 625, "shapes": [[25, 28], '
    '[25, 28]], "rank": 1, "tied": false}, "output": {"in_features": 625, "out_features": '
    '10, "shapes": [[5, 25], [2, 25]], "rank": 1, "tied": false}, "family": "seed", '
    '"order": 4, "extra": {}}'
)
STORED_LOWRANK_SPEC = (
    '{"name": "lowrank-r1-kronout", "description": "input-hidden = low-rank U V^T (625x1, '
    '784x1), hidden-output = U (x) V (5x25, 2x25)", "hidden": {"in_features": 784, '
    '"out_features": 625, "shapes": null, "rank": 1, "tied": false, "lowrank": 1}, '
    '"output": {"in_features": 625, "out_features": 10, "shapes": [[5, 25], [2, 25]], '
    '"rank": 1, "tied": false}, "family": "lowrank-kronout", "order": 9011, "extra": {}}'
)


def test_specs_write_the_stored_run_file_bytes():
    from torchkron.experiments.mnist.sweep import lowrank_config

    assert json.dumps(get_variant("two-kron-mat-out-kron").to_dict()) == STORED_SEED_SPEC
    assert json.dumps(lowrank_config(1, "kron", order=9011).to_dict()) == STORED_LOWRANK_SPEC


@pytest.mark.parametrize("stored", [STORED_SEED_SPEC, STORED_LOWRANK_SPEC])
def test_stored_specs_read_back_to_the_same_layers(stored):
    spec = MLPSpec.from_dict(json.loads(stored))
    assert json.dumps(spec.to_dict()) == stored
    model = build_mlp(spec)
    kinds = {"kron": KronLinear, "lowrank": LowRankLinear}
    for layer, module in ((spec.hidden, model.hidden), (spec.output, model.output)):
        assert isinstance(module, kinds[layer.linear.kind])
        assert (module.in_features, module.out_features) == (
            layer.in_features,
            layer.out_features,
        )


def test_layer_spec_is_sizes_plus_the_one_linear_spec():
    hidden = get_variant("one-kron-mat").hidden
    assert hidden.linear == LinearSpec("kron", shapes=((25, 28), (25, 28)), tied=True)
    assert hidden.describe() == "U (x) U (25x28, 25x28)"
    assert LayerSpec(784, 625).describe() == "dense 784x625"
    with pytest.raises(UserError, match=r"MNIST run files store dense, Kronecker and low-rank"):
        LayerSpec(784, 625, LinearSpec("monarch")).to_dict()
