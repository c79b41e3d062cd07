"""KronLinear / nearest_kronecker on bad input, big ranks, meta tensors, fast SVD, checkpoints."""

from __future__ import annotations

import io
import re
import warnings

import pytest
import torch
from tests.reference import random_factors, reference_weight
from torch import nn

from torchkron import KronLinear, nearest_kronecker
from torchkron.factorization import (
    RankClippedWarning,
    max_kronecker_rank,
    relative_error,
)
from torchkron.factorization._nearest import _rearrange


def _exact(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


@pytest.mark.parametrize(
    ("shapes", "msg"),
    [
        (
            [(4.5, 4), (4, 4)],
            "KronLinear: shapes[0] = (4.5, 4) has a size 4.5 of type float; factor sizes "
            "must be ints, e.g. shapes=[(4, 4), (4, 4)].",
        ),
        (
            [(4, 4), ("4", 4)],
            "KronLinear: shapes[1] = ('4', 4) has a size '4' of type str; factor sizes must "
            "be ints, e.g. shapes=[(4, 4), (4, 4)].",
        ),
        (
            [(True, 16)],
            "KronLinear: shapes[0] = (True, 16) has a size True of type bool; factor sizes "
            "must be ints, e.g. shapes=[(4, 4), (4, 4)].",
        ),
        (
            [(4, 4, 1), (4, 4)],
            "KronLinear: shapes[0] = (4, 4, 1) is not an (out_i, in_i) pair; shapes must be "
            "a list of pairs of ints, e.g. shapes=[(4, 4), (4, 4)].",
        ),
        (
            "4x4",
            "KronLinear: shapes must be a list of (out_i, in_i) pairs of ints, got '4x4' "
            "(str); e.g. shapes=[(4, 4), (4, 4)].",
        ),
    ],
)
def test_bad_shapes_raise_type_error_naming_the_entry(shapes, msg):
    with pytest.raises(TypeError, match=_exact(msg)):
        KronLinear(16, 16, shapes=shapes)


def test_numpy_and_plain_ints_are_accepted_as_plain_ints():
    np = pytest.importorskip("numpy")
    layer = KronLinear(np.int64(16), 16, shapes=[(np.int32(4), 4), (4, np.int64(4))])
    assert type(layer.in_features) is int
    assert layer.shapes == ((4, 4), (4, 4))
    assert all(type(x) is int for pair in layer.shapes for x in pair)


@pytest.mark.parametrize(
    ("kwargs", "kind", "msg"),
    [
        (
            {"in_features": 16.0},
            TypeError,
            "KronLinear: in_features must be a positive int, got 16.0 (float); pass an int.",
        ),
        (
            {"in_features": "16"},
            TypeError,
            "KronLinear: in_features must be a positive int, got '16' (str); pass an int.",
        ),
        (
            {"out_features": True},
            TypeError,
            "KronLinear: out_features must be a positive int, got True (bool); pass an int.",
        ),
        (
            {"out_features": -3},
            ValueError,
            "KronLinear: out_features must be a positive int, got -3.",
        ),
        (
            {"rank": 2.0},
            TypeError,
            "KronLinear: rank must be an int >= 1 (the number of summed Kronecker products), "
            "got 2.0 (float); use rank=1 for a single product.",
        ),
        (
            {"rank": True},
            TypeError,
            "KronLinear: rank must be an int >= 1 (the number of summed Kronecker products), "
            "got True (bool); use rank=1 for a single product.",
        ),
        (
            {"rank": 0},
            ValueError,
            "KronLinear: rank must be an int >= 1 (the number of summed Kronecker products), "
            "got 0; use rank=1 for a single product.",
        ),
        (
            {"num_factors": 2.5},
            TypeError,
            "factor_shapes: num_factors must be a positive int, got 2.5 (float); pass an int.",
        ),
    ],
)
def test_sizes_and_rank_are_validated(kwargs, kind, msg):
    args = {"in_features": 16, "out_features": 16, **kwargs}
    with pytest.raises(kind, match=_exact(msg)):
        KronLinear(**args)


@pytest.mark.parametrize(
    ("rank", "kind", "msg"),
    [
        (
            True,
            TypeError,
            "nearest_kronecker: rank must be an int >= 1, got True (bool); pass the number "
            "of summed Kronecker products, e.g. rank=4.",
        ),
        (
            1.5,
            TypeError,
            "nearest_kronecker: rank must be an int >= 1, got 1.5 (float); pass the number "
            "of summed Kronecker products, e.g. rank=4.",
        ),
        (-2, ValueError, "nearest_kronecker: rank must be an int >= 1, got -2."),
    ],
)
def test_nearest_kronecker_rank_validation(rank, kind, msg):
    with pytest.raises(kind, match=_exact(msg)):
        nearest_kronecker(torch.ones(4, 4), [(2, 2), (2, 2)], rank)


def test_non_finite_weights_are_named():
    dense = nn.Linear(16, 8)
    with torch.no_grad():
        dense.weight[1, 2] = float("nan")
        dense.weight[3, 4] = float("inf")
        dense.weight[7, 0] = -float("inf")
        dense.weight[7, 15] = float("nan")
    with pytest.raises(
        ValueError,
        match=_exact(
            "KronLinear.from_linear: weight of shape (8, 16) has 4 non-finite entries (2 NaN, "
            "2 Inf) at (row, col) [(1, 2), (3, 4), (7, 0), ...]; its Kronecker approximation "
            "would be all NaN. Fix the weight first (e.g. a finite checkpoint, or "
            "weight.nan_to_num_())."
        ),
    ):
        KronLinear.from_linear(dense)
    w = torch.zeros(4, 4)
    w[0, 0] = float("inf")
    with pytest.raises(
        ValueError,
        match=_exact(
            "nearest_kronecker: weight of shape (4, 4) has 1 non-finite entries (0 NaN, 1 Inf) "
            "at (row, col) [(0, 0)]; its Kronecker approximation would be all NaN. Fix the "
            "weight first (e.g. a finite checkpoint, or weight.nan_to_num_())."
        ),
    ):
        nearest_kronecker(w, [(2, 2), (2, 2)])


def test_max_kronecker_rank():
    assert max_kronecker_rank([(4, 4), (2, 4)]) == 8  # min(16, 8)
    assert max_kronecker_rank([(25, 28), (25, 28)]) == 700
    assert max_kronecker_rank([(2, 2)] * 3) == 16  # min(4, 16) * min(4, 4)
    assert max_kronecker_rank([(2, 1), (50, 2), (1, 2)]) == 4  # min(2, 200) * min(100, 2)
    assert max_kronecker_rank([(10, 100)]) == 1


def test_from_linear_clips_a_rank_above_the_maximum_and_says_so():
    torch.manual_seed(0)
    dense = nn.Linear(16, 8, dtype=torch.float64)
    with pytest.warns(RankClippedWarning) as record:
        layer = KronLinear.from_linear(dense, rank=100)
    assert [str(w.message) for w in record] == [
        "KronLinear.from_linear: rank=100 is above the largest achievable rank 8 for shapes "
        "[(4, 4), (2, 4)] (min of the rearranged 16 x 8 matrix's dimensions); using rank=8, "
        "which represents the weight exactly. Pass rank<=8 to silence this warning."
    ]
    assert record[0].filename == __file__  # points at the caller
    assert (layer.rank, layer.requested_rank, layer.rank_clipped) == (8, 100, True)
    assert layer.factor_0.shape == (8, 4, 4)
    assert layer.approximation_error < 1e-12
    # No dead zero terms are created: every term carries weight.
    assert all(bool((f.flatten(1).norm(dim=1) > 0).all()) for f in layer.factors)
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = KronLinear.from_linear(dense, rank=8)
    assert (exact.rank, exact.requested_rank, exact.rank_clipped) == (8, 8, False)


def test_nearest_kronecker_clips_k3_rank():
    w = torch.randn(8, 8, dtype=torch.float64)
    with pytest.warns(RankClippedWarning, match=r"using rank=16, which represents"):
        factors, err = nearest_kronecker(w, [(2, 2)] * 3, 40)
    assert factors[0].shape == (16, 2, 2)
    assert err < 1e-10


def test_constructor_keeps_a_too_large_rank_and_warns():
    with pytest.warns(
        UserWarning,
        match=_exact(
            "KronLinear: rank=9 is above the largest useful rank 8 for shapes [(4, 4), (2, 4)]: "
            "every weight of this shape is a sum of 8 Kronecker products, so the extra terms "
            "only add parameters. Keeping rank=9 as asked; pass rank=8 to drop them."
        ),
    ):
        layer = KronLinear(16, 8, rank=9)
    assert layer.rank == layer.requested_rank == 9
    assert layer.factor_0.shape == (9, 4, 4)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_jit_script_raises_and_points_to_the_alternatives():
    msg = (
        "KronLinear does not support torch.jit.script (its forward dispatches to custom "
        "autograd Functions that TorchScript cannot compile). Use torch.jit.trace(model, "
        "example_inputs), torch.compile(model) or torch.export.export(model, "
        "(example_inputs,)) instead; all three support it."
    )
    with pytest.raises(RuntimeError, match=_exact(msg)):
        torch.jit.script(KronLinear(8, 8))
    with pytest.raises(RuntimeError, match=_exact(msg)):
        torch.jit.script(nn.Sequential(KronLinear(8, 8), nn.ReLU()))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_trace_compile_and_export_work():
    torch.manual_seed(0)
    model = nn.Sequential(KronLinear(16, 12, shapes=[(4, 4), (3, 4)], rank=2), nn.ReLU())
    x = torch.randn(5, 16)
    ref = model(x)
    traced = torch.jit.trace(model, (x,))
    torch.testing.assert_close(traced(x), ref)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), ref)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), ref)


