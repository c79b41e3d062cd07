"""``init="per-factor"``: each factor drawn as a dense matrix of its own size (Qiu et al.)."""

from __future__ import annotations

import math

import pytest
import torch

from torchkron import KronLinear, LowRankLinear, MonarchLinear


def _std(t: torch.Tensor) -> float:
    return float(t.detach().double().std())


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        # sqrt(1 / fan_in) * min(1, sqrt(fan_out / fan_in)) * R ** (-1 / (2k))
        (
            lambda: KronLinear(1024, 1024, init="per-factor"),
            {"factor_0": 32**-0.5, "factor_1": 32**-0.5},
        ),
        (
            lambda: KronLinear(1024, 256, shapes=[(8, 32), (32, 32)], rank=4, init="per-factor"),
            {"factor_0": 32**-0.5 * 0.5 * 4**-0.25, "factor_1": 32**-0.5 * 4**-0.25},
        ),
        (lambda: KronLinear(1024, 1024, tied=True, init="per-factor"), {"tied_factor": 32**-0.5}),
        (
            lambda: LowRankLinear(1024, 2048, rank=64, init="per-factor"),
            {"v": 1 / 32 * 0.25, "u": 1 / 8},
        ),
        (
            lambda: MonarchLinear(1024, 512, nblocks=8, init="per-factor"),
            {"blkdiag1": 1 / math.sqrt(128) * math.sqrt(0.5), "blkdiag2": 1 / 8},
        ),
    ],
)
def test_each_factor_has_the_std_of_a_dense_matrix_of_its_size(make, expected):
    torch.manual_seed(0)
    layer = make()
    for name, std in expected.items():
        assert _std(getattr(layer, name)) == pytest.approx(std, rel=0.05), name
    for fan in layer.factor_fans():
        assert fan.per_factor_std() == pytest.approx(expected[fan.name])
    bound = 1 / math.sqrt(layer.in_features)  # the bias is nn.Linear's either way
    assert layer.bias.abs().max() <= bound


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_the_rank_sum_keeps_one_products_weight_scale(rank):
    # W = sum of R products of factors drawn at R ** (-1 / (2k)) each: var(W) = 1 / in.
    torch.manual_seed(0)
    layer = KronLinear(256, 256, rank=rank, init="per-factor", bias=False)
    assert _std(layer.weight) == pytest.approx(1 / 16, rel=0.1)


def test_reset_parameters_redraws_by_the_same_scheme():
    torch.manual_seed(0)
    layer = LowRankLinear(1024, 1024, rank=32, init="per-factor")
    before = layer.v.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.v)
    assert _std(layer.v) == pytest.approx(1 / 32 * math.sqrt(32 / 1024), rel=0.05)


def test_the_default_init_is_unchanged():
    torch.manual_seed(0)
    default = KronLinear(64, 64)
    torch.manual_seed(0)
    variance = KronLinear(64, 64, init="variance")
    assert default.init == "variance"
    assert torch.equal(default.factor_0, variance.factor_0)
    bound = math.sqrt(3.0) * default.factor_std()
    assert default.factor_0.abs().max() <= bound


@pytest.mark.parametrize(
    ("cls", "args"),
    [(KronLinear, (16, 16)), (LowRankLinear, (16, 16, 4)), (MonarchLinear, (16, 16, 4))],
)
def test_an_unknown_init_is_refused_with_the_choices(cls, args):
    with pytest.raises(
        ValueError,
        match=rf"{cls.__name__}: init must be one of 'variance', 'per-factor', got 'xavier'; "
        r"'variance' \(the default\) matches nn.Linear's output variance, 'per-factor' draws "
        r"each factor as a dense matrix of its own size.",
    ):
        cls(*args, init="xavier")
