"""Activation-aware approximation: minimise the output error ``||(W - W_hat) X||`` on data.

A layer's outputs ``y = W x`` are what matter, not its weights: with the input second
moment ``C = E[x x^T]``, the mean squared output error of an approximation is
``tr((W - W_hat) C (W - W_hat)^T) = ||(W - W_hat) C^1/2||_F^2``. This module

- accumulates ``C`` from calibration batches (:class:`SecondMoment`, float64, streaming);
- solves the Kronecker case exactly under the K-FAC approximation ``C ~ C1 (x) C2``
  (:func:`kronecker_moment`, :func:`activation_kronecker`): with ``S_i = C_i^1/2``,
  ``(W - sum_r A_r (x) B_r)(S1 (x) S2) = W' - sum_r (A_r S1) (x) (B_r S2)`` where
  ``W' = W (S1 (x) S2)``, so the Van Loan SVD of ``W'`` is optimal and its factors are
  mapped back by ``S_i^-1``;
- solves the low-rank case exactly (:func:`whitened_low_rank`: the truncated SVD of
  ``W C^1/2`` mapped back by ``C^-1/2``, the "whitened SVD");
- measures the output error (:func:`output_error`) with the full ``C``;
- holds :func:`nearest_kronecker`, the public entry: plain Van Loan
  (:mod:`torchkron.factorization._nearest`) without a moment, this module's route with one.

Damping: every moment whose inverse root is taken is replaced by ``C + lam I`` with
``lam = damping * tr(C) / n`` (default ``damping = 1e-4``), so that unused input features
(zero rows of ``C``) do not blow up ``C^-1/2``. The optimum is exact for the damped
moment; the reported error uses the undamped ``C``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from torchkron.factorization._nearest import SvdMethod, check_finite, kronecker_approximation
from torchkron.factorization._shapes import check_shapes
from torchkron.functional import kron_weight

__all__ = [
    "DEFAULT_DAMPING",
    "SecondMoment",
    "activation_kronecker",
    "check_moment",
    "damped_root",
    "kronecker_moment",
    "nearest_kronecker",
    "output_error",
    "second_moment",
    "whitened_low_rank",
    "whitened_weight",
]

DEFAULT_DAMPING = 1e-4
"""Ridge added to a moment before its inverse root, relative to its mean eigenvalue."""


class SecondMoment:
    """Streaming ``E[x x^T]`` of a layer's inputs, accumulated in float64.

    Args:
        features: size ``n`` of the last input dimension.

    Attributes:
        count: vectors seen so far.

    Examples:
        >>> acc = SecondMoment(3)
        >>> acc.update(torch.ones(2, 5, 3))  # any leading dims: 10 vectors
        >>> acc.count, acc.matrix()[0, 0].item()
        (10, 1.0)
    """

    def __init__(self, features: int) -> None:
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"SecondMoment: features must be a positive int, got {features!r}.")
        self.features = features
        self.count = 0
        self._sum = torch.zeros(features, features, dtype=torch.float64)

    def update(self, x: Tensor) -> None:
        """Add every vector of ``x`` (shape ``(*, n)``)."""
        if x.shape[-1:] != (self.features,):
            raise ValueError(
                f"SecondMoment: inputs must end in {self.features} features, got shape "
                f"{tuple(x.shape)}; feed the inputs of the layer this moment belongs to."
            )
        flat = x.detach().reshape(-1, self.features).to(torch.float64)  # (N, n)
        self._sum = self._sum.to(flat.device)
        self._sum += flat.mT @ flat
        self.count += int(flat.shape[0])

    def matrix(self) -> Tensor:
        """``C = sum x x^T / count`` (float64, ``(n, n)``)."""
        if self.count == 0:
            raise ValueError(
                "SecondMoment: no inputs seen yet; run calibration batches through the layer "
                "(update()) before reading the moment."
            )
        return self._sum / self.count


def nearest_kronecker(
    weight: Tensor,
    shapes: Sequence[tuple[int, int]],
    rank: int = 1,
    *,
    svd: SvdMethod = "auto",
    input_second_moment: Tensor | None = None,
    damping: float = 1e-4,
) -> tuple[list[Tensor], float]:
    """The sum of ``rank`` Kronecker products nearest to ``weight`` in Frobenius norm, or
    in output error on data when ``input_second_moment`` is given.

    For two factors this is the Van Loan-Pitsianis rearrangement followed by a truncated
    SVD, which is optimal (Eckart-Young) and exact once ``rank`` reaches the rank of the
    rearranged matrix. For ``k > 2`` factors it is a sequential SVD: the first factor is
    split off by an SVD, each remainder is split again, and the ``rank`` heaviest of the
    resulting mutually orthogonal Kronecker terms are kept (a beam of ``rank`` branches
    per level). That is exact on sums of Kronecker products whose expansion has at most
    ``rank`` terms, and the error never exceeds the dropped terms' weight; it is not
    guaranteed optimal for ``k > 2``, a problem that is NP-hard in general.

    A ``rank`` above :func:`max_kronecker_rank` would only add zero terms: it is lowered
    to that bound with a :class:`RankClippedWarning`, and the returned factors have the
    lowered rank as their first dimension.

    The computation runs in float64 and the factors are returned in ``weight``'s dtype.
    The returned error is always computed from the returned factors
    (``||W - W_hat||_F / ||W||_F``), whichever SVD produced them.

    Args:
        weight: ``(prod out_i, prod in_i)`` matrix; every entry finite.
        shapes: ``[(out_1, in_1), ..., (out_k, in_k)]``.
        rank: number of summed Kronecker terms ``R >= 1``.
        svd: ``"full"``: ``torch.linalg.svd`` of every rearranged matrix. ``"randomized"``:
            a randomised range finder with subspace iteration until the kept singular
            values converge (seeded with a private generator: the global RNG is not
            touched, results are reproducible). It is exact whenever the rearranged
            matrix's rank is below the sketch size ``2 R + 10``, and otherwise within
            float64 tolerance of the full SVD's error on matrices whose spectrum decays
            (trained weights); on flat spectra it may keep a slightly worse subspace.
            ``"auto"`` (default): randomised when the matrix is large (smaller side
            >= 256) and the sketch is at most a quarter of it, full otherwise.
        input_second_moment: ``C = E[x x^T]`` of the layer's inputs, ``(in, in)``
            (accumulate it with :class:`torchkron.factorization.SecondMoment`). Given, the
            factors minimise the output error ``||(W - W_hat) C^1/2||_F`` with ``C``
            replaced by its K-FAC approximation ``C_1 (x) ... (x) C_k`` in the input split
            of ``shapes`` (exact for two factors when ``C`` is a Kronecker product); see
            :mod:`torchkron.factorization.activation`.
        damping: with ``input_second_moment``, the ridge ``damping * tr(C_i) / n_i``
            added to each moment factor before its inverse square root.

    Returns:
        ``(factors, relative_error)``: factors in the ``(R, out_i, in_i)`` layout of
        :func:`torchkron.functional.kron_linear`, and ``||W - W_hat||_F / ||W||_F``
        (0 for a zero ``weight``); with ``input_second_moment``, the relative output
        error ``||(W - W_hat) C^1/2||_F / ||W C^1/2||_F`` under the full ``C``.

    Raises:
        TypeError: ``rank`` is not an int (e.g. ``True`` or ``2.0``), or bad ``shapes``.
        ValueError: ``rank < 1``, shapes that do not match ``weight``, a ``weight`` with
            NaN or Inf entries (the message counts and locates them), or a ``weight`` on
            the meta device (it has no values to approximate).

    Examples:
        >>> a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
        >>> factors, err = nearest_kronecker(torch.kron(a, b), [(3, 4), (5, 6)])
        >>> err < 1e-12
        True
    """
    if input_second_moment is not None:
        return activation_kronecker(
            weight, shapes, rank, input_second_moment, svd=svd, damping=damping
        )
    factors, err = kronecker_approximation(weight, shapes, rank, svd, "nearest_kronecker")
    return factors, err


def second_moment(inputs: Iterable[Tensor]) -> Tensor:
    """``E[x x^T]`` over every vector of every tensor of ``inputs`` (float64).

    Examples:
        >>> c = second_moment([torch.eye(2), 3 * torch.eye(2)])
        >>> c.tolist()
        [[2.5, 0.0], [0.0, 2.5]]
    """
    acc: SecondMoment | None = None
    for x in inputs:
        if acc is None:
            acc = SecondMoment(int(x.shape[-1]))
        acc.update(x)
    if acc is None:
        raise ValueError("second_moment: no inputs given; pass at least one calibration batch.")
    return acc.matrix()


def check_moment(moment: Tensor, in_features: int, caller: str) -> Tensor:
    """``moment`` as float64 after checking it is a finite ``(in, in)`` matrix."""
    if not isinstance(moment, Tensor) or tuple(moment.shape) != (in_features, in_features):
        got = tuple(moment.shape) if isinstance(moment, Tensor) else type(moment).__name__
        raise ValueError(
            f"{caller}: input_second_moment must be ({in_features}, {in_features}) for a "
            f"layer with {in_features} inputs, got {got}; accumulate it with SecondMoment "
            f"over this layer's inputs."
        )
    c = moment.detach().to(torch.float64)
    if not bool(torch.isfinite(c).all()):
        raise ValueError(f"{caller}: input_second_moment has NaN or Inf entries.")
    return (c + c.mT) / 2


def damped_root(moment: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """``(S, S^-1)`` with ``S = (C + lam I)^1/2``, ``lam = damping * tr(C) / n``.

    Negative eigenvalues (round-off, or a non-PSD approximation) are clipped to 0 first.
    A zero moment gives ``S = I``: no information, plain Frobenius error.
    """
    n = moment.shape[0]
    evals, evecs = torch.linalg.eigh(moment)
    evals = evals.clamp_min(0.0)
    scale = float(evals.sum()) / n
    if scale == 0.0:
        eye = torch.eye(n, dtype=moment.dtype, device=moment.device)
        return eye, eye
    evals = evals + damping * scale
    root = (evecs * evals.sqrt()) @ evecs.mT
    inv = (evecs * evals.rsqrt()) @ evecs.mT
    return root, inv


def kronecker_moment(moment: Tensor, shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """The K-FAC factors ``C ~ C_1 (x) ... (x) C_k`` of an input moment, each symmetric PSD.

    The nearest Kronecker product (one term) of ``C`` in the input split ``n_1 ... n_k``
    of ``shapes``; each factor is symmetrised, its sign chosen so its trace is positive,
    and its negative eigenvalues clipped. For two factors the Van Loan solution of a PSD
    matrix already has PSD factors (Van Loan and Pitsianis 1993), so this only removes
    round-off.

    Examples:
        >>> c1, c2 = torch.eye(2, dtype=torch.float64), 2 * torch.eye(3, dtype=torch.float64)
        >>> f = kronecker_moment(torch.kron(c1, c2), [(4, 2), (5, 3)])
        >>> bool(torch.allclose(torch.kron(f[0], f[1]), torch.kron(c1, c2)))
        True
    """
    ins = [n for _, n in shapes]
    c = moment.to(torch.float64)
    factors, _ = kronecker_approximation(c, [(n, n) for n in ins], 1, "full", "kronecker_moment")
    out = []
    sign = 1.0
    for f in factors[:-1]:
        m = (f[0] + f[0].mT) / 2
        s = 1.0 if float(torch.trace(m)) >= 0 else -1.0
        sign *= s
        out.append(_psd(s * m))
    last = (factors[-1][0] + factors[-1][0].mT) / 2
    out.append(_psd(sign * last))
    return out


def _psd(m: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(m)
    psd: Tensor = (evecs * evals.clamp_min(0.0)) @ evecs.mT
    return psd


def activation_kronecker(
    weight: Tensor,
    shapes: Sequence[tuple[int, int]],
    rank: int,
    moment: Tensor,
    *,
    svd: SvdMethod = "auto",
    damping: float = DEFAULT_DAMPING,
    caller: str = "nearest_kronecker",
) -> tuple[list[Tensor], float]:
    """The rank-``R`` Kronecker sum minimising ``||(W - W_hat) (C_1 (x) ... (x) C_k)^1/2||``.

    ``C_i`` are the K-FAC factors of ``moment`` (:func:`kronecker_moment`), damped (see
    the module). Exact (Eckart-Young) for two factors; for more, the sequential SVD of
    :func:`torchkron.nearest_kronecker` on the whitened weight. When ``moment`` is far
    from a Kronecker product the K-FAC optimum can have a higher true output error than
    the plain (Frobenius) factors; then the plain factors are returned, so the output
    error is never above plain Van Loan's.

    Returns:
        ``(factors, output_error)``: factors ``(R, out_i, in_i)`` in ``weight``'s dtype,
        and the relative output error under the full ``moment`` (:func:`output_error`).
    """
    _check_weight(weight, caller)
    out_f, in_f = (int(d) for d in weight.shape)
    clean = check_shapes(shapes, in_f, out_f, caller)
    c = check_moment(moment, in_f, caller)
    _check_damping(damping, caller)
    roots = [damped_root(ci, damping) for ci in kronecker_moment(c, clean)]
    w64 = weight.detach().to(torch.float64)
    whiten = kron_weight([r[None] for r, _ in roots])  # (in, in) = S_1 (x) ... (x) S_k
    whitened, _ = kronecker_approximation(w64 @ whiten, clean, rank, svd, caller)
    # (A S_1) (x) (B S_2) -> A (x) B: each factor times its inverse root, on the right.
    factors = [f @ inv for f, (_, inv) in zip(whitened, roots, strict=True)]
    err = output_error(w64, kron_weight(factors), c)
    # K-FAC is exact only for a Kronecker-structured C; on real data it can (rarely)
    # lose to the plain factors, so the one with the lower true output error is kept.
    plain, _ = kronecker_approximation(w64, clean, rank, svd, caller)
    plain_err = output_error(w64, kron_weight(plain), c)
    if plain_err < err:
        factors, err = plain, plain_err
    return [f.to(weight.dtype) for f in factors], err


def whitened_weight(
    weight: Tensor,
    shapes: Sequence[tuple[int, int]],
    moment: Tensor,
    *,
    damping: float = DEFAULT_DAMPING,
) -> Tensor:
    """``W' = W (S_1 (x) ... (x) S_k)`` (float64), ``S_i`` the damped roots of the K-FAC
    factors of ``moment``: the Frobenius error of a Kronecker sum of ``W'`` is the output
    error of the mapped-back sum under the (damped) K-FAC moment, so the rank budgets of
    :mod:`torchkron.factorization.budget` apply to ``W'`` unchanged."""
    _check_weight(weight, "whitened_weight")
    out_f, in_f = (int(d) for d in weight.shape)
    clean = check_shapes(shapes, in_f, out_f, "whitened_weight")
    c = check_moment(moment, in_f, "whitened_weight")
    _check_damping(damping, "whitened_weight")
    roots = [damped_root(ci, damping)[0] for ci in kronecker_moment(c, clean)]
    whitened: Tensor = weight.detach().to(torch.float64) @ kron_weight([r[None] for r in roots])
    return whitened


