"""``KronLinear``: a drop-in ``nn.Linear`` whose weight is a sum of Kronecker products."""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn

from torchkron.factorization import (
    MAX_SIZE,
    SvdMethod,
    check_positive_int,
    check_rank,
    check_shapes,
    clip_rank,
    factor_shapes,
    kronecker_approximation,
    max_kronecker_rank,
)
from torchkron.functional import kron_linear, kron_weight
from torchkron.layers._common import (
    FactorFans,
    add_bias,
    check_dtype,
    check_init,
    check_input,
    init_bias,
    per_factor_init_,
)

# Set by KronLinear.convert_dense_checkpoints(): load_state_dict converts dense weights.
_CONVERT_DENSE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "torchkron_convert_dense", default=False
)

__all__ = ["KronLinear"]


def _layer_rank(rank: object) -> int:
    fix = "(the number of summed Kronecker products)"
    try:
        # TypeError for floats, strings and bools, as check_rank does.
        value = check_rank(rank, "KronLinear")
    except TypeError:
        raise TypeError(
            f"KronLinear: rank must be an int >= 1 {fix}, got {rank!r} "
            f"({type(rank).__name__}); use rank=1 for a single product."
        ) from None
    except ValueError:
        raise ValueError(
            f"KronLinear: rank must be an int >= 1 {fix}, got {rank!r}; use rank=1 for a "
            f"single product."
        ) from None
    return value


def _check_linear(linear: object, caller: str) -> nn.Linear:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{caller}: expected an nn.Linear, got {type(linear).__name__}.")
    if isinstance(linear.weight, nn.parameter.UninitializedParameter):
        raise ValueError(
            f"{caller}: the {type(linear).__name__} is not initialised yet (lazy); run one "
            f"forward pass so it knows in_features, then convert it."
        )
    return linear


def _check_storage(rank: int, shapes: Sequence[tuple[int, int]], dtype: torch.dtype | None) -> None:
    # Refuse before torch.empty: sizes from a file must not overflow (or take) memory.
    itemsize = (torch.get_default_dtype() if dtype is None else dtype).itemsize
    for o, n in shapes:
        if rank * o * n * itemsize > MAX_SIZE:
            raise ValueError(
                f"KronLinear: a factor of shape ({rank}, {o}, {n}) would take "
                f"{rank * o * n * itemsize} bytes, more than any tensor can hold; check "
                f"in_features, out_features, shapes and rank."
            )


def _strict_load() -> bool:
    """The ``strict`` of the ``Module.load_state_dict`` call being run: torch passes
    ``strict=True`` to every ``_load_from_state_dict`` and applies strictness after."""
    frame: FrameType | None = sys._getframe(2)
    code = nn.Module.load_state_dict.__code__
    while frame is not None:
        if frame.f_code is code:
            return bool(frame.f_locals.get("strict", True))
        frame = frame.f_back
    return True


