"""Which modules ``kronify`` converts, and with which shapes and rank.

Name patterns (PEFT's rules), per-layer settings (``{pattern: value}`` dicts, first match
wins), the checks on them, and the skip reasons of modules that stay dense.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from torchkron.factorization import check_shapes, factor_shapes
from torchkron.layers import KronLinear
from torchkron.surgery._modules import module_names
from torchkron.surgery.converters import ConverterTable, DenseView, Unconvertible, lookup

__all__ = [
    "Entry",
    "ShapesSpec",
    "check_int",
    "check_name_patterns",
    "check_patterns_used",
    "check_shared",
    "check_spec",
    "key_matches",
    "layer_settings",
    "matches",
    "per_layer",
    "select_layers",
    "tied_elsewhere",
]


ShapesSpec = (
    Sequence[tuple[int, int]]
    | Mapping[str, Sequence[tuple[int, int]]]
    | Callable[[str, nn.Module], Sequence[tuple[int, int]] | None]
    | None
)
"""Factor shapes for ``kronify``: one list for every layer, a ``{pattern: shapes}`` dict
(first matching pattern wins), or a function ``(name, module) -> shapes | None``."""


_T = TypeVar("_T")


@dataclass
class Entry:
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


def matches(name: str, patterns: str | Sequence[str] | None) -> bool:
    """PEFT's rule: a string is a regex matched against the full name; a list matches a
    name equal to an entry or ending in ``.entry``."""
    if patterns is None:
        return True
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def key_matches(key: str, name: str) -> bool:
    """A per-layer key (PEFT's ``rank_pattern``): a regex for the full name or a dotted
    suffix of it, so ``"query"`` matches ``"encoder.layer.0.attention.self.query"``."""
    try:
        return re.fullmatch(rf"(?:.*\.)?(?:{key})", name) is not None
    except re.error as exc:
        raise ValueError(f"kronify: pattern {key!r} is not a valid regex: {exc}.") from None


def per_layer(spec: _T | Mapping[str, _T], name: str, default: _T, used: set[str], what: str) -> _T:
    """The value for layer ``name``: ``spec`` itself, or the first matching pattern's."""
    if not isinstance(spec, Mapping):
        return spec
    for key, value in spec.items():
        if key_matches(key, name):
            used.add(f"{what}:{key}")
            return value
    return default


def check_int(what: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"kronify: {what} must be an int >= {minimum}, got {value!r}.")


def check_spec(what: str, spec: object) -> None:
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            if not isinstance(key, str):
                raise ValueError(
                    f"kronify: {what} keys are layer-name patterns (str), got {key!r}."
                )
            check_int(f"{what}[{key!r}]", value)
    else:
        check_int(what, spec)


def tied_elsewhere(module: nn.Module, names: list[str], owners: dict[int, list[str]]) -> str:
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


def layer_settings(
    e: Entry,
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
        layer_shapes = per_layer(shapes, e.name, no_shapes, used, "shapes")
    else:
        layer_shapes = shapes
    k = per_layer(num_factors, e.name, 2, used, "num_factors")
    e.rank = per_layer(rank, e.name, 1, used, "rank")
    e.fixed_rank = isinstance(rank, Mapping) and any(key_matches(key, e.name) for key in rank)
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


def check_patterns_used(
    shapes: ShapesSpec,
    num_factors: int | Mapping[str, int],
    rank: int | Mapping[str, int],
    used: set[str],
    entries: list[Entry],
) -> None:
    for what, spec in (("shapes", shapes), ("num_factors", num_factors), ("rank", rank)):
        if not isinstance(spec, Mapping):
            continue
        for key in spec:
            if f"{what}:{key}" in used:
                continue
            hits = [e for e in entries if any(key_matches(key, n) for n in e.names)]
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


def select_layers(
    model: nn.Module,
    table: ConverterTable,
    *,
    target: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
    subclasses: bool,
    shared: str,
    shapes: ShapesSpec,
    num_factors: int | Mapping[str, int],
    rank: int | Mapping[str, int],
    tied: bool,
    budgets: list[str],
    head: nn.Module | None = None,
) -> list[Entry]:
    """Every module ``kronify`` matches, with its shapes and rank or its skip reason.

    ``head``: a module to leave dense with a reason (the output embedding).

    Raises ``ValueError`` (the model untouched) on settings that do not fit a targeted
    layer or patterns that never apply.
    """
    names_of = module_names(model)
    layers = [
        n for m in dict.fromkeys(m for _, m in model.named_modules())
        if id(m) in names_of and lookup(m, table, subclasses)[1]
        for n in names_of[id(m)]
    ]  # fmt: skip
    check_name_patterns("target", target, layers)
    check_name_patterns("exclude", exclude, layers)
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)

    entries: list[Entry] = []
    used: set[str] = set()
    replaced_prefixes: list[str] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not name or id(module) in seen:
            continue
        seen.add(id(module))
        names = names_of[id(module)]
        if not any(matches(n, target) for n in names):
            continue
        if exclude is not None and any(matches(n, exclude) for n in names):
            continue
        if any(n.startswith(p) for n in names for p in replaced_prefixes):
            continue  # inside a module that is being replaced
        converter, source = lookup(module, table, subclasses)
        kind = type(module).__name__
        entry = Entry(list(names), module, kind, source)
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
        tie = tied_elsewhere(module, names, owners)
        if tie:
            entry.reason = tie
            continue
        if module is head:
            entry.reason = (
                "the output embedding (get_output_embeddings(), the LM head) stays dense by "
                "default, as PEFT's 'all-linear' leaves it: resize_token_embeddings needs a "
                "dense head. Pass include_output_embeddings=True to convert it"
            )
            continue
        if len(names) > 1 and shared == "skip":
            entry.reason = (
                f"the module is used at {len(names)} places ({', '.join(names)}); pass "
                f"shared='reuse' to convert it once and use the one KronLinear at every place"
            )
            continue
        entry.reason = layer_settings(entry, shapes, num_factors, rank, tied, used, budgets)
        if not entry.reason:
            replaced_prefixes.extend(n + "." for n in names)

    check_patterns_used(shapes, num_factors, rank, used, entries)
    return entries


def check_name_patterns(what: str, patterns: str | Sequence[str] | None, layers: list[str]) -> None:
    """Refuse a ``target=``/``exclude=`` pattern (a regex, or each entry of a list) that
    matches none of ``layers``, the names of the modules kronify could convert."""
    if patterns is None:
        return
    units: list[str] = [patterns] if isinstance(patterns, str) else list(patterns)
    if not units:
        raise ValueError(f"kronify: {what}=[] names no layer; pass None for every layer.")
    for unit in units:
        try:
            hit = any(matches(n, unit if isinstance(patterns, str) else [unit]) for n in layers)
        except re.error as exc:
            raise ValueError(f"kronify: {what} {unit!r} is not a valid regex: {exc}.") from None
        if hit:
            continue
        close = difflib.get_close_matches(unit, layers, n=3, cutoff=0.5) or layers[:3]
        shown = ", ".join(repr(n) for n in close) or "none"
        raise ValueError(
            f"kronify: {what} {unit!r} matches no layer that kronify converts (layers "
            f"such as {shown}). A string is a regex matched against the whole name, e.g. "
            f"r'.*mlp\\..*'; a list holds names or dotted suffixes, e.g. ['fc1', 'mlp.proj']."
        )


def check_shared(shared: object) -> None:
    """Refuse a ``shared=`` other than ``"skip"`` or ``"reuse"``."""
    if shared not in ("skip", "reuse"):
        raise ValueError(f"kronify: shared must be 'skip' or 'reuse', got {shared!r}.")
