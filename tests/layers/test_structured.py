"""LowRankLinear and MonarchLinear against dense float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkron import LowRankLinear, MonarchLinear


def _monarch_dense(layer: MonarchLinear) -> torch.Tensor:
    """The Monarch weight built entry by entry from the definition (Dao et al. 2022):
    out feature ``s * b + l`` = sum over intermediate ``i = r * b + l`` of
    ``blkdiag2[l, s, r] * (blkdiag1 applied to input block i // (m / b))``."""
    b, m = layer.nblocks, layer.mid_features
    n_in, n_out = layer.in_features, layer.out_features
    q, p = m // b, n_in // b
    first = torch.zeros(m, n_in, dtype=torch.float64)
    for k in range(b):
        first[k * q : (k + 1) * q, k * p : (k + 1) * p] = layer.blkdiag1[k].double()
    second = torch.zeros(n_out, m, dtype=torch.float64)
    s_size = n_out // b
    for lb in range(b):
        for s in range(s_size):
            for r in range(q):
                second[s * b + lb, r * b + lb] = layer.blkdiag2[lb, s, r].double()
    return second @ first


@pytest.mark.parametrize(("n_in", "n_out", "b"), [(16, 64, 4), (64, 16, 4), (12, 12, 3), (8, 8, 8)])
def test_monarch_matches_dense_reference(n_in: int, n_out: int, b: int) -> None:
    torch.manual_seed(0)
    layer = MonarchLinear(n_in, n_out, b, dtype=torch.float64)
    x = torch.randn(3, 5, n_in, dtype=torch.float64)
    ref = x @ _monarch_dense(layer).T + layer.bias
    torch.testing.assert_close(layer(x), ref)
    torch.testing.assert_close(layer.weight, _monarch_dense(layer))
    assert layer.num_weights() == min(n_in, n_out) * (n_in + n_out) // b


def test_monarch_is_a_permuted_block_diagonal_product() -> None:
    # 4 blocks of a 16x16 Monarch: each output depends on every input (full mixing
    # when b * b <= n), unlike one block-diagonal factor alone.
    layer = MonarchLinear(16, 16, 4, dtype=torch.float64)
    assert bool((layer.weight != 0).all())


def test_lowrank_matches_dense_reference() -> None:
    torch.manual_seed(0)
    layer = LowRankLinear(24, 40, rank=3, dtype=torch.float64)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    w = layer.u.double() @ layer.v.double().T
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias)
    torch.testing.assert_close(layer.weight, w)
    assert torch.linalg.matrix_rank(layer.weight).item() == 3
    assert layer.num_weights() == 3 * (24 + 40)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LowRankLinear(6, 8, rank=2, dtype=torch.float64),
        lambda: MonarchLinear(8, 4, 2, dtype=torch.float64),
        lambda: MonarchLinear(4, 8, 2, bias=False, dtype=torch.float64),
    ],
)
def test_gradcheck(make: object) -> None:
    torch.manual_seed(0)
    layer = make()  # type: ignore[operator]
    x = torch.randn(3, layer.in_features, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in layer.named_parameters())

    def f(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.func.functional_call(
            layer, dict(zip(names, ps, strict=True)), (x,)
        )
        return out

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize(
    "layer",
    [
        LowRankLinear(256, 512, rank=16),
        MonarchLinear(256, 512, 8),
        MonarchLinear(512, 256, 16),
        MonarchLinear(128, 512, 32),  # b * b > m: structural zeros, same mean variance
    ],
)
def test_init_matches_nn_linear_variance(layer: nn.Module) -> None:
    torch.manual_seed(0)
    var = float(layer.weight.detach().var())  # type: ignore[operator]
    target = 1.0 / (3.0 * layer.in_features)  # type: ignore[operator]
    assert var == pytest.approx(target, rel=0.1)


def test_state_dict_round_trip_and_repr() -> None:
    a, b = MonarchLinear(16, 32, 4), MonarchLinear(16, 32, 4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 16)
    torch.testing.assert_close(a(x), b(x))
    assert repr(a) == "MonarchLinear(in_features=16, out_features=32, nblocks=4, bias=True)"
    assert repr(LowRankLinear(3, 5, 2, bias=False)) == (
        "LowRankLinear(in_features=3, out_features=5, rank=2, bias=False)"
    )


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"^MonarchLinear: in_features=10 is not divisible by "):
        MonarchLinear(10, 8, 4)
    with pytest.raises(ValueError, match=r"^LowRankLinear: rank must be an int >= 1, got 0\.$"):
        LowRankLinear(4, 4, 0)
    with pytest.raises(ValueError, match=r"expected input of shape \(\*, 4\), got \(2, 5\)"):
        LowRankLinear(4, 4, 1)(torch.randn(2, 5))
