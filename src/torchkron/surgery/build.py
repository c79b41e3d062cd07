"""Building the new ``KronLinear`` layers and swapping them into the model.

Every layer is built before the model is touched, and a failed swap puts every old module
back, so that a model is never left half-converted.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from torchkron.factorization import RankClippedWarning, nearest_kronecker
from torchkron.layers import KronLinear
from torchkron.surgery._modules import add_note
from torchkron.surgery.selection import Entry

__all__ = ["build_layer", "build_layers", "refuse_meta", "set_source", "source_of", "swap"]


def refuse_meta(planned: list[Entry], *, from_dense: bool, budgets: list[str]) -> None:
    """Raise if a layer to build from its dense weight has no values (meta device)."""
    for e in planned:
        assert e.view is not None
        if e.view.weight.is_meta and (from_dense or budgets):
            raise ValueError(
                f"kronify: {e.name} has its weights on the meta device, which hold no values "
                f"to factor; pass from_dense=False (fresh init), and no max_error/"
                f"target_params/compression, or load the weights first."
            )


def build_layers(
    planned: list[Entry],
    *,
    tied: bool,
    from_dense: bool,
    moments: Mapping[str, Tensor] | None = None,
) -> None:
    """Build every new layer (``entry.new``) before touching the model: an error here
    changes nothing. ``moments``: input second moments by layer name (calibration), for
    factors that minimise the output error."""
    try:
        for e in planned:
            moment = None if moments is None else moments.get(e.name)
            e.new = build_layer(e, tied=tied, from_dense=from_dense, moment=moment)
    except Exception as exc:
        add_note(exc, f"kronify: while building {e.name}; the model is unchanged.")
        raise


def build_layer(
    e: Entry, *, tied: bool, from_dense: bool, moment: Tensor | None = None
) -> KronLinear:
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
            factors, error = nearest_kronecker(
                w, list(e.shapes), e.rank, input_second_moment=moment
            )
        if moment is not None:
            calibrated = "error = output error on the calibration inputs"
            e.note = f"{e.note}; {calibrated}" if e.note else calibrated
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
    set_source(layer, e.source)
    return layer


def set_source(layer: KronLinear, source: str) -> None:
    # Plain attribute (not state): the type merge() rebuilds and the plan records.
    layer.__dict__["_torchkron_source"] = source


def source_of(layer: KronLinear) -> str:
    return str(layer.__dict__.get("_torchkron_source", "torch.nn.modules.linear.Linear"))


def swap(model: nn.Module, changes: list[tuple[str, nn.Module]]) -> None:
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
        add_note(exc, "kronify: the model was restored unchanged.")
        raise
