"""Activation-aware approximation: K-FAC Kronecker, whitened SVD, moments, Monarch."""

from __future__ import annotations

import pytest
import torch

from torchkron import MonarchLinear
from torchkron.factorization import (
    SecondMoment,
    kron_spectrum,
    kronecker_moment,
    monarch_projection,
    nearest_kronecker,
    output_error,
    second_moment,
    whitened_low_rank,
    whitened_weight,
)
from torchkron.functional import kron_weight

D = torch.float64
SHAPES = [(3, 4), (4, 5)]  # W: (12, 20), input split 4 x 5
TINY = 1e-12  # damping small enough to leave the optimum of an SPD moment unchanged


def _spd(n: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, 2 * n, generator=gen, dtype=D)
    # Strongly anisotropic, so that whitening matters.
    return a @ torch.diag(torch.logspace(0, 2, 2 * n, dtype=D)) @ a.mT / (2 * n)


def _setup(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 20, generator=gen, dtype=D)
    c1, c2 = _spd(4, gen), _spd(5, gen)
    return w, c1, c2, torch.kron(c1, c2)


def _unit(o: int, n: int, i: int, j: int) -> torch.Tensor:
    e = torch.zeros(o, n, dtype=D)
    e[i, j] = 1.0
    return e


def _als_optimum(w: torch.Tensor, c: torch.Tensor, iters: int = 60) -> float:
    """Rank-1 ``min ||(W - A (x) B) C^1/2||`` by alternating least squares on explicit
    Kronecker matrices: an independent route (no rearrangement, no K-FAC)."""
    evals, evecs = torch.linalg.eigh(c)
    s = (evecs * evals.sqrt()) @ evecs.mT
    (o1, n1), (o2, n2) = SHAPES
    b = torch.randn(o2, n2, generator=torch.Generator().manual_seed(1), dtype=D)
    a = torch.zeros(o1, n1, dtype=D)
    target = (w @ s).reshape(-1)
    for _ in range(iters):
        cols = [
            (torch.kron(_unit(o1, n1, i, j), b) @ s).reshape(-1)
            for i in range(o1)
            for j in range(n1)
        ]
        a = torch.linalg.lstsq(torch.stack(cols, 1), target).solution.reshape(o1, n1)
        cols = [
            (torch.kron(a, _unit(o2, n2, i, j)) @ s).reshape(-1)
            for i in range(o2)
            for j in range(n2)
        ]
        b = torch.linalg.lstsq(torch.stack(cols, 1), target).solution.reshape(o2, n2)
    return output_error(w, torch.kron(a, b), c)


def test_kronecker_moment_recovers_an_exact_kronecker_moment():
    _, _c1, _c2, c = _setup()
    f1, f2 = kronecker_moment(c, SHAPES)
    torch.testing.assert_close(torch.kron(f1, f2), c, rtol=1e-10, atol=1e-10)
    for f in (f1, f2):
        torch.testing.assert_close(f, f.mT)
        assert float(torch.linalg.eigvalsh(f).min()) >= 0.0


def test_activation_aware_beats_plain_and_matches_the_als_optimum():
    w, _, _, c = _setup()
    plain, _ = nearest_kronecker(w, SHAPES)
    aware, err = nearest_kronecker(w, SHAPES, input_second_moment=c, damping=TINY)
    plain_out = output_error(w, kron_weight(plain), c)
    assert err == pytest.approx(output_error(w, kron_weight(aware), c), rel=1e-12)
    assert err < 0.95 * plain_out  # clearly lower output error than plain Van Loan
    assert err == pytest.approx(_als_optimum(w, c), rel=1e-6)


def test_activation_aware_is_the_whitened_eckart_young_optimum_at_every_rank():
    w, _, _, c = _setup(3)
    spectrum = kron_spectrum(whitened_weight(w, SHAPES, c, damping=TINY), SHAPES)
    for rank in (1, 2, 5):
        _, err = nearest_kronecker(w, SHAPES, rank, input_second_moment=c, damping=TINY)
        tail = float((spectrum[rank:] ** 2).sum() / (spectrum**2).sum()) ** 0.5
        assert err == pytest.approx(tail, rel=1e-8, abs=1e-12)


def test_identity_moment_gives_plain_van_loan():
    w, _, _, _ = _setup(1)
    plain, plain_err = nearest_kronecker(w, SHAPES, 2)
    aware, aware_err = nearest_kronecker(w, SHAPES, 2, input_second_moment=torch.eye(20, dtype=D))
    torch.testing.assert_close(kron_weight(aware), kron_weight(plain), rtol=1e-10, atol=1e-10)
    assert aware_err == pytest.approx(plain_err, rel=1e-10)