class KronLinear(nn.Module):
    r"""Linear layer ``y = x W^T + b`` with ``W = sum_r F_1[r] (x) ... (x) F_k[r]``.

    The weight is never built in the forward or backward pass: the input is contracted
    with one factor at a time (:func:`torchkron.functional.kron_linear`). It stores
    ``R * sum_i out_i * in_i`` weights instead of ``out_features * in_features``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: if ``False``, the layer learns no additive bias.
        shapes: factor shapes ``[(out_1, in_1), ..., (out_k, in_k)]`` with
            ``prod out_i == out_features`` and ``prod in_i == in_features``. Default:
            :func:`torchkron.factor_shapes` ``(in_features, out_features, num_factors)``.
        num_factors: number of factors ``k`` when ``shapes`` is not given.
        rank: number of summed Kronecker products ``R``. A rank above
            :func:`torchkron.factorization.max_kronecker_rank` (``M``, e.g.
            ``min(o_1 n_1, o_2 n_2)`` for two factors) is kept as asked, with a
            ``UserWarning``: the random terms are trainable, but every weight of this
            shape is already a sum of ``M`` products, so the extra ones only add
            parameters. :meth:`from_linear` instead lowers it to ``M`` (extra terms
            would be exact zeros) and records the request in ``requested_rank``.
        tied: use one factor for every position (``U (x) U``); all shapes must be equal.
        init: ``"variance"`` (default): :meth:`factor_std`, so ``W`` has ``nn.Linear``'s
            variance. ``"per-factor"``: each factor drawn as a dense matrix of its own
            size (:meth:`factor_fans`; Qiu et al. 2024), the init that
            :func:`torchkron.param_groups`' learning rates assume (docs/training.md).
        device: device of the parameters.
        dtype: dtype of the parameters.

    Attributes:
        factors: tuple of ``k`` tensors, factor ``i`` of shape ``(R, out_i, in_i)``; with
            ``tied=True`` the same Parameter ``k`` times.
        weight: the dense ``(out_features, in_features)`` weight, built on access
            (read-only: see :attr:`weight`).
        bias: ``(out_features,)`` or ``None``.
        approximation_error: relative Frobenius error of :meth:`from_linear` /
            :meth:`load_dense`, else ``None``.
        requested_rank: the rank asked for; differs from ``rank`` when
            :meth:`from_linear` lowered it to the largest achievable one (a
            :class:`torchkron.factorization.RankClippedWarning` says so too).

    Not scriptable: ``torch.jit.script`` raises a ``RuntimeError`` pointing to
    ``torch.jit.trace``, ``torch.compile`` and ``torch.export``, which all work.

    Shape:
        - Input: ``(*, in_features)``, any leading dims.
        - Output: ``(*, out_features)``.

    Examples:
        >>> layer = KronLinear(784, 625)  # (25 x 28) (x) (25 x 28)
        >>> layer(torch.randn(64, 784)).shape
        torch.Size([64, 625])
        >>> KronLinear(784, 625, tied=True).num_weights()  # U (x) U
        700
        >>> KronLinear(625, 10, shapes=[(5, 25), (2, 25)]).num_weights()
        175
    """

    in_features: int
    out_features: int
    shapes: tuple[tuple[int, int], ...]
    rank: int
    tied: bool
    approximation_error: float | None
    requested_rank: int
    init: str

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        shapes: Sequence[tuple[int, int]] | None = None,
        num_factors: int = 2,
        rank: int = 1,
        tied: bool = False,
        init: str = "variance",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.init = check_init("KronLinear", init)
        check_dtype("KronLinear", dtype)
        in_features = check_positive_int(in_features, "in_features", "KronLinear")
        out_features = check_positive_int(out_features, "out_features", "KronLinear")
        rank = _layer_rank(rank)
        if shapes is None:
            resolved = factor_shapes(in_features, out_features, num_factors)
        else:
            resolved = check_shapes(shapes, in_features, out_features, "KronLinear")
        if tied and len(set(resolved)) != 1:
            raise ValueError(
                f"KronLinear: tied=True needs every factor to have the same shape, got "
                f"shapes {resolved}; use tied=False, or shapes that are all equal (e.g. "
                f"[(m, n)] * k with m**k == {out_features} and n**k == {in_features})."
            )
        self.in_features = in_features
        self.out_features = out_features
        self.shapes = tuple(resolved)
        self.rank = rank
        self.requested_rank = rank
        self.tied = tied
        self.approximation_error = None
        bound = max_kronecker_rank(resolved)
        if rank > bound and not tied:
            warnings.warn(
                f"KronLinear: rank={rank} is above the largest useful rank {bound} for "
                f"shapes {resolved}: every weight of this shape is a sum of {bound} "
                f"Kronecker products, so the extra terms only add parameters. Keeping "
                f"rank={rank} as asked; pass rank={bound} to drop them.",
                UserWarning,
                stacklevel=2,
            )
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        _check_storage(rank, resolved, dtype)
        if tied:
            self.tied_factor = nn.Parameter(torch.empty(rank, *resolved[0], **kw))
        else:
            for i, (o, n) in enumerate(resolved):
                self.register_parameter(f"factor_{i}", nn.Parameter(torch.empty(rank, o, n, **kw)))
        self.bias: nn.Parameter | None
        add_bias(self, bias, out_features, kw)
        self.reset_parameters()

    @property
    def num_factors(self) -> int:
        return len(self.shapes)

    @property
    def factors(self) -> tuple[Tensor, ...]:
        if self.tied:
            shared: Tensor = self.tied_factor
            return (shared,) * len(self.shapes)
        return tuple(getattr(self, f"factor_{i}") for i in range(len(self.shapes)))

    @property
    def weight(self) -> Tensor:
        """The dense weight ``W = sum_r F_1[r] (x) ... (x) F_k[r]``, built on each access.

        It is derived from the factors, so it is read-only: assigning ``layer.weight =
        ...`` raises ``AttributeError``, and in-place edits of the returned tensor
        (``layer.weight.data.zero_()``, ``layer.weight.mul_(2)``) have no effect on the
        layer, because each access returns a fresh tensor. To set the layer from a
        dense matrix use :meth:`load_dense` (nearest Kronecker approximation) or
        :meth:`from_linear`; to change it directly, edit the factors
        (``layer.factor_0``, ... or ``layer.tied_factor``).
        """
        return kron_weight(self.factors)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "weight":
            raise AttributeError(
                "KronLinear.weight is derived from the factors (W = sum_r F_1[r] (x) ... "
                "(x) F_k[r]) and cannot be assigned. To set the layer from a dense "
                "matrix use layer.load_dense(weight[, bias]) or KronLinear.from_linear("
                "linear) (nearest Kronecker approximation); to change it directly, assign "
                "the factors (layer.factor_0, ... or layer.tied_factor)."
            )
        super().__setattr__(name, value)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this hook first (also on submodules): fail clearly
        # instead of with "Unknown type annotation" from deep inside the compiler.
        raise RuntimeError(
            "KronLinear does not support torch.jit.script (its forward dispatches to "
            "custom autograd Functions that TorchScript cannot compile). Use "
            "torch.jit.trace(model, example_inputs), torch.compile(model) or "
            "torch.export.export(model, (example_inputs,)) instead; all three support it."
        )

    @property
    def rank_clipped(self) -> bool:
        """Whether :meth:`from_linear` lowered the requested rank (see ``requested_rank``)."""
        return self.requested_rank != self.rank

    def num_weights(self) -> int:
        """Number of stored weights (tied factors counted once, bias excluded)."""
        per_factor = [o * n for o, n in self.shapes]
        return self.rank * (per_factor[0] if self.tied else sum(per_factor))

    def factor_std(self) -> float:
        """Std of each factor's entries so that ``W`` has ``nn.Linear``'s variance.

        ``nn.Linear`` draws ``W ~ U(-1/sqrt(in), 1/sqrt(in))``: variance ``1 / (3 in)``.
        An entry of a ``k``-factor product of independent zero-mean factors has variance
        ``std**(2k)``, and a sum of ``R`` terms ``R * std**(2k)``.
        """
        var_w = 1.0 / (3.0 * self.in_features)
        return float((var_w / self.rank) ** (1.0 / (2 * len(self.shapes))))

    def factor_fans(self) -> list[FactorFans]:
        """Each factor as a dense matrix: ``F_i[r]`` maps ``in_i`` inputs to ``out_i``.

        The ``R`` summed products share the init scale ``R ** (-1 / (2k))`` per factor, so
        that their sum has one product's variance; a tied factor fills all ``k`` positions.

        Examples:
            >>> KronLinear(64, 32, shapes=[(4, 8), (8, 8)], rank=4).factor_fans()[0]
            FactorFans(name='factor_0', fan_in=8, fan_out=4, uses=1, scale=0.7071067811865476)
        """
        k = len(self.shapes)
        scale = float(self.rank ** (-1.0 / (2 * k)))
        if self.tied:
            (o, n) = self.shapes[0]
            return [FactorFans("tied_factor", n, o, k, scale)]
        return [FactorFans(f"factor_{i}", n, o, 1, scale) for i, (o, n) in enumerate(self.shapes)]

    def reset_parameters(self) -> None:
        """Draw the factors by ``init`` (:meth:`factor_std` or :meth:`factor_fans`), bias as
        ``nn.Linear``."""
        if self.init == "per-factor":
            per_factor_init_(self)
            return
        bound = math.sqrt(3.0) * self.factor_std()
        with torch.no_grad():
            for p in dict.fromkeys(self.factors):  # a tied factor once
                p.uniform_(-bound, bound)
            init_bias(self.bias, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        check_input("KronLinear", x, self.in_features)
        return kron_linear(x, self.factors, self.bias)

    def extra_repr(self) -> str:
        shapes = " (x) ".join(f"{o}x{n}" for o, n in self.shapes)
        parts = [
            f"in_features={self.in_features}",
            f"out_features={self.out_features}",
            f"bias={self.bias is not None}",
            f"factors={shapes}",
        ]
        if self.rank != 1:
            parts.append(f"rank={self.rank}")
        if self.tied:
            parts.append("tied=True")
        return ", ".join(parts)

    @classmethod
    def like_linear(
        cls,
        linear: nn.Linear,
        *,
        shapes: Sequence[tuple[int, int]] | None = None,
        num_factors: int = 2,
        rank: int = 1,
        tied: bool = False,
    ) -> KronLinear:
        """A freshly initialised ``KronLinear`` with ``linear``'s sizes, bias, device, dtype.

        The dense weight's values are never read, so this works on the meta device
        (``nn.Linear(..., device="meta")``, ``model.to("meta")``) and costs no SVD.

        Examples:
            >>> dense = nn.Linear(784, 625, device="meta")
            >>> KronLinear.like_linear(dense, rank=2).factor_0.shape
            torch.Size([2, 25, 28])
        """
        linear = _check_linear(linear, "KronLinear.like_linear")
        w = linear.weight
        return cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            shapes=shapes,
            num_factors=num_factors,
            rank=rank,
            tied=tied,
            device=w.device,
            dtype=w.dtype,
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        shapes: Sequence[tuple[int, int]] | None = None,
        num_factors: int = 2,
        rank: int = 1,
        svd: SvdMethod = "auto",
    ) -> KronLinear:
        """The ``KronLinear`` nearest to a dense layer in Frobenius norm.

        Factors come from :func:`torchkron.nearest_kronecker`; the bias is copied. The
        relative error ``||W - W_kron||_F / ||W||_F`` is stored in
        ``approximation_error``. A ``rank`` above the largest achievable one
        (:func:`torchkron.factorization.max_kronecker_rank`) is lowered to it with a
        :class:`torchkron.factorization.RankClippedWarning`: ``layer.rank`` is the
        lowered value, ``layer.requested_rank`` the one asked for, and
        ``layer.rank_clipped`` is ``True``.

        Args:
            linear: the dense layer; its weight must be finite and not on the meta
                device (use :meth:`like_linear` there).
            shapes: factor shapes, as for the constructor.
            num_factors: number of factors when ``shapes`` is not given.
            rank: number of summed Kronecker products.
            svd: ``"auto"``, ``"full"`` or ``"randomized"``, see
                :func:`torchkron.nearest_kronecker`.

        Raises:
            TypeError: ``linear`` is not an ``nn.Linear``, or bad ``shapes``/``rank`` types.
            ValueError: the weight has NaN/Inf entries (named in the message) or is on
                the meta device; sizes that cannot be split.

        Examples:
            >>> dense = nn.Linear(784, 625)
            >>> layer = KronLinear.from_linear(dense, rank=4)
            >>> 0.0 < layer.approximation_error < 1.0
            True
        """
        caller = "KronLinear.from_linear"
        linear = _check_linear(linear, caller)
        w = linear.weight
        requested = _layer_rank(rank)
        resolved = (
            factor_shapes(linear.in_features, linear.out_features, num_factors)
            if shapes is None
            else check_shapes(shapes, linear.in_features, linear.out_features, caller)
        )
        # Validate the weight before clipping, so a bad weight never warns first.
        factors, error = kronecker_approximation(
            w, resolved, min(requested, max_kronecker_rank(resolved)), svd, caller
        )
        rank = clip_rank(requested, resolved, caller)
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            shapes=resolved,
            rank=rank,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            for param, value in zip(layer.factors, factors, strict=True):
                param.copy_(value)
            if linear.bias is not None and layer.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.approximation_error = error
        layer.requested_rank = requested
        return layer

    def load_dense(
        self, weight: Tensor, bias: Tensor | None = None, *, svd: SvdMethod = "auto"
    ) -> float:
        """Set the factors to the nearest Kronecker approximation of a dense ``weight``.

        The layer keeps its shapes and rank (terms above the largest achievable rank are
        set to zero). ``bias``, when given, is copied. Returns the relative Frobenius
        error, also stored in ``approximation_error``.

        Args:
            weight: ``(out_features, in_features)`` dense weight, finite.
            bias: ``(out_features,)`` or ``None`` to keep the current bias.
            svd: as for :func:`torchkron.nearest_kronecker`.

        Examples:
            >>> layer = KronLinear(12, 6, shapes=[(3, 4), (2, 3)], bias=False)
            >>> w = torch.kron(torch.randn(3, 4), torch.randn(2, 3))
            >>> layer.load_dense(w) < 1e-5
            True
        """
        caller = "KronLinear.load_dense"
        if self.tied:
            raise ValueError(
                f"{caller}: a tied layer (U (x) ... (x) U) cannot take a dense weight: its "
                f"nearest Kronecker approximation has different factors. Use an untied "
                f"layer (tied=False)."
            )
        expected = (self.out_features, self.in_features)
        if not isinstance(weight, Tensor) or tuple(weight.shape) != expected:
            got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(f"{caller}: weight must have shape {expected}, got {got}.")
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(
                f"{caller}: bias must have shape ({self.out_features},), got {tuple(bias.shape)}."
            )
        if bias is not None and self.bias is None:
            raise ValueError(f"{caller}: the layer has no bias (bias=False) but got one.")
        factors, error = kronecker_approximation(
            weight, self.shapes, min(self.rank, max_kronecker_rank(self.shapes)), svd, caller
        )
        with torch.no_grad():
            for param, value in zip(self.factors, factors, strict=True):
                param.zero_()
                param[: value.shape[0]].copy_(value)
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias)
        self.approximation_error = error
        return error

    @staticmethod
    @contextlib.contextmanager
    def convert_dense_checkpoints() -> Iterator[None]:
        """Within this block, ``load_state_dict`` converts dense checkpoints.

        A ``KronLinear`` whose entry in the state dict is a dense ``weight`` (and
        ``bias``), as saved by the ``nn.Linear`` it replaced, loads the nearest
        Kronecker approximation of it (:meth:`load_dense`) instead of failing. Outside
        the block such a checkpoint raises an error that names this fix.

        Examples:
            >>> dense = nn.Sequential(nn.Linear(16, 16))
            >>> model = nn.Sequential(KronLinear(16, 16))
            >>> with KronLinear.convert_dense_checkpoints():
            ...     _ = model.load_state_dict(dense.state_dict())
            >>> model[0].approximation_error is not None
            True
        """
        token = _CONVERT_DENSE.set(True)
        try:
            yield
        finally:
            _CONVERT_DENSE.reset(token)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        dense_key = prefix + "weight"
        factor_keys = [prefix + n for n in self._parameters if n != "bias"]
        dense = dense_key in state_dict and not any(k in state_dict for k in factor_keys)
        if dense and _CONVERT_DENSE.get():
            weight = state_dict[dense_key]
            bias_key = prefix + "bias"
            bias = state_dict.get(bias_key)
            if bias is not None and self.bias is None:
                unexpected_keys.append(bias_key)
                bias = None
            elif bias is None and self.bias is not None:
                missing_keys.append(bias_key)
            try:
                self.load_dense(weight, bias)
            except (TypeError, ValueError) as exc:
                error_msgs.append(f"while converting the dense checkpoint {dense_key!r}: {exc}")
            return
        if not dense or not _strict_load():
            # A factor checkpoint, or a lenient load (strict=False): torch's own handling,
            # the dense weight listed as unexpected and the factors as missing.
            super()._load_from_state_dict(
                state_dict,
                prefix,
                local_metadata,
                strict,
                missing_keys,
                unexpected_keys,
                error_msgs,
            )
            return
        weight = state_dict[dense_key]
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        name = f"{prefix[:-1]!r}" if prefix else "(this layer)"
        error_msgs.append(
            f"KronLinear {name}: the checkpoint holds a dense weight {dense_key!r} of shape "
            f"{shape}, not this layer's Kronecker factors {factor_keys}. To load it as the "
            f"nearest Kronecker approximation, wrap the call: `with "
            f"KronLinear.convert_dense_checkpoints(): model.load_state_dict(state_dict)`, or "
            f"call layer.load_dense(weight, bias); or load it into the dense model before "
            f"kronify."
        )

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (builds the dense weight)."""
        ref = self.factors[0]
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None and linear.bias is not None:
                linear.bias.copy_(self.bias)
        return linear
