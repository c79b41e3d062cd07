"""The harness's one LinearSpec: what it builds, counts and rejects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkron import KronLinear, LowRankLinear, MonarchLinear
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.layers import LinearSpec


def _stored_weights(module: nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not n.endswith("bias"))


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        (LinearSpec(), nn.Linear),
        (LinearSpec("kron", rank=2), KronLinear),
        (LinearSpec("kron", factors=3, rank=3), KronLinear),
        (LinearSpec("kron", shapes=((25, 28), (25, 28)), tied=True), KronLinear),
        (LinearSpec("kron", shapes=((5, 25), (2, 25)), rank=4), KronLinear),
        (LinearSpec("lowrank", rank=5), LowRankLinear),
        (LinearSpec("monarch", nblocks=4), MonarchLinear),
    ],
)
def test_build_makes_the_kind_and_weights_counts_what_it_stores(spec, cls):
    in_f, out_f = (784, 625) if spec.shapes == ((25, 28), (25, 28)) else (625, 10)
    if spec.shapes is None:
        in_f, out_f = 64, 128
    layer = spec.build(in_f, out_f)
    assert type(layer) is cls
    assert (layer.in_features, layer.out_features) == (in_f, out_f)
    assert _stored_weights(layer) == spec.weights(in_f, out_f)
    y = layer(torch.randn(3, in_f))
    assert y.shape == (3, out_f)


def test_build_passes_bias_device_and_dtype():
    for spec in (LinearSpec(), LinearSpec("kron"), LinearSpec("lowrank"), LinearSpec("monarch")):
        layer = spec.build(64, 128, bias=False, device="cpu", dtype=torch.float64)
        assert layer.bias is None
        assert {p.dtype for p in layer.parameters()} == {torch.float64}


def test_kron_layer_computes_the_materialised_kronecker_map():
    spec = LinearSpec("kron", shapes=((3, 2), (4, 5)), rank=2)
    layer = spec.build(10, 12, dtype=torch.float64)
    a, b = layer.factors
    w = sum(torch.kron(a[r], b[r]) for r in range(2))
    x = torch.randn(7, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-12, atol=1e-12)


def test_flops_per_kind():
    assert LinearSpec().flops(64, 128) == 2 * 64 * 128
    assert LinearSpec("lowrank", rank=3).flops(64, 128) == 2 * 3 * (64 + 128)
    monarch = LinearSpec("monarch", nblocks=4)
    assert monarch.flops(64, 128) == 2 * monarch.weights(64, 128)
    # Kronecker: the executed chain (cheaper than dense for these sizes)
    assert 0 < LinearSpec("kron").flops(64, 128) < 2 * 64 * 128


def test_explicit_shapes_are_normalised_and_set_the_factor_count():
    spec = LinearSpec("kron", shapes=[[2, 3], [4, 5], [1, 2]])  # as read from JSON
    assert spec.shapes == ((2, 3), (4, 5), (1, 2))
    assert spec.factors == 3
    assert spec == LinearSpec("kron", shapes=((2, 3), (4, 5), (1, 2)))
    assert spec.describe() == "Kronecker k=3 R=1"
    assert spec.stages() == 3
    assert spec.kron_shapes(30, 8) == [(2, 3), (4, 5), (1, 2)]


def test_bad_specs_say_what_is_wrong_and_what_to_do():
    with pytest.raises(UserError, match=r"Unknown layer kind 'sparse'; choose one of dense, kron"):
        LinearSpec("sparse")
    with pytest.raises(UserError, match=r"LinearSpec.rank must be >= 1, got 0"):
        LinearSpec("kron", rank=0)
    with pytest.raises(UserError, match=r"shapes are Kronecker factor shapes, but kind is "):
        LinearSpec("lowrank", shapes=((2, 2),))
    with pytest.raises(UserError, match=r"Tied Kronecker factors need equal factor shapes.*drop"):
        LinearSpec("kron", tied=True).build(128, 512)
    with pytest.raises(UserError, match=r"cannot be split into 9 Kronecker factors .*fewer"):
        LinearSpec("kron", factors=9).build(6, 6)