def test_output_error_is_the_error_on_the_data():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(12, 20, generator=gen, dtype=D)
    x = torch.randn(500, 20, generator=gen, dtype=D) @ torch.randn(20, 20, generator=gen, dtype=D)
    c = second_moment([x[:123], x[123:]])
    torch.testing.assert_close(c, x.mT @ x / 500)
    factors, err = nearest_kronecker(w, SHAPES, 2, input_second_moment=c)
    approx = kron_weight(factors)
    direct = float(torch.linalg.norm(x @ (w - approx).mT) / torch.linalg.norm(x @ w.mT))
    assert err == pytest.approx(direct, rel=1e-10)
    # This C is far from a Kronecker product: the K-FAC optimum loses to plain Van Loan
    # here (0.806 vs 0.800 output error), so the plain factors are kept.
    plain, _ = nearest_kronecker(w, SHAPES, 2)
    assert err == pytest.approx(output_error(w, kron_weight(plain), c), rel=1e-12)


def test_second_moment_streams_in_float64():
    acc = SecondMoment(3)
    x = torch.randn(4, 6, 3, dtype=torch.float32)
    acc.update(x[:2])
    acc.update(x[2:])
    flat = x.reshape(-1, 3).double()
    assert acc.count == 24
    assert acc.matrix().dtype == D
    torch.testing.assert_close(acc.matrix(), flat.mT @ flat / 24)


def test_bad_moments_and_inputs_raise_with_the_fix():
    w, _, _, _ = _setup()
    with pytest.raises(ValueError, match=r"input_second_moment must be \(20, 20\).*got \(12, 12\)"):
        nearest_kronecker(w, SHAPES, input_second_moment=torch.eye(12, dtype=D))
    with pytest.raises(ValueError, match=r"damping must be a number > 0.*got 0"):
        nearest_kronecker(w, SHAPES, input_second_moment=torch.eye(20, dtype=D), damping=0)
    with pytest.raises(ValueError, match=r"inputs must end in 3 features, got shape \(2, 4\)"):
        SecondMoment(3).update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"no inputs seen yet; run calibration batches"):
        SecondMoment(3).matrix()
    with pytest.raises(ValueError, match=r"second_moment: no inputs given"):
        second_moment([])


def test_whitened_low_rank_is_optimal_and_beats_plain_svd_on_output_error():
    w, _, _, c = _setup(4)
    u, v, err = whitened_low_rank(w, 3, c, damping=TINY)
    assert u.shape == (12, 3)
    assert v.shape == (20, 3)
    assert err == pytest.approx(output_error(w, u @ v.mT, c), rel=1e-10)
    evals, evecs = torch.linalg.eigh(c)
    s = torch.linalg.svdvals(w @ ((evecs * evals.sqrt()) @ evecs.mT))
    assert err == pytest.approx(float((s[3:] ** 2).sum() / (s**2).sum()) ** 0.5, rel=1e-8)
    u0, v0, err0 = whitened_low_rank(w, 3)
    sv = torch.linalg.svdvals(w)
    assert err0 == pytest.approx(float((sv[3:] ** 2).sum() / (sv**2).sum()) ** 0.5, rel=1e-10)
    assert err < output_error(w, u0 @ v0.mT, c)


def test_monarch_projection_is_exact_on_monarch_weights_and_loads_into_the_layer():
    torch.manual_seed(0)
    for in_f, out_f, b in ((8, 12, 2), (128, 512, 32), (512, 128, 8)):
        layer = MonarchLinear(in_f, out_f, b, bias=False, dtype=D)
        b1, b2, err = monarch_projection(layer.weight.detach(), b)
        assert err < 1e-12, (in_f, out_f, b)
        noisy = torch.randn(out_f, in_f, dtype=D)
        b1, b2, err = monarch_projection(noisy, b)
        with torch.no_grad():
            layer.blkdiag1.copy_(b1)
            layer.blkdiag2.copy_(b2)
        rel = float(torch.linalg.norm(noisy - layer.weight.detach()) / torch.linalg.norm(noisy))
        assert rel == pytest.approx(err, rel=1e-10)
        assert 0 < err < 1


def test_monarch_projection_rejects_blocks_that_do_not_divide():
    with pytest.raises(
        ValueError, match=r"nblocks must be a positive int dividing both sides of the 6 x 8"
    ):
        monarch_projection(torch.zeros(6, 8), 4)
