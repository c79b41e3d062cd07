"""impl="auto"'s cost model, its calibration, the inference cache of W, and backward edge cases."""

from __future__ import annotations

import gc
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.reference import random_factors, reference_weight

from torchkron import KronLinear, functional
from torchkron.experiments.bench.timing import saved_tensor_bytes
from torchkron.functional import IMPLS, _calibration, _weight, calibrate, choose_impl, kron_linear
from torchkron.functional.impls import fastkron as fastkron_impl
from torchkron.functional.impls import triton as triton_impl

# Calibrations that push the model to every extreme of the accepted ranges
# (_calibration.RANGES; values beyond them fall back to the defaults), and insane ones;
# none may change the result.
BAD_CALIBRATIONS = [
    {"cpu": {"peak_flops": 1e18, "d_half": 1e-3, "bandwidth": 1e6, "launch_s": 1.0}},
    {"cpu": {"peak_flops": 1e6, "d_half": 1e6, "bandwidth": 1e15, "launch_s": 1e-9}},
    {"cpu": {"peak_flops": -1, "d_half": float("nan"), "bandwidth": 0, "launch_s": "fast"}},
    {"cpu": {"peak_flops": float("inf"), "d_half": True}},
    {},
]


pytestmark = pytest.mark.usefixtures("default_constants")


def _check_against_reference(shapes, rank, batch, seed, grad: bool) -> str:
    factors = random_factors(shapes, rank, seed=seed)
    if grad:
        factors = [f.requires_grad_() for f in factors]
    w = reference_weight([f.detach() for f in factors])
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(batch, w.shape[1], generator=g, dtype=torch.float64, requires_grad=grad)
    bias = torch.randn(w.shape[0], generator=g, dtype=torch.float64, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        chosen = choose_impl(x, factors)
        y = kron_linear(x, factors, bias)
    assert chosen in IMPLS
    assert chosen != "auto"
    torch.testing.assert_close(y, x.detach() @ w.T + bias.detach(), rtol=1e-10, atol=1e-10)
    if grad:
        wr = reference_weight(factors)
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        inputs = [x, bias, *factors]
        got = torch.autograd.grad(y, inputs, gy)
        want = torch.autograd.grad(x @ wr.T + bias, inputs, gy)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    return chosen


shapes_st = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3)


@given(
    shapes=shapes_st,
    rank=st.integers(1, 4),
    batch=st.integers(0, 9),
    seed=st.integers(0, 2**16),
    grad=st.booleans(),
    calib=st.sampled_from(range(len(BAD_CALIBRATIONS) + 1)),
)
def test_auto_choice_is_always_correct(shapes, rank, batch, seed, grad, calib):
    if calib < len(BAD_CALIBRATIONS):
        _calibration.override({"devices": BAD_CALIBRATIONS[calib]})
    else:
        _calibration.override({"devices": calibrate.DEFAULTS})
    _check_against_reference(shapes, rank, batch, seed, grad)


def test_bad_calibrations_can_force_either_plan_and_stay_correct():
    shapes, rank = [(4, 5), (3, 6)], 3
    seen = set()
    for calib in BAD_CALIBRATIONS[:2]:
        _calibration.override({"devices": calib})
        for grad in (False, True):
            seen.add(_check_against_reference(shapes, rank, 5, 0, grad))
    assert {"bmm", "materialize"} <= seen


def test_insane_constants_fall_back_to_defaults():
    _calibration.override({"devices": BAD_CALIBRATIONS[2]})
    assert calibrate.constants("cpu") == calibrate.DEFAULTS["cpu"]
    _calibration.override({"devices": {"cpu": {"peak_flops": 2e11}}})
    assert calibrate.constants("cpu") == {**calibrate.DEFAULTS["cpu"], "peak_flops": 2e11}


def test_calibration_file_from_env_and_corrupt_file_warns(tmp_path, monkeypatch):
    path = tmp_path / "calibration.json"
    monkeypatch.setenv(calibrate.ENV, str(path))
    _calibration.override(None)
    calibrate.reload()
    assert calibrate.default_path() == path
    assert calibrate.constants("cpu") == calibrate.DEFAULTS["cpu"]  # absent: defaults
    path.write_text(json.dumps({"devices": {"cpu": {"d_half": 7.0}}}))
    calibrate.reload()
    assert calibrate.constants("cpu")["d_half"] == 7.0
    path.write_text("{not json")
    calibrate.reload()
    with pytest.warns(UserWarning, match=r"ignoring the calibration file .*bench --calibrate"):
        assert calibrate.constants("cpu") == calibrate.DEFAULTS["cpu"]
    _check_against_reference([(3, 4), (2, 5)], 2, 3, 1, True)
    calibrate.reload()


