"""The LoKr delta with ``recompute=True``: exact, differentiable twice, and keeping no
activation of its own for the backward (only the input, the factors, scale and mask)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkron.integrations.lokr import lokr_delta
from torchkron.integrations.lokr._recompute import _w2_first, kron_pair_linear

# (w1 shape, w2 shape): a FLOP tie (w2 contracted first), w2 cheaper first, w1 cheaper first.
SHAPES = {
    "tie": ((3, 3), (4, 4)),
    "w2 first": ((6, 2), (2, 5)),
    "w1 first": ((2, 5), (6, 2)),
}


def reference(x, w1, w2):
    """float64 ``x @ kron(w1, w2).T`` with the weight built."""
    return x @ torch.kron(w1, w2).T


def factors(name, dtype=torch.float64):
    (a, b), (c, d) = SHAPES[name]
    torch.manual_seed(0)
    w1 = torch.randn(a, b, dtype=dtype, requires_grad=True)
    w2 = torch.randn(c, d, dtype=dtype, requires_grad=True)
    return w1, w2


def test_the_shapes_cover_both_contraction_orders():
    assert [_w2_first(*factors(n)) for n in SHAPES] == [True, True, False]


@pytest.mark.parametrize("name", list(SHAPES))
def test_equals_float64_kron_and_passes_gradcheck_and_gradgradcheck(name):
    w1, w2 = factors(name)
    x = torch.randn(2, 3, w1.shape[1] * w2.shape[1], dtype=torch.float64, requires_grad=True)
    y = kron_pair_linear(x, w1, w2)
    assert y.shape == (2, 3, w1.shape[0] * w2.shape[0])
    torch.testing.assert_close(y, reference(x, w1, w2))
    torch.autograd.gradcheck(kron_pair_linear, (x, w1, w2))
    torch.autograd.gradgradcheck(kron_pair_linear, (x, w1, w2))


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("needs", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)])
def test_gradients_when_only_some_inputs_need_them(name, needs):
    w1, w2 = factors(name)
    x = torch.randn(4, w1.shape[1] * w2.shape[1], dtype=torch.float64)
    pairs = zip((x, w1, w2), needs, strict=True)
    inputs = [t.detach().requires_grad_(bool(need)) for t, need in pairs]
    g = torch.randn(4, w1.shape[0] * w2.shape[0], dtype=torch.float64)
    got = torch.autograd.grad(kron_pair_linear(*inputs), [t for t in inputs if t.requires_grad], g)
    want = torch.autograd.grad(reference(*inputs), [t for t in inputs if t.requires_grad], g)
    torch.testing.assert_close(got, want)


def saved_by_forward(fn):
    """Every tensor autograd saves while ``fn()`` runs (``saved_tensors_hooks``)."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def test_keeps_only_its_inputs_for_the_backward():
    w1, w2 = factors("tie", torch.float32)
    x = torch.randn(64, 12, requires_grad=True)
    _, saved = saved_by_forward(lambda: kron_pair_linear(x, w1, w2))
    assert len(saved) == 3
    assert {t.data_ptr() for t in saved} == {x.data_ptr(), w1.data_ptr(), w2.data_ptr()}


def lokr_layer(recompute: bool) -> tuple[nn.Module, int]:
    """An accelerated PEFT LoKr layer on a frozen 64 -> 64 linear, and the size of one
    row of the factored chain's state (``in_m * out_k``)."""
    pytest.importorskip("peft")
    from peft import LoKrConfig, get_peft_model

    from torchkron.integrations import peft as tkpeft
    from torchkron.integrations.lokr.accelerate_peft import _factors

    torch.manual_seed(0)
    pm = get_peft_model(
        nn.Sequential(nn.Linear(64, 64)), LoKrConfig(r=4, target_modules=["0"], init_weights=False)
    )
    tkpeft.accelerate(pm, recompute=recompute)
    layer = pm.base_model.model[0]
    w1, w2 = _factors(layer, "default")
    return pm, w1.shape[1] * w2.shape[0]