def whitened_low_rank(
    weight: Tensor,
    rank: int,
    moment: Tensor | None = None,
    *,
    damping: float = DEFAULT_DAMPING,
) -> tuple[Tensor, Tensor, float]:
    """``U (out, r)``, ``V (in, r)`` with ``W_hat = U V^T`` minimising the output error.

    Without ``moment``: the truncated SVD of ``W`` (Frobenius optimum). With it: the
    truncated SVD of ``W S`` with ``S = (C + lam I)^1/2``, mapped back as
    ``V^T = Vh S^-1`` (optimal for the damped moment). The singular values are split
    evenly, ``U = U_r s^1/2``, ``V^T = s^1/2 Vh_r``, as :class:`torchkron.LowRankLinear`
    stores ``u`` and ``v``.

    Returns:
        ``(u, v, error)``: the relative output error under ``moment`` (Frobenius error
        without one).

    Examples:
        >>> w = torch.randn(6, 2, dtype=torch.float64) @ torch.randn(2, 5, dtype=torch.float64)
        >>> u, v, err = whitened_low_rank(w, 2)
        >>> err < 1e-12
        True
    """
    _check_weight(weight, "whitened_low_rank")
    out_f, in_f = (int(d) for d in weight.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"whitened_low_rank: rank must be a positive int, got {rank!r}.")
    rank = min(rank, out_f, in_f)
    w64 = weight.detach().to(torch.float64)
    c = None if moment is None else check_moment(moment, in_f, "whitened_low_rank")
    _check_damping(damping, "whitened_low_rank")
    root, inv = (None, None) if c is None else damped_root(c, damping)
    target = w64 if root is None else w64 @ root
    u, s, vh = torch.linalg.svd(target, full_matrices=False)
    half = s[:rank].sqrt()
    left = u[:, :rank] * half  # (out, r)
    right = half[:, None] * vh[:rank]  # (r, in)
    if inv is not None:
        right = right @ inv
    err = output_error(w64, left @ right, c)
    return left.to(weight.dtype), right.mT.to(weight.dtype), err


