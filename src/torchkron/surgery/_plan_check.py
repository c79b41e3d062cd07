"""The checks ``apply_plan`` makes before it allocates or changes anything.

A plan may come from a file (safetensors metadata, config.json), so every field is
type-checked, every named module must be a converted layer type of the recorded sizes
and bias, and the layers' parameter shapes must match the stored tensors (or, with no
tensors to compare against, stay within the largest useful rank) before a single
``KronLinear`` is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchkron.factorization import MAX_SIZE, check_shapes, max_kronecker_rank
from torchkron.layers import KronLinear
from torchkron.surgery.build import source_of
from torchkron.surgery.converters import ConverterTable, Unconvertible, converter_named, lookup

__all__ = ["PlanEntry", "check_model", "check_tensors", "read_entries"]

_WHERE = "the plan was tampered with or made for another architecture or config"


@dataclass(frozen=True)
class PlanEntry:
    """One layer of a plan, every field checked."""

    names: tuple[str, ...]
    in_features: int
    out_features: int
    shapes: tuple[tuple[int, int], ...]
    rank: int
    tied: bool
    bias: bool
    source: str

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """The layer's parameter names and shapes, as its ``state_dict`` holds them."""
        out: dict[str, tuple[int, ...]] = {}
        if self.tied:
            out["tied_factor"] = (self.rank, *self.shapes[0])
        else:
            for i, (o, n) in enumerate(self.shapes):
                out[f"factor_{i}"] = (self.rank, o, n)
        if self.bias:
            out["bias"] = (self.out_features,)
        return out


def _field(i: int, entry: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in entry:
        raise ValueError(f"apply_plan: layer {i} of the plan has no {key!r}; {_WHERE}.")
    value = entry[key]
    # bool is an int: a size of True is as wrong as a bias of 1.
    wrong = isinstance(value, bool) != (kind is bool)
    if wrong or not isinstance(value, kind):
        raise ValueError(
            f"apply_plan: layer {i} of the plan has {key}={value!r} "
            f"({type(value).__name__}); {_WHERE}."
        )
    return value


def _size(i: int, entry: Mapping[str, Any], key: str) -> int:
    value: int = _field(i, entry, key, int)
    if not 1 <= value <= MAX_SIZE:
        raise ValueError(
            f"apply_plan: layer {i} of the plan has {key}={value}, outside 1..2**63-1; {_WHERE}."
        )
    return value


def read_entries(plan: Mapping[str, Any]) -> list[PlanEntry]:
    """Every layer of ``plan`` with its fields type-checked (no module is touched)."""
    layers = plan.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"apply_plan: the plan's 'layers' is not a list; {_WHERE}.")
    entries: list[PlanEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(layers):
        if not isinstance(raw, Mapping):
            raise ValueError(f"apply_plan: layer {i} of the plan is not a dict; {_WHERE}.")
        names = _field(i, raw, "names", list)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(
                f"apply_plan: layer {i} of the plan has names={names!r}; each layer needs a "
                f"non-empty list of module names; {_WHERE}."
            )
        again = seen.intersection(names)
        if again:
            raise ValueError(
                f"apply_plan: the plan names {sorted(again)[0]!r} in two layers; {_WHERE}."
            )
        seen.update(names)
        in_f, out_f = _size(i, raw, "in_features"), _size(i, raw, "out_features")
        rank = _size(i, raw, "rank")
        shapes = _field(i, raw, "shapes", list)
        try:
            checked = check_shapes(shapes, in_f, out_f, f"apply_plan: {names[0]}")
        except TypeError as exc:
            raise ValueError(f"{exc} ({_WHERE})") from None
        source = raw.get("source", "torch.nn.modules.linear.Linear")
        if not isinstance(source, str):
            raise ValueError(f"apply_plan: layer {i} of the plan has source={source!r}; {_WHERE}.")
        entries.append(
            PlanEntry(
                tuple(names),
                in_f,
                out_f,
                tuple(checked),
                rank,
                _field(i, raw, "tied", bool),
                _field(i, raw, "bias", bool),
                source,
            )
        )
    return entries


def check_model(model: nn.Module, entries: list[PlanEntry], table: ConverterTable) -> None:
    """Every named module must exist and be a converted type of the plan's sizes and bias."""
    for e in entries:
        converter_named(e.source, table)  # an unknown type name raises, nothing imported
        for name in e.names:
            _check_module(model, name, e, table)


def _check_module(model: nn.Module, name: str, e: PlanEntry, table: ConverterTable) -> None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"apply_plan: the model has no module {name!r}; {_WHERE}.") from None
    kind = type(module).__name__
    if isinstance(module, KronLinear):
        size, has_bias, source = (
            (module.out_features, module.in_features),
            module.bias is not None,
            source_of(module),
        )
    else:
        converter, source = lookup(module, table, True)
        if converter is None:
            raise ValueError(
                f"apply_plan: {name} is a {kind}, not a layer type kronify converts, but the "
                f"plan would replace it with a KronLinear; {_WHERE}."
            )
        try:
            view = converter.read(module)
        except Unconvertible as exc:
            raise ValueError(f"apply_plan: {name} ({kind}) cannot be replaced: {exc}.") from None
        size = (int(view.weight.shape[0]), int(view.weight.shape[1]))
        has_bias = view.bias is not None
    if source != e.source:
        raise ValueError(
            f"apply_plan: {name} is a {kind} (converted as {source}) in the model but a "
            f"{e.source} in the plan; {_WHERE}."
        )
    if size != (e.out_features, e.in_features):
        raise ValueError(
            f"apply_plan: {name} is {size[1]} -> {size[0]} in the model but "
            f"{e.in_features} -> {e.out_features} in the plan; {_WHERE}."
        )
    if has_bias != e.bias:
        have, plan = ("a bias", "none") if has_bias else ("no bias", "one")
        raise ValueError(
            f"apply_plan: {name} has {have} in the model but {plan} in the plan; the "
            f"checkpoint was made for another architecture (e.g. a Llama checkpoint, whose "
            f"q/k/v projections have no bias, loaded into a Qwen2 model, whose have one)."
        )