def test_meta_device_construction_and_reset():
    layer = KronLinear(784, 625, rank=3, device="meta")
    assert all(p.is_meta for p in layer.parameters())
    layer.reset_parameters()  # no .item() on meta tensors
    assert layer(torch.empty(2, 784, device="meta")).shape == (2, 625)
    real = layer.to_empty(device="cpu")
    real.reset_parameters()
    assert bool(torch.isfinite(real.weight).all())


def test_like_linear_reads_no_values_and_from_linear_on_meta_names_it():
    dense = nn.Linear(784, 625, bias=False, device="meta", dtype=torch.float64)
    layer = KronLinear.like_linear(dense, rank=2, tied=True)
    assert layer.factor_std() > 0
    assert (layer.tied, layer.rank, layer.bias) == (True, 2, None)
    assert layer.tied_factor.is_meta
    assert layer.tied_factor.dtype == torch.float64
    with pytest.raises(
        ValueError,
        match=_exact(
            "KronLinear.from_linear: weight is on the meta device and has no values to "
            "approximate; build the layer without reading the weight "
            "(KronLinear.like_linear(linear) or KronLinear(in, out, device='meta')) and load "
            "real values later."
        ),
    ):
        KronLinear.from_linear(dense)
    with pytest.raises(
        ValueError, match=r"KronLinear.like_linear: the LazyLinear is not initialised yet"
    ):
        KronLinear.like_linear(nn.LazyLinear(4))