def test_auto_materializes_high_rank_and_keeps_the_chain_for_rank_one():
    x = torch.zeros(1024, 768)
    for rank, want in ((1, "bmm"), (16, "materialize")):
        factors = [torch.zeros(rank, 64, 32, requires_grad=True), torch.zeros(rank, 48, 24)]
        assert choose_impl(x, factors) == want
    # W of 65536 x 65536 is never built, whatever the model says.
    _calibration.override({"devices": BAD_CALIBRATIONS[1]})
    big = [torch.zeros(1, 256, 256), torch.zeros(1, 256, 256)]
    with torch.no_grad():
        assert choose_impl(torch.zeros(2, 65536), big) == "bmm"


# --------------------------------------------------------------------------------------
# The inference cache of W


def _entry(factors):
    e = _weight.WEIGHT_CACHE.get((id(factors[0]), factors[0].dtype))
    return None if e is None else e.weight


def test_cache_reused_while_unchanged_and_invalidated_by_updates():
    torch.manual_seed(0)
    layer = KronLinear(12, 10, shapes=[(2, 3), (5, 4)], rank=2).double()
    x = torch.randn(7, 12, dtype=torch.float64)

    def check():
        with torch.no_grad():
            y = kron_linear(x, layer.factors, layer.bias, impl="materialize")
        ref = x @ reference_weight([f.detach() for f in layer.factors]).T + layer.bias.detach()
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
        return _entry(layer.factors)

    w1 = check()
    assert w1 is not None
    assert check() is w1  # unchanged factors: the same cached tensor

    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(x).sum().backward()
    opt.step()  # in-place update: version counters move
    w2 = check()
    assert w2 is not None
    assert w2 is not w1

    with torch.no_grad():
        layer.factor_1.mul_(2.0)
    w3 = check()
    assert w3 is not w2

    layer.load_state_dict({k: v * 0.5 for k, v in layer.state_dict().items()})
    w4 = check()
    assert w4 is not w3

    layer.factor_0.data = layer.factor_0.data.clone() + 1  # a new storage
    w5 = check()
    assert w5 is not w4
    assert check() is w5

    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        layer(x).pow(2).sum().backward()
        opt.step()
        check()


def test_cache_sees_writes_that_bypass_version_counters():
    # FlatAdadelta re-points every parameter's .data at a view of one flat buffer and
    # updates the buffer: the parameters' version counters never move.
    from torchkron.experiments.mnist.optim import FlatAdadelta

    torch.manual_seed(1)
    layer = KronLinear(12, 10, shapes=[(2, 3), (5, 4)], rank=2)
    opt = FlatAdadelta(layer.parameters(), lr=1.0)
    x = torch.randn(7, 12)
    for _ in range(3):
        versions = [f._version for f in layer.factors]
        with torch.no_grad():
            y = kron_linear(x, layer.factors, layer.bias, impl="materialize")
        ref = x @ reference_weight([f.detach() for f in layer.factors]).T + layer.bias.detach()
        torch.testing.assert_close(y, ref)
        opt.zero_grad()
        layer(x).pow(2).sum().backward()
        opt.step()
        assert [f._version for f in layer.factors] == versions  # invisible to versions
    with torch.no_grad():
        layer.factor_0.data.mul_(3.0)  # .data bypasses the version counter too
        y = kron_linear(x, layer.factors, layer.bias, impl="materialize")
    ref = x @ reference_weight([f.detach() for f in layer.factors]).T + layer.bias.detach()
    torch.testing.assert_close(y, ref)


def test_cache_not_used_with_autograd_and_dropped_with_the_factors():
    factors = [torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 2, 5, requires_grad=True)]
    x = torch.randn(3, 20)
    y = kron_linear(x, factors, impl="materialize")
    assert y.requires_grad
    assert _entry(factors) is None
    with torch.no_grad():
        kron_linear(x, factors, impl="materialize")
    assert _entry(factors) is not None
    functional.set_weight_cache(False)
    try:
        functional.clear_weight_cache()
        with torch.no_grad():
            kron_linear(x, factors, impl="materialize")
        assert not _weight.WEIGHT_CACHE
    finally:
        functional.set_weight_cache(True)
    with torch.no_grad():
        kron_linear(x, factors, impl="materialize")
    assert len(_weight.WEIGHT_CACHE) == 1
    del factors, y
    gc.collect()
    assert not _weight.WEIGHT_CACHE