@pytest.mark.parametrize("rank_dropout", [0.0, 0.5])
def test_an_accelerated_layer_saves_no_activation_beyond_its_input(rank_dropout):
    rows = 256
    x = torch.randn(rows, 64, requires_grad=True)
    sizes = {}
    for recompute in (True, False):
        pm, state = lokr_layer(recompute)
        pm.base_model.model[0].rank_dropout["default"] = rank_dropout
        pm.train()
        y, saved = saved_by_forward(lambda pm=pm: pm(x))
        # Tensors with a number per row saved, other than the input (which the frozen
        # linear keeps) and the parameters (the frozen weight among them).
        kept = {x.data_ptr()} | {p.data_ptr() for p in pm.parameters()}
        own = [t for t in saved if t.numel() >= rows and t.data_ptr() not in kept]
        sizes[recompute] = [t.numel() for t in own]
        y.sum().backward()  # the saved tensors are enough for the backward
        assert x.grad is not None
    assert sizes[True] == []
    # Without recompute the chain keeps its (rows, in_m * out_k) state: the test can fail.
    assert sizes[False] == [rows * state]


def test_the_input_gradient_is_not_a_view():
    # A view keeps its base alive, so autograd could not add the frozen layer's gradient
    # into it in place and would allocate an input-sized sum at the backward's peak.
    w1, w2 = factors("tie", torch.float32)
    x = torch.randn(2, 8, 12, requires_grad=True)
    y = kron_pair_linear(x, w1, w2)
    seen = []
    y.grad_fn.register_hook(lambda grad_inputs, _: seen.extend(grad_inputs))
    y.sum().backward()
    assert seen[0].shape == x.shape
    assert not seen[0]._is_view()
    torch.testing.assert_close(x.grad, torch.ones_like(y) @ torch.kron(w1, w2).detach())


def test_autocast_computes_in_the_low_dtype_with_gradients_in_their_own():
    w1, w2 = factors("w1 first", torch.float32)
    x = torch.randn(5, w1.shape[1] * w2.shape[1], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kron_pair_linear(x, w1, w2)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == w1.grad.dtype == w2.grad.dtype == torch.float32
    exact = reference(x.double(), w1.double(), w2.double())
    assert ((y.double() - exact).norm() / exact.norm()).item() < 2e-2


def test_torch_func_and_compile():
    w1, w2 = factors("w2 first", torch.float32)
    x = torch.randn(3, 4, w1.shape[1] * w2.shape[1])
    per_row = torch.func.vmap(lambda row: kron_pair_linear(row, w1, w2))(x)
    torch.testing.assert_close(per_row, reference(x, w1, w2))
    grad_w1 = torch.func.grad(lambda w: kron_pair_linear(x, w, w2).square().sum())(w1)
    torch.testing.assert_close(
        grad_w1, torch.func.grad(lambda w: reference(x, w, w2).square().sum())(w1)
    )
    compiled = torch.compile(lambda x, a, b: lokr_delta(x, a, b, scale=0.5), fullgraph=True)
    xg = x.clone().requires_grad_(True)
    got = torch.autograd.grad(compiled(xg, w1, w2).sum(), (xg, w1, w2))
    want = torch.autograd.grad(0.5 * reference(xg, w1, w2).sum(), (xg, w1, w2))
    torch.testing.assert_close(got, want)


def test_errors_name_the_problem_and_the_fix():
    w1, w2 = factors("tie", torch.float32)
    with pytest.raises(ValueError, match=r"lokr_delta: x has 9 features, but kron\(w1, w2\) "):
        kron_pair_linear(torch.randn(2, 9), w1, w2)
    with pytest.raises(ValueError, match=r"pass an input of shape \(\*, 12\)\."):
        kron_pair_linear(torch.randn(2, 9), w1, w2)
    with pytest.raises(ValueError, match=r"x \(torch.float64\) and the factors .* share a dtype"):
        kron_pair_linear(torch.randn(2, 12, dtype=torch.float64), w1, w2)


@pytest.mark.parametrize("impl", ["fused", "permute"])
def test_other_impls_recompute_under_checkpoint_with_the_same_result(impl):
    w1, w2 = factors("tie")
    x = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([0.0, 1.0, 2.0, 1.0] * 3, dtype=torch.float64)
    big = {}
    for recompute in (True, False):
        got, saved = saved_by_forward(
            lambda r=recompute: lokr_delta(
                x, w1, w2, scale=0.3, row_mask=mask, impl=impl, recompute=r
            )
        )
        # Input-sized tensors saved other than the input itself: the chain's state.
        big[recompute] = [
            t.numel() for t in saved if t.numel() >= x.numel() and t.data_ptr() != x.data_ptr()
        ]
        torch.testing.assert_close(got, 0.3 * reference(x, w1, w2) * mask)
    assert big[True] == []
    assert 6 * 12 in big[False]
    torch.autograd.gradcheck(
        lambda x, a, b: lokr_delta(x, a, b, scale=0.3, row_mask=mask, impl=impl), (x, w1, w2)
    )
