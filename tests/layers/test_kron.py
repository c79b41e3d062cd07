"""KronLinear: equivalence, init, tying, conversion, serialisation, compile/export."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.reference import reference_weight
from torch import nn

from torchkron import KronLinear


# Random shapes often have a maximal rank below 3 (e.g. a 1 x 1 factor): that warns.
@pytest.mark.filterwarnings("ignore:KronLinear. rank=.* is above the largest useful rank")
@given(
    shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=4),
    rank=st.integers(1, 3),
    tied=st.booleans(),
    lead=st.lists(st.integers(0, 3), max_size=2),
    seed=st.integers(0, 2**16),
)
def test_forward_matches_materialised_weight(shapes, rank, tied, lead, seed):
    if tied:
        shapes = [shapes[0]] * len(shapes)
    n_in = math.prod(n for _, n in shapes)
    n_out = math.prod(o for o, _ in shapes)
    torch.manual_seed(seed)
    layer = KronLinear(n_in, n_out, shapes=shapes, rank=rank, tied=tied, dtype=torch.float64)
    w = reference_weight(layer.factors)
    torch.testing.assert_close(layer.weight, w, rtol=0, atol=1e-12)
    x = torch.randn(*lead, n_in, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-10, atol=1e-10)


def test_plain_int_sizes_and_parameter_names():
    layer = KronLinear(784, 625)
    assert type(layer.in_features) is int
    assert type(layer.out_features) is int
    assert layer.shapes == ((25, 28), (25, 28))
    assert [n for n, _ in layer.named_parameters()] == ["factor_0", "factor_1", "bias"]
    assert [tuple(f.shape) for f in layer.factors] == [(1, 25, 28), (1, 25, 28)]
    tied = KronLinear(784, 625, tied=True, bias=False)
    assert [n for n, _ in tied.named_parameters()] == ["tied_factor"]
    assert tied.bias is None


def test_weight_counts_of_the_seed():
    assert KronLinear(784, 625, shapes=[(25, 28), (25, 28)], tied=True).num_weights() == 700
    assert KronLinear(784, 625).num_weights() == 1400
    assert KronLinear(625, 10, shapes=[(5, 25), (2, 25)]).num_weights() == 175
    assert KronLinear(4096, 4096, num_factors=3, rank=4).num_weights() == 4 * 3 * 16 * 16


def test_tied_is_one_parameter_with_gradient_from_every_position():
    torch.manual_seed(0)
    layer = KronLinear(9, 4, shapes=[(2, 3)] * 2, tied=True, dtype=torch.float64)
    f = layer.factors
    assert f[0] is f[1] is layer.tied_factor
    assert sum(p.numel() for p in layer.parameters()) == 6 + 4  # U and bias
    x = torch.randn(5, 9, dtype=torch.float64)
    layer(x).sum().backward()
    # Autograd on the explicit form U (x) V evaluated at V = U must give dU + dV.
    u = layer.tied_factor.detach().clone().requires_grad_()
    v = layer.tied_factor.detach().clone().requires_grad_()
    (x @ torch.kron(u[0], v[0]).T + layer.bias.detach()).sum().backward()
    torch.testing.assert_close(layer.tied_factor.grad, u.grad + v.grad)
    assert u.grad.abs().sum() > 0
    assert v.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("in_f", "out_f", "kwargs"),
    [
        (784, 625, {}),
        (784, 625, {"tied": True}),
        (64, 64, {"num_factors": 3, "rank": 4}),
        (64, 81, {"num_factors": 4, "rank": 2}),
        (100, 10, {"shapes": [(10, 100)], "rank": 3}),
    ],
)
@pytest.mark.filterwarnings("ignore:KronLinear. rank=3 is above the largest useful rank 1")
def test_init_variance_matches_nn_linear(in_f, out_f, kwargs):
    # Pool every weight entry over many seeds; nn.Linear's default has var 1 / (3 in).
    # Small layers have few random numbers per seed, so they need more seeds.
    samples = []
    for seed in range(20 if in_f * out_f > 10_000 else 400):
        torch.manual_seed(seed)
        samples.append(KronLinear(in_f, out_f, **kwargs).weight.detach().flatten())
    w = torch.cat(samples).double()
    target = 1.0 / (3 * in_f)
    assert w.var().item() == pytest.approx(target, rel=0.1)
    assert abs(w.mean().item()) < 0.1 * math.sqrt(target)
    torch.manual_seed(0)
    dense = torch.cat([nn.Linear(in_f, out_f).weight.detach().flatten() for _ in range(5)])
    assert dense.double().var().item() == pytest.approx(target, rel=0.05)


def test_from_linear_and_to_linear_round_trip():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    dense = nn.Linear(28, 15, dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(torch.kron(a, b))
    layer = KronLinear.from_linear(dense, shapes=[(5, 4), (3, 7)])
    assert layer.approximation_error < 1e-12
    x = torch.randn(9, 28, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x))
    back = layer.to_linear()
    assert isinstance(back, nn.Linear)
    assert back.weight.dtype == torch.float64
    torch.testing.assert_close(back(x), dense(x))
    torch.testing.assert_close(back.bias, dense.bias)


def test_from_linear_error_decreases_with_rank():
    torch.manual_seed(0)
    dense = nn.Linear(784, 625)
    errors = [KronLinear.from_linear(dense, rank=r).approximation_error for r in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_state_dict_round_trip():
    torch.manual_seed(0)
    for kwargs in ({}, {"tied": True}, {"rank": 3, "num_factors": 3, "bias": False}):
        src = KronLinear(64, 27, **kwargs) if "tied" not in kwargs else KronLinear(64, 64, **kwargs)
        buf = io.BytesIO()
        torch.save(src.state_dict(), buf)
        buf.seek(0)
        dst = type(src)(
            src.in_features,
            src.out_features,
            shapes=src.shapes,
            rank=src.rank,
            tied=src.tied,
            bias=src.bias is not None,
        )
        dst.load_state_dict(torch.load(buf, weights_only=True))
        x = torch.randn(3, src.in_features)
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_factory_kwargs_and_repr():
    layer = KronLinear(12, 6, shapes=[(3, 4), (2, 3)], rank=2, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in layer.parameters())
    assert repr(layer) == (
        "KronLinear(in_features=12, out_features=6, bias=True, factors=3x4 (x) 2x3, rank=2)"
    )
    assert "tied=True" in repr(KronLinear(16, 16, tied=True))


def test_bfloat16_forward_runs_and_matches_float32():
    torch.manual_seed(0)
    layer = KronLinear(784, 625)
    x = torch.randn(8, 784)
    ref = layer(x)
    out = layer.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 2e-2


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    layer = KronLinear(60, 24, shapes=[(2, 3), (3, 4), (4, 5)], rank=2)
    x = torch.randn(7, 60)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), layer(x))
    compiled_inductor = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled_inductor(x), layer(x), rtol=1e-5, atol=1e-5)


def test_torch_export():
    torch.manual_seed(0)
    layer = KronLinear(784, 625, tied=True)
    x = torch.randn(4, 784)
    exported = torch.export.export(layer, (x,))
    torch.testing.assert_close(exported.module()(x), layer(x))


def test_bad_arguments_name_the_problem_and_fix():
    with pytest.raises(
        ValueError,
        match=(
            r"KronLinear: shapes \[\(25, 28\), \(25, 27\)\] give a 756 -> 625 layer \(in-sizes "
            r"multiply to 756, out-sizes to 625\), but the layer is 784 -> 625\. Choose in-sizes "
            r"whose product is 784 and out-sizes whose product is 625"
        ),
    ):
        KronLinear(784, 625, shapes=[(25, 28), (25, 27)])
    with pytest.raises(
        ValueError,
        match=(
            r"KronLinear: tied=True needs every factor to have the same shape, got shapes "
            r"\[\(5, 25\), \(2, 25\)\]; use tied=False"
        ),
    ):
        KronLinear(625, 10, shapes=[(5, 25), (2, 25)], tied=True)
    with pytest.raises(ValueError, match=r"KronLinear: rank must be an int >= 1 .* got 0"):
        KronLinear(784, 625, rank=0)
    with pytest.raises(ValueError, match=r"KronLinear: in_features must be a positive int, got 0"):
        KronLinear(0, 625)
    with pytest.raises(ValueError, match=r"cannot split in_features=13 into 2 factors"):
        KronLinear(13, 16)
    layer = KronLinear(784, 625)
    with pytest.raises(
        ValueError,
        match=(
            r"KronLinear: expected input of shape \(\*, 784\), got \(2, 783\); the last "
            r"dimension must be in_features=784\."
        ),
    ):
        layer(torch.zeros(2, 783))
    with pytest.raises(TypeError, match=r"expected an nn.Linear, got ReLU"):
        KronLinear.from_linear(nn.ReLU())  # type: ignore[arg-type]
