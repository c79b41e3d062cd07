"""Model-wide replacement of dense layers by ``KronLinear`` (``kronify``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from torchkron.linear import KronLinear

__all__ = ["KRONIFY_MAPPING", "KronifyReport", "LayerReport", "kronify"]

ShapesSpec = (
    Sequence[tuple[int, int]]
    | Mapping[str, Sequence[tuple[int, int]]]
    | Callable[[str, nn.Module], Sequence[tuple[int, int]] | None]
    | None
)
"""Factor shapes for ``kronify``: one list for every layer, a ``{pattern: shapes}`` dict
(first matching pattern wins), or a function ``(name, module) -> shapes | None``."""

Converter = Callable[..., nn.Module]


def _convert_linear(
    module: nn.Module,
    *,
    shapes: Sequence[tuple[int, int]] | None,
    num_factors: int,
    rank: int,
    tied: bool,
    from_dense: bool,
) -> KronLinear:
    if not isinstance(module, nn.Linear):
        raise TypeError(f"kronify: cannot convert {type(module).__name__} to KronLinear.")
    if from_dense and not tied:
        return KronLinear.from_linear(module, shapes=shapes, num_factors=num_factors, rank=rank)
    w = module.weight
    layer = KronLinear(
        module.in_features,
        module.out_features,
        bias=module.bias is not None,
        shapes=shapes,
        num_factors=num_factors,
        rank=rank,
        tied=tied,
        device=w.device,
        dtype=w.dtype,
    )
    return layer


KRONIFY_MAPPING: dict[type[nn.Module], Converter] = {nn.Linear: _convert_linear}
"""Which module types ``kronify`` replaces, and how (PEFT-style dispatch)."""


@dataclass(frozen=True)
class LayerReport:
    """What ``kronify`` did to one module."""

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


@dataclass
class KronifyReport:
    """The layers ``kronify`` replaced or skipped, with weight counts (biases excluded)."""

    layers: list[LayerReport] = field(default_factory=list)

    @property
    def replaced(self) -> list[LayerReport]:
        return [r for r in self.layers if r.replaced]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if not r.replaced]

    @property
    def weights_before(self) -> int:
        return sum(r.weights_before for r in self.layers)

    @property
    def weights_after(self) -> int:
        return sum(r.weights_after for r in self.layers)

    def __str__(self) -> str:
        rows = [("module", "in->out", "factors", "weights", "error", "note")]
        for r in self.layers:
            factors = " (x) ".join(f"{o}x{n}" for o, n in r.shapes) or "-"
            if r.rank != 1:
                factors += f", rank {r.rank}"
            if r.tied:
                factors += ", tied"
            err = "-" if r.approximation_error is None else f"{r.approximation_error:.4f}"
            rows.append(
                (
                    r.name,
                    f"{r.in_features}->{r.out_features}",
                    factors,
                    f"{r.weights_before:,} -> {r.weights_after:,}",
                    err,
                    "replaced" if r.replaced else f"skipped: {r.reason}",
                )
            )
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        before, after = self.weights_before, self.weights_after
        ratio = f" ({before / after:.1f}x fewer)" if after else ""
        lines.append(f"total weights in matched layers: {before:,} -> {after:,}{ratio}")
        return "\n".join(lines)


def _matches(name: str, patterns: str | Sequence[str] | None) -> bool:
    """PEFT's rule: a string is a regex matched against the full name; a list matches a
    name equal to an entry or ending in ``.entry``."""
    if patterns is None:
        return True
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _shapes_for(spec: ShapesSpec, name: str, module: nn.Module) -> Sequence[tuple[int, int]] | None:
    if spec is None:
        return None
    if callable(spec):
        return spec(name, module)
    if isinstance(spec, Mapping):
        for pattern, shapes in spec.items():
            if _matches(name, pattern):
                return shapes
        return None
    return spec


def kronify(
    model: nn.Module,
    *,
    target: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    shapes: ShapesSpec = None,
    num_factors: int = 2,
    rank: int = 1,
    tied: bool = False,
    from_dense: bool = True,
    mapping: Mapping[type[nn.Module], Converter] | None = None,
) -> tuple[nn.Module, KronifyReport]:
    """Replace the dense layers of ``model`` with ``KronLinear``, in place.

    Args:
        model: the model to modify; it is changed in place and returned.
        target: which modules to replace, by qualified name: a regex matched against the
            whole name, or a list of names/suffixes (``["fc1", "mlp.proj"]``). Default:
            every module of a type in ``mapping``.
        exclude: names to leave alone, in the same forms as ``target``.
        shapes: factor shapes: one list for every layer, a ``{pattern: shapes}`` dict, or
            a function ``(name, module) -> shapes | None``. ``None``: balanced shapes
            from :func:`torchkron.factor_shapes` with ``num_factors``.
        num_factors: number of factors when shapes are not given.
        rank: number of summed Kronecker products.
        tied: one shared factor per layer (fresh init; a dense layer cannot be
            converted to tied factors, so ``from_dense`` is ignored for it).
        from_dense: initialise from the dense weights by
            :func:`torchkron.nearest_kronecker` (``True``) or afresh (``False``).
        mapping: module types to replace and their converters; default
            :data:`KRONIFY_MAPPING` (``nn.Linear -> KronLinear``).

    Returns:
        ``(model, report)``. Layers whose sizes cannot be factored as asked are left
        unchanged and listed in ``report.skipped`` with the reason.

    Examples:
        >>> net = nn.Sequential(nn.Linear(784, 625), nn.ReLU(), nn.Linear(625, 10))
        >>> net, report = kronify(net, target=["0"])
        >>> type(net[0]).__name__, report.weights_after
        ('KronLinear', 1400)
    """
    table = KRONIFY_MAPPING if mapping is None else mapping
    report = KronifyReport()
    for name, module in list(model.named_modules()):
        convert = table.get(type(module))
        if convert is None or not name:
            continue
        if not _matches(name, target) or (exclude is not None and _matches(name, exclude)):
            continue
        before = sum(p.numel() for n, p in module.named_parameters(recurse=False) if n != "bias")
        in_f = int(getattr(module, "in_features", 0))
        out_f = int(getattr(module, "out_features", 0))
        try:
            new = convert(
                module,
                shapes=_shapes_for(shapes, name, module),
                num_factors=num_factors,
                rank=rank,
                tied=tied,
                from_dense=from_dense,
            )
        except ValueError as exc:
            report.layers.append(
                LayerReport(name, in_f, out_f, False, before, before, reason=str(exc))
            )
            continue
        _set_submodule(model, name, new)
        report.layers.append(_replaced(name, in_f, out_f, before, new))
    return model, report


def _replaced(name: str, in_f: int, out_f: int, before: int, new: nn.Module) -> LayerReport:
    if isinstance(new, KronLinear):
        return LayerReport(
            name,
            in_f,
            out_f,
            True,
            before,
            new.num_weights(),
            shapes=new.shapes,
            rank=new.rank,
            tied=new.tied,
            approximation_error=new.approximation_error,
        )
    # A custom converter's module: count its parameters other than biases.
    after = sum(p.numel() for n, p in new.named_parameters() if not n.endswith("bias"))
    return LayerReport(name, in_f, out_f, True, before, after)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
