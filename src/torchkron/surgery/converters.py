"""How ``kronify`` reads a layer type as a dense map, and how ``merge`` rebuilds it.

Layer types are read through a registry of converters (:data:`KRONIFY_MAPPING`,
:func:`register_converter`): a converter reads a module as a dense ``y = x W^T + b``
(:class:`DenseView`) or raises :class:`Unconvertible` with the reason the report shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "KRONIFY_MAPPING",
    "ConverterTable",
    "DenseView",
    "LayerConverter",
    "Unconvertible",
    "builder_for",
    "converter_named",
    "lookup",
    "qualname",
    "register_converter",
]


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


def qualname(cls: type) -> str:
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
        >>> from torchkron import kronify
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


ConverterTable = Mapping[type[nn.Module] | str, LayerConverter | None]
"""A converter registry like :data:`KRONIFY_MAPPING` (``kronify(mapping=...)``)."""


def lookup(
    module: nn.Module, table: ConverterTable, subclasses: bool
) -> tuple[LayerConverter | None, str]:
    """``(converter, qualified name)`` of the nearest registered class in the MRO; with
    ``subclasses=False`` a subclass gets ``(None, name of the class it derives from)``."""
    classes = type(module).__mro__ if subclasses else type(module).__mro__[:1]
    for cls in classes:
        for key in (cls, qualname(cls)):
            if key in table:
                converter = table[key]
                return converter, "" if converter is None else qualname(cls)
    if not subclasses:
        for cls in type(module).__mro__[1:]:
            for key in (cls, qualname(cls)):
                if table.get(key) is not None:
                    return None, qualname(cls)
    return None, ""


def converter_named(source: str, table: ConverterTable | None = None) -> LayerConverter | None:
    """The registered converter whose class has the qualified name ``source``.

    Names come from plans read from files, so they are only looked up in the registry,
    never imported: an unknown name raises, naming :func:`register_converter` as the
    fix. A type registered as opted out (``None``) gives ``None``.
    """
    table = KRONIFY_MAPPING if table is None else table
    for key, converter in table.items():
        if key == source or (isinstance(key, type) and qualname(key) == source):
            return converter
    raise ValueError(
        f"torchkron: the layer type {source!r} (a plan's 'source') is not a registered "
        f"converter type; torchkron never imports a module named by a file. If that type "
        f"is yours, import it and call torchkron.register_converter({source.rsplit('.', 1)[-1]}, "
        f"read, build=...) first; otherwise the plan was tampered with or made for "
        f"another model."
    )


def builder_for(source: str) -> Callable[[Tensor, Tensor | None], nn.Module] | None:
    """``merge``'s builder for the type ``source`` (``None``: an ``nn.Linear``)."""
    converter = converter_named(source)
    return None if converter is None else converter.build