def output_error(weight: Tensor, approx: Tensor, moment: Tensor | None) -> float:
    """``||(W - W_hat) C^1/2||_F / ||W C^1/2||_F`` (relative RMS output error on data with
    second moment ``C``); the relative Frobenius error without ``moment``.

    Examples:
        >>> w = torch.eye(2, dtype=torch.float64)
        >>> c = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
        >>> output_error(w, torch.diag(torch.tensor([1.0, 5.0])), c)  # input 2 never fires
        0.0
    """
    w = weight.to(torch.float64)
    e = w - approx.to(torch.float64)
    if moment is None:
        norm = float(torch.linalg.matrix_norm(w))
        return 0.0 if norm == 0.0 else float(torch.linalg.matrix_norm(e)) / norm
    c = moment.to(torch.float64)
    num = abs(float(((e @ c) * e).sum()))
    den = float(((w @ c) * w).sum())
    return 0.0 if den <= 0.0 else math.sqrt(num / den)


def _check_weight(weight: Tensor, caller: str) -> None:
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"{caller}: weight must be a 2-D matrix, got shape {got}.")
    if weight.device.type == "meta":
        raise ValueError(
            f"{caller}: weight is on the meta device and has no values to approximate; "
            f"load real values first."
        )
    check_finite(weight, caller)


def _check_damping(damping: float, caller: str) -> None:
    if isinstance(damping, bool) or not isinstance(damping, int | float) or not damping > 0:
        raise ValueError(
            f"{caller}: damping must be a number > 0 (a ridge relative to the mean "
            f"eigenvalue of the input moment, e.g. 1e-4), got {damping!r}."
        )
