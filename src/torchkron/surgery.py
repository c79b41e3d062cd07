"""Model-wide replacement of dense layers by ``KronLinear`` (``kronify``) and its undo.

``kronify`` works in three phases so that a model is never left half-converted: it
*plans* (which modules match, which are skipped and why, per-layer shapes and ranks),
*builds* every new ``KronLinear`` without touching the model, and only then *swaps*
them in (rolling back if a swap fails). Any bad argument raises before the model is
modified.

Layer types are read through a registry of converters (:data:`KRONIFY_MAPPING`,
:func:`register_converter`): a converter reads a module as a dense ``y = x W^T + b``
(:class:`DenseView`) or raises :class:`Unconvertible` with the reason the report shows.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from torchkron.budget import LayerBudget, allocate_ranks, kron_spectrum, ranks_for_error
from torchkron.factorization import (
    RankClippedWarning,
    check_shapes,
    factor_shapes,
    nearest_kronecker,
)
from torchkron.linear import KronLinear

__all__ = [
    "KRONIFY_MAPPING",
    "PLAN_FORMAT",
    "DenseView",
    "KronifyReport",
    "LayerConverter",
    "LayerReport",
    "Unconvertible",
    "apply_plan",
    "kronify",
    "kronify_plan",
    "merge",
    "register_converter",
]

ShapesSpec = (
    Sequence[tuple[int, int]]
    | Mapping[str, Sequence[tuple[int, int]]]
    | Callable[[str, nn.Module], Sequence[tuple[int, int]] | None]
    | None
)
"""Factor shapes for ``kronify``: one list for every layer, a ``{pattern: shapes}`` dict
(first matching pattern wins), or a function ``(name, module) -> shapes | None``."""

PLAN_FORMAT = "torchkron.plan/1"
"""The ``format`` tag of a plan dict (:func:`kronify_plan`)."""

_T = TypeVar("_T")


class Unconvertible(ValueError):
    """Raised by a converter for a module it matches but cannot convert.

    The message is the reason shown in the :class:`KronifyReport` (the module is left
    unchanged and listed as skipped).
    """


@dataclass(frozen=True)
class DenseView:
    """A module read as the dense map ``y = x W^T + b``.

    Attributes:
        weight: ``(out_features, in_features)``, as ``nn.Linear`` stores it (may be a
            transposed view, e.g. of HF ``Conv1D``'s ``(in, out)`` weight).
        bias: ``(out_features,)`` or ``None``.
        note: shown in the report for a converted layer (e.g. a caveat).
    """

    weight: Tensor
    bias: Tensor | None
    note: str = ""


@dataclass(frozen=True)
class LayerConverter:
    """How ``kronify`` reads a layer type, and how ``merge`` rebuilds it.

    Attributes:
        read: ``module -> DenseView``; raise :class:`Unconvertible` for a module of this
            type that cannot be converted (the reason lands in the report).
        build: ``(weight (out, in), bias) -> module`` of the original type, used by
            :func:`merge`; ``None``: ``merge`` gives an ``nn.Linear``.
    """

    read: Callable[[nn.Module], DenseView]
    build: Callable[[Tensor, Tensor | None], nn.Module] | None = None


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _read_linear(module: nn.Module) -> DenseView:
    assert isinstance(module, nn.Linear)
    if isinstance(module.weight, nn.parameter.UninitializedParameter):
        raise Unconvertible(
            "LazyLinear whose in_features is not known yet; run one forward pass through "
            "the model before kronify"
        )
    note = ""
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        # nn.MultiheadAttention passes out_proj.weight to F.multi_head_attention_forward.
        note = "MultiheadAttention reads out_proj.weight: fewer parameters, dense compute"
    return DenseView(module.weight, module.bias, note)


def _build_linear(weight: Tensor, bias: Tensor | None) -> nn.Module:
    return _dense_linear(nn.Linear, weight, bias)


def _build_out_proj(weight: Tensor, bias: Tensor | None) -> nn.Module:
    return _dense_linear(nn.modules.linear.NonDynamicallyQuantizableLinear, weight, bias)


def _dense_linear(cls: type[nn.Linear], weight: Tensor, bias: Tensor | None) -> nn.Linear:
    out_f, in_f = weight.shape
    layer = cls(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None and layer.bias is not None:
            layer.bias.copy_(bias)
    return layer


def _read_mha(module: nn.Module) -> DenseView:
    raise Unconvertible(
        "MultiheadAttention's packed in_proj_weight (3*embed_dim x embed_dim, or "
        "q/k/v_proj_weight) is a parameter read directly by F.multi_head_attention_forward, "
        "not a submodule, so it cannot be replaced; its out_proj is converted on its own"
    )


def _read_conv1d(module: nn.Module) -> DenseView:
    # transformers.pytorch_utils.Conv1D: y = x @ W + b with W stored (in, out).
    weight: Tensor = getattr(module, "weight")  # noqa: B009 (typed as Tensor | Module)
    bias: Tensor | None = getattr(module, "bias", None)
    return DenseView(weight.t(), bias)


def _build_conv1d(weight: Tensor, bias: Tensor | None) -> nn.Module:
    from transformers.pytorch_utils import Conv1D  # only reached for a converted Conv1D

    out_f, in_f = weight.shape
    layer: Any = Conv1D(out_f, in_f).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight.t())
        if bias is None:
            layer.bias = None
        else:
            layer.bias.copy_(bias)
    built: nn.Module = layer
    return built


KRONIFY_MAPPING: dict[type[nn.Module] | str, LayerConverter | None] = {
    nn.Linear: LayerConverter(_read_linear, _build_linear),
    nn.modules.linear.NonDynamicallyQuantizableLinear: LayerConverter(
        _read_linear, _build_out_proj
    ),
    nn.MultiheadAttention: LayerConverter(_read_mha),
    # By name, so that torchkron never imports transformers.
    "transformers.pytorch_utils.Conv1D": LayerConverter(_read_conv1d, _build_conv1d),
}
"""The layer types ``kronify`` converts: ``type`` (or its qualified name, for types from
packages torchkron must not import) -> :class:`LayerConverter`, or ``None`` to opt a type
(and, by the MRO lookup, its subclasses) out. Extend it with :func:`register_converter`."""


def register_converter(
    layer_type: type[nn.Module] | str,
    read: Callable[[nn.Module], DenseView] | None,
    *,
    build: Callable[[Tensor, Tensor | None], nn.Module] | None = None,
) -> None:
    """Teach ``kronify`` (and ``merge``) a layer type.

    A module matches the nearest registered class in its MRO, so registering a base
    class covers its subclasses; registering ``read=None`` opts a type out.

    Args:
        layer_type: the class, or its qualified name ``"package.module.Class"`` (matched
            without importing the package).
        read: ``module -> DenseView`` (``weight`` as ``(out, in)``); raise
            :class:`Unconvertible` for a module that cannot be converted. ``None``:
            never convert this type.
        build: ``(weight, bias) -> module`` of the original type for :func:`merge`;
            default ``nn.Linear``.

    Examples:
        >>> class Scaled(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = nn.Parameter(torch.randn(6, 4))
        ...     def forward(self, x):
        ...         return 2 * x @ self.w.T
        >>> register_converter(Scaled, lambda m: DenseView(2 * m.w, None))
        >>> net, report = kronify(nn.Sequential(Scaled()), shapes=[(3, 2), (2, 2)])
        >>> type(net[0]).__name__
        'KronLinear'
        >>> del KRONIFY_MAPPING[Scaled]
    """
    if not isinstance(layer_type, str | type):
        raise TypeError(
            f"register_converter: layer_type must be a class or a qualified class name, "
            f"got {layer_type!r}."
        )
    KRONIFY_MAPPING[layer_type] = None if read is None else LayerConverter(read, build)


_Table = Mapping[type[nn.Module] | str, LayerConverter | None]


def _lookup(
    module: nn.Module, table: _Table, subclasses: bool
) -> tuple[LayerConverter | None, str]:
    """``(converter, qualified name)`` of the nearest registered class in the MRO; with
    ``subclasses=False`` a subclass gets ``(None, name of the class it derives from)``."""
    classes = type(module).__mro__ if subclasses else type(module).__mro__[:1]
    for cls in classes:
        for key in (cls, _qualname(cls)):
            if key in table:
                converter = table[key]
                return converter, "" if converter is None else _qualname(cls)
    if not subclasses:
        for cls in type(module).__mro__[1:]:
            for key in (cls, _qualname(cls)):
                if table.get(key) is not None:
                    return None, _qualname(cls)
    return None, ""


@dataclass(frozen=True)
class LayerReport:
    """What ``kronify`` did to one matched module.

    ``weights_*`` count the layer's weights (biases excluded); ``aliases`` are the other
    names of a module used at several places.
    """

    name: str
    in_features: int
    out_features: int
    replaced: bool
    weights_before: int
    weights_after: int
    shapes: tuple[tuple[int, int], ...] = ()
    rank: int = 1
    tied: bool = False
    approximation_error: float | None = None
    reason: str = ""
    kind: str = ""
    aliases: tuple[str, ...] = ()
    note: str = ""


@dataclass
class KronifyReport:
    """The modules ``kronify`` matched, replaced or skipped (with the reason).

    Attributes:
        layers: one row per matched module (a shared module once).
        params_before: ``sum(p.numel() for p in model.parameters())`` before (shared
            parameters counted once).
        params_after: the same after the conversion.
        budget: how ranks were chosen (``max_error=...``, ``target_params=...``) or ``""``.
    """

    layers: list[LayerReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    budget: str = ""

    @property
    def replaced(self) -> list[LayerReport]:
        return [r for r in self.layers if r.replaced]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if not r.replaced]

    @property
    def weights_before(self) -> int:
        """Weights of the matched layers before (biases excluded)."""
        return sum(r.weights_before for r in self.layers)

    @property
    def weights_after(self) -> int:
        return sum(r.weights_after for r in self.layers)

    def __str__(self) -> str:
        head = ("module", "type", "in->out", "factors", "rank", "weights", "error")
        rows: list[tuple[str, ...]] = [head]
        notes = ["note"]
        for r in self.layers:
            factors = " (x) ".join(f"{o}x{n}" for o, n in r.shapes) or "-"
            if r.tied:
                factors += " tied"
            err = "-" if r.approximation_error is None else f"{r.approximation_error:.4f}"
            name = r.name + (f" (= {', '.join(r.aliases)})" if r.aliases else "")
            rows.append(
                (
                    name,
                    r.kind or "-",
                    f"{r.in_features}->{r.out_features}",
                    factors,
                    str(r.rank) if r.replaced else "-",
                    f"{r.weights_before:,} -> {r.weights_after:,}",
                    err,
                )
            )
            note = "replaced" if r.replaced else f"skipped: {r.reason}"
            notes.append(note + (f" ({r.note})" if r.note else ""))
        widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
        # The note column is last and never padded: one long reason must not widen every row.
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + "  " + note
            for row, note in zip(rows, notes, strict=True)
        ]
        before, after = self.params_before, self.params_after
        ratio = f" ({before / after:.2f}x fewer)" if after and after < before else ""
        lines.append(f"model parameters: {before:,} -> {after:,}{ratio}")
        wb, wa = self.weights_before, self.weights_after
        lines.append(
            f"weights in matched layers: {wb:,} -> {wa:,}; "
            f"{len(self.replaced)} replaced, {len(self.skipped)} skipped"
        )
        if self.budget:
            lines.append(f"ranks chosen by {self.budget}")
        return "\n".join(lines)


def _matches(name: str, patterns: str | Sequence[str] | None) -> bool:
    """PEFT's rule: a string is a regex matched against the full name; a list matches a
    name equal to an entry or ending in ``.entry``."""
    if patterns is None:
        return True
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _key_matches(key: str, name: str) -> bool:
    """A per-layer key (PEFT's ``rank_pattern``): a regex for the full name or a dotted
    suffix of it, so ``"query"`` matches ``"encoder.layer.0.attention.self.query"``."""
    try:
        return re.fullmatch(rf"(?:.*\.)?(?:{key})", name) is not None
    except re.error as exc:
        raise ValueError(f"kronify: pattern {key!r} is not a valid regex: {exc}.") from None


def _per_layer(
    spec: _T | Mapping[str, _T], name: str, default: _T, used: set[str], what: str
) -> _T:
    """The value for layer ``name``: ``spec`` itself, or the first matching pattern's."""
    if not isinstance(spec, Mapping):
        return spec
    for key, value in spec.items():
        if _key_matches(key, name):
            used.add(f"{what}:{key}")
            return value
    return default


def _check_int(what: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"kronify: {what} must be an int >= {minimum}, got {value!r}.")


def _check_spec(what: str, spec: object) -> None:
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"kronify: {what} keys are layer-name patterns (str), got {key!r}."
                )
            _check_int(f"{what}[{key!r}]", value)
    else:
        _check_int(what, spec)


@dataclass
class _Entry:
    """One matched module, from planning to building."""

    names: list[str]
    module: nn.Module
    kind: str
    source: str
    view: DenseView | None = None
    reason: str = ""
    shapes: tuple[tuple[int, int], ...] = ()
    rank: int = 1
    fixed_rank: bool = False
    new: KronLinear | None = None
    note: str = ""

    @property
    def name(self) -> str:
        return self.names[0]


def _numel(p: Tensor) -> int:
    # An uninitialised LazyLinear parameter has no size yet.
    return 0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel()


def _count_params(model: nn.Module) -> int:
    return sum(_numel(p) for p in model.parameters())


def _module_names(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
    return names


def kronify(
    model: nn.Module,
    *,
    target: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    shapes: ShapesSpec = None,
    num_factors: int | Mapping[str, int] = 2,
    rank: int | Mapping[str, int] = 1,
    tied: bool = False,
    from_dense: bool = True,
    mapping: _Table | None = None,
    subclasses: bool = True,
    shared: Literal["skip", "reuse"] = "skip",
    max_error: float | None = None,
    target_params: int | None = None,
    compression: float | None = None,
    max_rank: int | None = None,
) -> tuple[nn.Module, KronifyReport]:
    """Replace the dense layers of ``model`` with ``KronLinear``, in place.

    Matched modules are ``nn.Linear`` and its subclasses (``nn.MultiheadAttention``'s
    ``out_proj`` included), HF ``Conv1D`` (GPT-2) and any type added with
    :func:`register_converter`. Every matched module is in the report: replaced, or
    skipped with the reason (size that does not factor, a weight tied to another
    module, a module used at several places, a ``LazyLinear`` not yet initialised,
    ``MultiheadAttention``'s packed ``in_proj_weight``...). Either every planned layer
    is replaced or, on an error, the model is left unchanged.

    Args:
        model: the model to modify; it is changed in place and returned.
        target: which modules to consider, by qualified name: a regex matched against the
            whole name, or a list of names/suffixes (``["fc1", "mlp.proj"]``). Default:
            every module of a registered type.
        exclude: names to leave alone, in the same forms as ``target``.
        shapes: factor shapes: one list for every layer, a ``{pattern: shapes}`` dict, or
            a function ``(name, module) -> shapes | None``. ``None``: balanced shapes
            from :func:`torchkron.factor_shapes` with ``num_factors``. Explicit shapes
            that do not fit a layer raise.
        num_factors: number of factors when shapes are not given; an int or a
            ``{pattern: int}`` dict (layers matching no pattern: 2).
        rank: number of summed Kronecker products; an int or a ``{pattern: int}`` dict
            like PEFT's ``rank_pattern`` (first match wins; ``".*"`` as the last key sets
            the default, else 1). A pattern is a regex for the full name or a dotted
            suffix (``"query"`` matches ``"...attention.self.query"``); one that matches
            no targeted layer raises.
        tied: one shared factor per layer (fresh init: a dense weight has no tied
            nearest form, so ``from_dense`` does not apply).
        from_dense: initialise from the dense weights by
            :func:`torchkron.nearest_kronecker` (``True``) or afresh (``False``, the one
            that works on a ``meta``-device model).
        mapping: the converter registry to use instead of :data:`KRONIFY_MAPPING`.
        subclasses: match subclasses of registered types (``True``); ``False`` matches
            exact types only and reports the subclasses it leaves out.
        shared: a module used at several places: ``"skip"`` it (reported) or
            ``"reuse"``: convert it once and put the one ``KronLinear`` at every place.
            Parameters tied between different modules (GPT-2's ``lm_head`` and ``wte``)
            are always skipped and the tie is kept.
        max_error: choose each layer's rank as the smallest whose relative Frobenius
            error is at most this (two factors only).
        target_params: choose ranks so that the whole model has at most this many
            parameters, greedily adding the rank step with the largest reduction of
            squared relative error per added parameter (two factors only).
        compression: like ``target_params = params_before / compression``.
        max_rank: the largest rank ``max_error``/``target_params`` may choose.

    Returns:
        ``(model, report)``; ``print(report)`` gives one row per matched module with its
        shapes, chosen rank, weights before/after and error, and the model's real
        parameter counts before and after.

    Raises:
        ValueError: a bad argument (a rank of 0, a pattern that matches nothing, shapes
            that do not fit a targeted layer, dense initialisation of meta tensors, an
            unreachable ``target_params``); the model is unchanged.

    Examples:
        >>> net = nn.Sequential(nn.Linear(784, 625), nn.ReLU(), nn.Linear(625, 10))
        >>> net, report = kronify(net, target=["0"])
        >>> type(net[0]).__name__, report.weights_after
        ('KronLinear', 1400)
        >>> report.params_after == sum(p.numel() for p in net.parameters())
        True
    """
    table = KRONIFY_MAPPING if mapping is None else mapping
    _check_spec("rank", rank)
    _check_spec("num_factors", num_factors)
    if shared not in ("skip", "reuse"):
        raise ValueError(f"kronify: shared must be 'skip' or 'reuse', got {shared!r}.")
    budgets = [
        k
        for k, v in {
            "max_error": max_error,
            "target_params": target_params,
            "compression": compression,
        }.items()
        if v is not None
    ]
    if len(budgets) > 1:
        raise ValueError(f"kronify: give at most one of {', '.join(budgets)}.")
    if budgets and (tied or not from_dense):
        raise ValueError(
            f"kronify: {budgets[0]} chooses ranks from the nearest Kronecker factors of the "
            f"dense weights, which needs from_dense=True and tied=False."
        )
    if budgets and isinstance(rank, int) and rank != 1:
        raise ValueError(
            f"kronify: rank={rank} and {budgets[0]} both set the ranks; drop rank, or give "
            f"a {{pattern: rank}} dict to fix the rank of some layers."
        )
    if max_error is not None and not (isinstance(max_error, int | float) and 0 < max_error < 1):
        raise ValueError(f"kronify: max_error must be in (0, 1), got {max_error!r}.")
    if target_params is not None:
        _check_int("target_params", target_params)
    if compression is not None and not (
        isinstance(compression, int | float)
        and not isinstance(compression, bool)
        and compression > 1
    ):
        raise ValueError(f"kronify: compression must be a number > 1, got {compression!r}.")
    if max_rank is not None:
        _check_int("max_rank", max_rank)

    params_before = _count_params(model)
    names_of = _module_names(model)
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)

    entries: list[_Entry] = []
    used: set[str] = set()
    replaced_prefixes: list[str] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not name or id(module) in seen:
            continue
        seen.add(id(module))
        names = names_of[id(module)]
        if not any(_matches(n, target) for n in names):
            continue
        if exclude is not None and any(_matches(n, exclude) for n in names):
            continue
        if any(n.startswith(p) for n in names for p in replaced_prefixes):
            continue  # inside a module that is being replaced
        converter, source = _lookup(module, table, subclasses)
        kind = type(module).__name__
        entry = _Entry(list(names), module, kind, source)
        if converter is None:
            if not source:
                continue
            entry.reason = (
                f"{kind} is a subclass of {source.rsplit('.', 1)[-1]} and subclasses=False; "
                f"pass subclasses=True or register_converter({kind}, ...)"
            )
            entries.append(entry)
            continue
        entries.append(entry)
        try:
            entry.view = converter.read(module)
        except Unconvertible as exc:
            entry.reason = str(exc)
            continue
        tie = _tied_elsewhere(module, names, owners)
        if tie:
            entry.reason = tie
            continue
        if len(names) > 1 and shared == "skip":
            entry.reason = (
                f"the module is used at {len(names)} places ({', '.join(names)}); pass "
                f"shared='reuse' to convert it once and use the one KronLinear at every place"
            )
            continue
        entry.reason = _plan_layer(entry, shapes, num_factors, rank, tied, used, budgets)
        if not entry.reason:
            replaced_prefixes.extend(n + "." for n in names)

    _check_patterns_used(shapes, num_factors, rank, used, entries)
    planned = [e for e in entries if not e.reason]
    for e in planned:
        assert e.view is not None
        if e.view.weight.is_meta and (from_dense or budgets):
            raise ValueError(
                f"kronify: {e.name} has its weights on the meta device, which hold no values "
                f"to factor; pass from_dense=False (fresh init), and no max_error/"
                f"target_params/compression, or load the weights first."
            )

    budget = ""
    if budgets:
        budget = _choose_ranks(
            planned,
            entries,
            params_before,
            max_error,
            target_params,
            compression,
            max_rank,
        )
        planned = [e for e in entries if not e.reason]

    # Build every new layer before touching the model: an error here changes nothing.
    try:
        for e in planned:
            e.new = _build(e, tied=tied, from_dense=from_dense)
    except Exception as exc:
        _add_note(exc, f"kronify: while building {e.name}; the model is unchanged.")
        raise
    _swap(model, [(n, e.new) for e in planned for n in e.names if e.new is not None])

    report = KronifyReport(params_before=params_before, budget=budget)
    matched = {n for e in entries for n in e.names}
    for e in entries:
        report.layers.append(_layer_report(e, matched))
    report.params_after = _count_params(model)
    _sync_config(model)
    return model, report


def _add_note(exc: BaseException, note: str) -> None:
    add = getattr(exc, "add_note", None)  # Python >= 3.11
    if add is not None:
        add(note)


def _tied_elsewhere(module: nn.Module, names: list[str], owners: dict[int, list[str]]) -> str:
    """The reason a module's parameter is shared with another module, or ``""``."""
    for pname, p in module.named_parameters(remove_duplicate=False):
        own = {f"{n}.{pname}" for n in names}
        others = [o for o in owners.get(id(p), []) if o not in own]
        if others:
            return (
                f"{pname} is tied to {others[0]} (a shared parameter); converting would untie "
                f"it, so it stays dense and the tie is kept. Exclude it, or untie first "
                f"(e.g. tie_word_embeddings=False in an HF config)"
            )
    return ""


def _plan_layer(
    e: _Entry,
    shapes: ShapesSpec,
    num_factors: int | Mapping[str, int],
    rank: int | Mapping[str, int],
    tied: bool,
    used: set[str],
    budgets: list[str],
) -> str:
    """Fill in shapes and rank; return a skip reason, or ``""``."""
    assert e.view is not None
    out_f, in_f = (int(d) for d in e.view.weight.shape)
    layer_shapes: Sequence[tuple[int, int]] | None
    if callable(shapes):
        layer_shapes = shapes(e.name, e.module)
    elif isinstance(shapes, Mapping):
        no_shapes: Sequence[tuple[int, int]] | None = None
        layer_shapes = _per_layer(shapes, e.name, no_shapes, used, "shapes")
    else:
        layer_shapes = shapes
    k = _per_layer(num_factors, e.name, 2, used, "num_factors")
    e.rank = _per_layer(rank, e.name, 1, used, "rank")
    e.fixed_rank = isinstance(rank, Mapping) and any(_key_matches(key, e.name) for key in rank)
    if layer_shapes is not None:
        # Shapes the user gave for this layer must fit it: a mistake, not a skip.
        e.shapes = tuple(check_shapes(layer_shapes, in_f, out_f, f"kronify: {e.name}"))
    else:
        try:
            e.shapes = tuple(factor_shapes(in_f, out_f, k))
        except ValueError as exc:
            return str(exc)
    if tied and len(set(e.shapes)) != 1:
        return f"tied=True needs equal factor shapes, got {' (x) '.join(map(str, e.shapes))}"
    if budgets and not e.fixed_rank and len(e.shapes) != 2:
        raise ValueError(
            f"kronify: {budgets[0]} chooses ranks from the singular values of the two-factor "
            f"rearrangement, but {e.name} has {len(e.shapes)} factors; use num_factors=2 "
            f"or fix its rank with rank={{{e.name!r}: R}}."
        )
    return ""


def _check_patterns_used(
    shapes: ShapesSpec,
    num_factors: int | Mapping[str, int],
    rank: int | Mapping[str, int],
    used: set[str],
    entries: list[_Entry],
) -> None:
    for what, spec in (("shapes", shapes), ("num_factors", num_factors), ("rank", rank)):
        if not isinstance(spec, Mapping):
            continue
        for key in spec:
            if f"{what}:{key}" in used:
                continue
            hits = [e for e in entries if any(_key_matches(key, n) for n in e.names)]
            if hits and all(e.view is None or e.reason for e in hits):
                continue  # it names layers that are skipped (tied, shared...): reported
            if hits:
                raise ValueError(
                    f"kronify: {what} pattern {key!r} never applies: an earlier pattern "
                    f"matches each layer it matches ({hits[0].name!r}...); the first matching "
                    f"pattern wins, so put the more specific one first."
                )
            examples = ", ".join(repr(e.name) for e in entries[:3]) or "none"
            raise ValueError(
                f"kronify: {what} pattern {key!r} matches no layer that kronify converts "
                f"(targeted layers: {examples}{', ...' if len(entries) > 3 else ''}). A "
                f"pattern is a regex for the full name or a dotted suffix, e.g. 'query' "
                f"or r'layer\\.0\\..*'."
            )


def _choose_ranks(
    planned: list[_Entry],
    entries: list[_Entry],
    params_before: int,
    max_error: float | None,
    target_params: int | None,
    compression: float | None,
    max_rank: int | None,
) -> str:
    free = [e for e in planned if not e.fixed_rank]
    budgets: list[LayerBudget] = []
    for e in free:
        assert e.view is not None
        dense = e.view.weight.numel()
        spectrum = kron_spectrum(e.view.weight, e.shapes)
        budgets.append(LayerBudget(e.name, dense, sum(o * n for o, n in e.shapes), spectrum))
    if max_error is not None:
        chosen = ranks_for_error(budgets, max_error, max_rank)
        desc = f"max_error={max_error}"
    else:
        if target_params is None:
            assert compression is not None
            target_params = int(params_before / compression)
        fixed_cost = 0
        for e in planned:
            assert e.view is not None
            if e.fixed_rank:
                fixed_cost += e.rank * sum(o * n for o, n in e.shapes) - e.view.weight.numel()
        available = target_params - (params_before + fixed_cost)
        chosen = allocate_ranks(budgets, available, max_rank)
        desc = (
            f"target_params={target_params:,}"
            if compression is None
            else f"compression={compression} (target_params={target_params:,})"
        )
    for e in free:
        choice = chosen[e.name]
        if isinstance(choice, str):
            e.reason = choice
        else:
            e.rank = choice
    return desc


def _build(e: _Entry, *, tied: bool, from_dense: bool) -> KronLinear:
    assert e.view is not None
    w = e.view.weight
    out_f, in_f = (int(d) for d in w.shape)
    e.note = e.view.note
    factors: list[Tensor] | None = None
    error: float | None = None
    if from_dense and tied:
        e.note = "tied: fresh init, a dense weight has no tied nearest form"
    elif from_dense:
        with warnings.catch_warnings():
            # The report says so (below); one warning per layer would only repeat it.
            warnings.simplefilter("ignore", RankClippedWarning)
            factors, error = nearest_kronecker(w, list(e.shapes), e.rank)
        achieved = int(factors[0].shape[0])
        if achieved < e.rank:
            clipped = f"rank {e.rank} clipped to {achieved}, the largest these shapes allow"
            e.note = f"{e.note}; {clipped}" if e.note else clipped
            e.rank = achieved
    layer = KronLinear(
        in_f,
        out_f,
        bias=e.view.bias is not None,
        shapes=list(e.shapes),
        rank=e.rank,
        tied=tied,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        if factors is not None:
            for param, value in zip(layer.factors, factors, strict=True):
                param.copy_(value)
            layer.approximation_error = error
        if e.view.bias is not None and layer.bias is not None:
            layer.bias.copy_(e.view.bias)
    _set_source(layer, e.source)
    return layer


def _set_source(layer: KronLinear, source: str) -> None:
    # Plain attribute (not state): the type merge() rebuilds and the plan records.
    layer.__dict__["_torchkron_source"] = source


def _source(layer: KronLinear) -> str:
    return str(layer.__dict__.get("_torchkron_source", "torch.nn.modules.linear.Linear"))


def _swap(model: nn.Module, changes: list[tuple[str, nn.Module]]) -> None:
    """Put each new module at its name; on any error put every old one back."""
    done: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, new in changes:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            old = parent.get_submodule(child)
            setattr(parent, child, new)
            done.append((parent, child, old))
    except Exception as exc:
        for parent, child, old in reversed(done):
            setattr(parent, child, old)
        _add_note(exc, "kronify: the model was restored unchanged.")
        raise


def _layer_report(e: _Entry, matched: set[str]) -> LayerReport:
    # Weights other than biases, less those of matched submodules (their own rows).
    inner = {n[len(e.name) + 1 :] + "." for n in matched if n.startswith(e.name + ".")}
    before = sum(
        _numel(p)
        for n, p in e.module.named_parameters()
        if not n.endswith("bias") and not any(n.startswith(i) for i in inner)
    )
    in_f = out_f = 0
    if e.view is not None:
        out_f, in_f = (int(d) for d in e.view.weight.shape)
    else:
        in_f = int(getattr(e.module, "in_features", 0) or 0)
        out_f = int(getattr(e.module, "out_features", 0) or 0)
    aliases = tuple(e.names[1:])
    if e.new is None:
        return LayerReport(
            e.name,
            in_f,
            out_f,
            False,
            before,
            before,
            shapes=e.shapes,
            rank=e.rank,
            reason=e.reason,
            kind=e.kind,
            aliases=aliases,
        )
    new = e.new
    return LayerReport(
        e.name,
        in_f,
        out_f,
        True,
        before,
        new.num_weights(),
        shapes=new.shapes,
        rank=new.rank,
        tied=new.tied,
        approximation_error=new.approximation_error,
        kind=e.kind,
        aliases=aliases,
        note=e.note,
    )


# --- plans: the structure of a kronified model, to re-create it before loading weights ---


def kronify_plan(model: nn.Module) -> dict[str, Any]:
    """The structure of every ``KronLinear`` in ``model``, as a JSON-able dict.

    Each entry lists the layer's names (several for a reused module), sizes, factor
    shapes, rank, ``tied``, ``bias`` and the type it replaced; :func:`apply_plan`
    re-creates the layers in a fresh model so that a ``state_dict`` loads into it.

    Examples:
        >>> net, _ = kronify(nn.Sequential(nn.Linear(8, 8)), from_dense=False)
        >>> kronify_plan(net)["layers"][0]["shapes"]
        [[4, 2], [2, 4]]
    """
    layers = []
    for names, layer in _kron_layers(model):
        layers.append(
            {
                "names": names,
                "in_features": layer.in_features,
                "out_features": layer.out_features,
                "shapes": [list(s) for s in layer.shapes],
                "rank": layer.rank,
                "tied": layer.tied,
                "bias": layer.bias is not None,
                "source": _source(layer),
            }
        )
    return {"format": PLAN_FORMAT, "layers": layers}


def _kron_layers(model: nn.Module) -> list[tuple[list[str], KronLinear]]:
    names_of = _module_names(model)
    out: list[tuple[list[str], KronLinear]] = []
    seen: set[int] = set()
    for _, module in model.named_modules():
        if isinstance(module, KronLinear) and id(module) not in seen and id(module) in names_of:
            seen.add(id(module))
            out.append((names_of[id(module)], module))
    return out


def apply_plan(model: nn.Module, plan: Mapping[str, Any]) -> nn.Module:
    """Re-create the ``KronLinear`` layers of a :func:`kronify_plan` in ``model``.

    Each named module is replaced by a freshly initialised ``KronLinear`` of the recorded
    structure (on the device and dtype of the module it replaces), so that the saved
    ``state_dict`` then loads strictly. Reused modules become one shared layer again.
    Sizes are checked against the module being replaced; nothing changes on an error.

    Args:
        model: a model of the architecture that was kronified (e.g. built from its config).
        plan: the dict from :func:`kronify_plan`.

    Returns:
        ``model``, changed in place.
    """
    if not isinstance(plan, Mapping) or plan.get("format") != PLAN_FORMAT:
        got = plan.get("format") if isinstance(plan, Mapping) else type(plan).__name__
        raise ValueError(
            f"apply_plan: not a torchkron plan (format {got!r}, expected {PLAN_FORMAT!r}); "
            f"make one with torchkron.kronify_plan(model)."
        )
    changes: list[tuple[str, nn.Module]] = []
    for entry in plan["layers"]:
        names = list(entry["names"])
        try:
            old = model.get_submodule(names[0])
        except AttributeError:
            raise ValueError(
                f"apply_plan: the model has no module {names[0]!r}; the plan was made for "
                f"another architecture."
            ) from None
        in_f, out_f = int(entry["in_features"]), int(entry["out_features"])
        ref = _reference_tensor(old)
        size = _dense_size(old)
        if size is not None and size != (out_f, in_f):
            raise ValueError(
                f"apply_plan: {names[0]} is {size[1]} -> {size[0]} in the model but "
                f"{in_f} -> {out_f} in the plan; the plan was made for another config."
            )
        layer = KronLinear(
            in_f,
            out_f,
            bias=bool(entry["bias"]),
            shapes=[tuple(s) for s in entry["shapes"]],
            rank=int(entry["rank"]),
            tied=bool(entry["tied"]),
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )
        _set_source(layer, str(entry.get("source", "torch.nn.modules.linear.Linear")))
        changes.extend((n, layer) for n in names)
    _swap(model, changes)
    _sync_config(model)
    return model


def _reference_tensor(module: nn.Module) -> Tensor | None:
    for p in module.parameters():
        if not isinstance(p, nn.parameter.UninitializedParameter):
            return p
    return None


def _dense_size(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, KronLinear):
        return (module.out_features, module.in_features)
    converter, _ = _lookup(module, KRONIFY_MAPPING, True)
    if converter is None:
        return None
    try:
        w = converter.read(module).weight
    except Unconvertible:
        return None
    return (int(w.shape[0]), int(w.shape[1]))


def _sync_config(model: nn.Module) -> None:
    """Keep an HF model's ``config.torchkron_plan`` equal to its structure, so that
    ``save_pretrained`` writes the plan into config.json."""
    config = getattr(model, "config", None)
    if config is None or not type(config).__module__.startswith("transformers."):
        return
    plan = kronify_plan(model)
    if plan["layers"]:
        config.torchkron_plan = plan
    elif hasattr(config, "torchkron_plan"):
        del config.torchkron_plan


def merge(model: nn.Module) -> nn.Module:
    """Turn every ``KronLinear`` in ``model`` back into a dense layer, in place.

    Each layer becomes the type it replaced (``nn.Linear``, HF ``Conv1D``, ...) with
    ``W`` equal to :meth:`KronLinear.to_linear`'s weight bit for bit; a layer reused at
    several places becomes one dense layer used at the same places. The inverse of
    :func:`kronify` up to the approximation it made.

    Args:
        model: the model; a bare ``KronLinear`` is returned as its ``nn.Linear``.

    Returns:
        ``model`` (changed in place), or the dense layer for a bare ``KronLinear``.

    Examples:
        >>> net, _ = kronify(nn.Sequential(nn.Linear(8, 8)), rank=2)
        >>> type(merge(net)[0]).__name__
        'Linear'
    """
    if isinstance(model, KronLinear):
        return _dense_of(model)
    changes: list[tuple[str, nn.Module]] = []
    for names, layer in _kron_layers(model):
        dense = _dense_of(layer)
        changes.extend((n, dense) for n in names)
    _swap(model, changes)
    _sync_config(model)
    return model


def _dense_of(layer: KronLinear) -> nn.Module:
    linear = layer.to_linear()
    source = _source(layer)
    build = _builder(source)
    if build is None:
        return linear
    return build(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())


def _builder(source: str) -> Callable[[Tensor, Tensor | None], nn.Module] | None:
    converter = KRONIFY_MAPPING.get(source)
    if converter is None:
        module_name, _, cls_name = source.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError):
            return None
        converter = KRONIFY_MAPPING.get(cls)
    return None if converter is None else converter.build