def check_tensors(entries: list[PlanEntry], stored: Mapping[str, Sequence[int]] | None) -> None:
    """Every parameter of every layer must be stored with its shape (``stored``: tensor
    name -> shape); with nothing stored, ranks must stay within the largest useful rank."""
    if stored is None:
        for e in entries:
            bound = max_kronecker_rank(e.shapes)
            if e.rank > bound:
                raise ValueError(
                    f"apply_plan: {e.names[0]} has rank {e.rank} in the plan, above the largest "
                    f"useful rank {bound} for shapes {list(e.shapes)}; refused before "
                    f"allocating. torchkron.load checks a plan against the file's tensors "
                    f"instead, which allows it; or pass apply_plan(..., "
                    f"stored_shapes={{tensor name: shape}})."
                )
        return
    missing: list[str] = []
    for e in entries:
        for param, shape in e.tensors().items():
            keys = [f"{n}.{param}" for n in e.names]
            found = [k for k in keys if k in stored]
            if not found:
                missing.append(keys[0])
            for k in found:
                if tuple(int(d) for d in stored[k]) != shape:
                    raise ValueError(
                        f"apply_plan: the stored tensor {k!r} has shape {tuple(stored[k])} but "
                        f"the plan's layer needs {shape} (rank {e.rank}, shapes "
                        f"{list(e.shapes)}); {_WHERE}."
                    )
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        shown = ", ".join(missing[:10]) + more
        raise ValueError(
            f"apply_plan: the checkpoint lacks {len(missing)} tensor(s) of the plan's Kronecker "
            f"layers: {shown}; they would be left uninitialised. The file is incomplete or "
            f"does not belong to this plan."
        )