def test_cache_skips_inference_tensors():
    with torch.inference_mode():
        factors = [torch.randn(1, 3, 4), torch.randn(1, 2, 5)]
        y = kron_linear(torch.ones(2, 20), factors, impl="materialize")
    assert not _weight.WEIGHT_CACHE
    torch.testing.assert_close(y, torch.ones(2, 20) @ reference_weight(factors).T)


# --------------------------------------------------------------------------------------
# Backward edge cases (issue 8)


@pytest.mark.parametrize("impl", ["bmm", "permute", "fused", "materialize"])
def test_stride_zero_output_gradient(impl):
    factors = [f.requires_grad_() for f in random_factors([(3, 4), (5, 2)], 2, seed=4)]
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    kron_linear(x, factors, impl=impl).sum().backward()  # expanded (stride-0) gradient
    ref_x = x.detach().clone().requires_grad_()
    ref_f = [f.detach().clone().requires_grad_() for f in factors]
    (ref_x @ reference_weight(ref_f).T).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    for a, b in zip(factors, ref_f, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("impl", ["fused", "bmm", "materialize"])
def test_bias_only_grad_with_create_graph(impl):
    factors = random_factors([(3, 4), (2, 5)], 2, seed=5)
    x = torch.randn(4, 20, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def fn(b):
        return kron_linear(x, factors, b, impl=impl)

    (g,) = torch.autograd.grad(fn(bias).pow(2).sum(), bias, create_graph=True)
    torch.testing.assert_close(g, 2 * fn(bias).sum(0))
    assert torch.autograd.gradgradcheck(fn, (bias,))


@pytest.mark.skipif(not fastkron_impl.available(), reason="pyfastkron not installed")
def test_fastkron_double_backward_is_refused_with_a_clear_error():
    factors = [f.float().requires_grad_() for f in random_factors([(3, 4), (2, 5)], 1)]
    x = torch.randn(4, 20, requires_grad=True)
    y = kron_linear(x, factors, impl="fastkron")
    (gx,) = torch.autograd.grad(y.sum(), x)  # first order works
    torch.testing.assert_close(gx, reference_weight(factors).sum(0).expand(4, 20).detach())
    y = kron_linear(x, factors, impl="fastkron")
    with pytest.raises(
        RuntimeError,
        match=r"^kron_linear\(impl='fastkron'\) does not support double backward "
        r"\(create_graph=True\): pyfastkron's backward is not differentiable, so second "
        r"derivatives would be wrong; use impl='bmm' or impl='fused'\.$",
    ):
        torch.autograd.grad(y.sum(), x, create_graph=True)


# --------------------------------------------------------------------------------------
# impl="triton" without Triton


def test_triton_unavailable_is_a_clear_error_and_never_auto(monkeypatch):
    factors = random_factors([(3, 4), (2, 5)], 1)
    x = torch.randn(2, 20, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"^kron_linear\(impl='triton'\): "):
        kron_linear(x, factors, impl="triton")
    monkeypatch.setattr(triton_impl, "is_available", lambda: True)
    monkeypatch.setattr(
        triton_impl, "_apply", lambda *a: pytest.fail("CPU tensors must not reach Triton")
    )
    with pytest.raises(RuntimeError, match="run on CUDA tensors, got device cpu"):
        kron_linear(x, factors, impl="triton")
    _calibration.override({"devices": BAD_CALIBRATIONS[1]})
    assert choose_impl(x, factors) != "triton"


# --------------------------------------------------------------------------------------
# Memory saved for backward (issue 11)


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_saved_activations_within_dense_plus_the_intermediate(rank):
    batch = 32
    factors = [
        torch.randn(rank, 64, 32, requires_grad=True),
        torch.randn(rank, 48, 24, requires_grad=True),
    ]
    bias = torch.zeros(3072, requires_grad=True)
    x = torch.randn(batch, 768, requires_grad=True)
    lin = torch.nn.Linear(768, 3072)
    dense = saved_tensor_bytes(lambda: lin(x), list(lin.parameters()))
    assert dense == x.numel() * 4
    kron = saved_tensor_bytes(lambda: kron_linear(x, factors, bias), [*factors, bias])
    # The factored chain's intermediate: (batch, n1, R, o2) floats.
    intermediate = batch * 32 * rank * 48 * 4
    small = 4 * rank * 64 * 32  # a permuted copy of a factor
    w_bytes = 3072 * 768 * 4
    assert kron <= dense + min(intermediate, w_bytes) + small, (kron, dense, intermediate)
    assert math.isfinite(kron)
