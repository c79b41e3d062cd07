"""``merge``: every ``KronLinear`` back to the dense layer type it replaced."""

from __future__ import annotations

from torch import nn

from torchkron.layers import KronLinear
from torchkron.surgery.build import source_of, swap
from torchkron.surgery.converters import builder_for
from torchkron.surgery.plan import kron_layers, sync_config

__all__ = ["dense_of", "merge"]


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
        >>> from torchkron import kronify
        >>> net, _ = kronify(nn.Sequential(nn.Linear(8, 8)), rank=2)
        >>> type(merge(net)[0]).__name__
        'Linear'
    """
    if isinstance(model, KronLinear):
        return dense_of(model)
    changes: list[tuple[str, nn.Module]] = []
    for names, layer in kron_layers(model):
        dense = dense_of(layer)
        changes.extend((n, dense) for n in names)
    swap(model, changes)
    sync_config(model)
    return model


def dense_of(layer: KronLinear) -> nn.Module:
    linear = layer.to_linear()
    source = source_of(layer)
    build = builder_for(source)
    if build is None:
        return linear
    return build(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())