WEIGHT_MSG = (
    "KronLinear.weight is derived from the factors (W = sum_r F_1[r] (x) ... (x) F_k[r]) "
    "and cannot be assigned. To set the layer from a dense matrix use "
    "layer.load_dense(weight[, bias]) or KronLinear.from_linear(linear) (nearest Kronecker "
    "approximation); to change it directly, assign the factors (layer.factor_0, ... or "
    "layer.tied_factor)."
)


def test_weight_is_read_only():
    layer = KronLinear(16, 8)
    before = layer.weight.detach().clone()
    with pytest.raises(AttributeError, match=_exact(WEIGHT_MSG)):
        layer.weight = torch.zeros(8, 16)
    with pytest.raises(AttributeError, match=_exact(WEIGHT_MSG)):
        layer.weight = nn.Parameter(torch.zeros(8, 16))
    with pytest.raises(AttributeError, match=_exact(WEIGHT_MSG)):
        setattr(layer, "weight", None)  # noqa: B010
    # Documented: in-place edits of the derived tensor do not reach the layer.
    layer.weight.data.zero_()
    torch.testing.assert_close(layer.weight, before, rtol=0, atol=0)
    assert "no effect" in (type(layer).weight.__doc__ or "")


def test_load_dense_sets_the_nearest_factors():
    torch.manual_seed(0)
    a, b = torch.randn(4, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    layer = KronLinear(16, 8, rank=2, dtype=torch.float64)
    bias = torch.randn(8, dtype=torch.float64)
    err = layer.load_dense(torch.kron(a, b), bias)
    assert err < 1e-12
    assert layer.approximation_error == err
    torch.testing.assert_close(layer.weight, torch.kron(a, b))
    torch.testing.assert_close(layer.bias, bias, rtol=0, atol=0)
    with pytest.raises(
        ValueError,
        match=_exact("KronLinear.load_dense: weight must have shape (8, 16), got (16, 8)."),
    ):
        layer.load_dense(torch.zeros(16, 8))


def test_dense_checkpoint_names_the_fix_and_converts_when_asked():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    model = nn.Sequential(KronLinear(16, 8, rank=8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(RuntimeError) as info:
        model.load_state_dict(dense.state_dict())
    assert str(info.value) == (
        "Error(s) in loading state_dict for Sequential:\n\tKronLinear '0': the checkpoint "
        "holds a dense weight '0.weight' of shape (8, 16), not this layer's Kronecker "
        "factors ['0.factor_0', '0.factor_1']. To load it as the nearest Kronecker "
        "approximation, wrap the call: `with KronLinear.convert_dense_checkpoints(): "
        "model.load_state_dict(state_dict)`, or call layer.load_dense(weight, bias); or load "
        "it into the dense model before kronify."
    )
    assert "Missing key" not in str(info.value)
    with KronLinear.convert_dense_checkpoints():
        result = model.load_state_dict(dense.state_dict())
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    # rank 8 is the maximum for these shapes, so the conversion is exact.
    assert model[0].approximation_error < 1e-6
    x = torch.randn(3, 16)
    torch.testing.assert_close(model(x), dense(x), rtol=1e-5, atol=1e-5)
    # Outside the block the flag is off again.
    with pytest.raises(RuntimeError, match="convert_dense_checkpoints"):
        model.load_state_dict(dense.state_dict())


def test_state_dict_round_trip_is_bitwise():
    torch.manual_seed(0)
    src = KronLinear(24, 12, shapes=[(3, 4), (4, 6)], rank=3)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = KronLinear(24, 12, shapes=[(3, 4), (4, 6)], rank=3)
    dst.load_state_dict(torch.load(buf, weights_only=True))
    for name, p in src.state_dict().items():
        assert torch.equal(dst.state_dict()[name], p), name


def _spectrum_matrix(shapes, singular_values, seed=0):
    """A weight whose rearrangement has the given singular values."""
    (o1, n1), (o2, n2) = shapes
    g = torch.Generator().manual_seed(seed)
    m, n = o1 * n1, o2 * n2
    u = torch.linalg.qr(torch.randn(m, len(singular_values), generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, len(singular_values), generator=g, dtype=torch.float64)).Q
    r = (u * singular_values) @ v.T
    return r.reshape(o1, n1, o2, n2).permute(0, 2, 1, 3).reshape(o1 * o2, n1 * n2)


SHAPES = [(16, 16), (15, 20)]  # rearranged 256 x 300: large enough for the fast path


def test_randomized_svd_is_exact_when_the_rank_allows():
    w = reference_weight(random_factors(SHAPES, 3, seed=3))
    full, err_full = nearest_kronecker(w, SHAPES, 3, svd="full")
    fast, err_fast = nearest_kronecker(w, SHAPES, 3)  # auto picks the randomised path
    assert err_full < 1e-12
    assert err_fast < 1e-12
    torch.testing.assert_close(reference_weight(fast), w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reference_weight(fast), reference_weight(full))


def test_randomized_svd_matches_full_on_decaying_spectrum_and_error_is_exact():
    s = 0.5 ** torch.arange(256, dtype=torch.float64)
    w = _spectrum_matrix(SHAPES, s)
    assert torch.allclose(torch.linalg.svdvals(_rearrange(w, 16, 16, 15, 20))[:4], s[:4])
    for rank in (1, 2, 5):
        full, err_full = nearest_kronecker(w, SHAPES, rank, svd="full")
        fast, err_fast = nearest_kronecker(w, SHAPES, rank, svd="randomized")
        tail = float((s[rank:] ** 2).sum().sqrt() / (s**2).sum().sqrt())
        assert err_full == pytest.approx(tail, rel=1e-10)
        assert err_fast == pytest.approx(err_full, rel=1e-10)
        direct = torch.linalg.matrix_norm(w - reference_weight(fast)) / torch.linalg.matrix_norm(w)
        assert err_fast == pytest.approx(float(direct), rel=1e-10)
        torch.testing.assert_close(reference_weight(fast), reference_weight(full))


def test_randomized_svd_on_flat_spectrum_is_close_and_never_below_optimal():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(240, 320, generator=g, dtype=torch.float64)
    _, err_full = nearest_kronecker(w, SHAPES, 4, svd="full")
    _, err_fast = nearest_kronecker(w, SHAPES, 4, svd="randomized")
    assert err_full <= err_fast + 1e-12  # Eckart-Young: full is optimal
    assert err_fast <= err_full * (1 + 1e-3)


def test_randomized_svd_leaves_the_global_rng_alone_and_is_reproducible():
    w = torch.randn(240, 320, dtype=torch.float64)
    state = torch.get_rng_state()
    a, _ = nearest_kronecker(w, SHAPES, 2, svd="randomized")
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = nearest_kronecker(w, SHAPES, 2, svd="randomized")
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_relative_error_matches_the_dense_reference_for_k3():
    factors = random_factors([(2, 3), (3, 2), (2, 2)], 5, seed=2)
    w = torch.randn(12, 12, dtype=torch.float64)
    ref = torch.linalg.matrix_norm(w - reference_weight(factors)) / torch.linalg.matrix_norm(w)
    assert relative_error(w, factors) == pytest.approx(float(ref), rel=1e-12)
    with pytest.raises(ValueError, match=r"svd must be 'auto', 'full' or 'randomized', got 'x'"):
        nearest_kronecker(w, [(3, 4), (4, 3)], svd="x")  # type: ignore[arg-type]


def test_load_state_dict_strict_false_lists_a_dense_checkpoint_and_keeps_the_factors():
    torch.manual_seed(0)
    layer = KronLinear(16, 16)
    factors = [f.detach().clone() for f in layer.factors]
    dense = nn.Linear(16, 16)
    result = layer.load_state_dict(dense.state_dict(), strict=False)
    assert result.missing_keys == ["factor_0", "factor_1"]
    assert result.unexpected_keys == ["weight"]
    assert all(torch.equal(a, b) for a, b in zip(factors, layer.factors, strict=True))
    assert torch.equal(layer.bias, dense.bias)  # what matches loads, as torch does
    model = nn.Sequential(KronLinear(16, 16))
    result = model.load_state_dict(nn.Sequential(dense).state_dict(), strict=False)
    assert result.unexpected_keys == ["0.weight"]
    with pytest.raises(RuntimeError, match=r"KronLinear '0': the checkpoint holds a dense weight"):
        model.load_state_dict(nn.Sequential(dense).state_dict())


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_dtypes_are_refused_at_construction(dtype):
    from torchkron import LowRankLinear, MonarchLinear

    for cls, kwargs in (
        (KronLinear, {}),
        (LowRankLinear, {"rank": 2}),
        (MonarchLinear, {"nblocks": 4}),
    ):
        with pytest.raises(
            TypeError,
            match=rf"{cls.__name__}: complex dtypes are not supported \(got {dtype}\): "
            r"torchkron's layers are real-valued \(KronLinear's hand-written backward passes "
            r"transpose without conjugating",
        ):
            cls(16, 16, dtype=dtype, **kwargs)
    layer = KronLinear(16, 16)
    with pytest.raises(TypeError, match=r"KronLinear: complex dtypes are not supported"):
        layer(torch.randn(2, 16, dtype=dtype))
