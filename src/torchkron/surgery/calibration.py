"""Calibration data for ``kronify``: the input second moment of every layer to convert.

One pass over the batches with a forward pre-hook on each planned module accumulates
``C = E[x x^T]`` of its inputs (:class:`torchkron.factorization.SecondMoment`, float64);
the build step then minimises each layer's output error instead of its weight error, and
the rank budgets read the spectrum of the whitened weight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from torchkron.factorization import SecondMoment
from torchkron.surgery.selection import Entry

__all__ = ["check_calibration", "collect_moments", "run_batch"]


def check_calibration(calibration: object, *, tied: bool, from_dense: bool) -> None:
    """Raise if ``calibration`` is given where it cannot be used."""
    if calibration is None:
        return
    if tied or not from_dense:
        raise ValueError(
            "kronify: calibration chooses the factors from the dense weights and the layer "
            "inputs, which needs from_dense=True and tied=False; drop calibration, or "
            "convert from the dense weights."
        )
    if isinstance(calibration, Tensor | str | bytes) or not isinstance(calibration, Iterable):
        raise ValueError(
            f"kronify: calibration must be an iterable of batches (a list or a DataLoader; "
            f"one batch is what model(batch) takes), got {type(calibration).__name__}; wrap "
            f"a single tensor as [batch]."
        )


def run_batch(model: nn.Module, batch: Any) -> None:
    """Call ``model`` on one calibration batch: ``model(**batch)`` for a mapping,
    ``model(*batch)`` for a tuple or list, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, tuple | list):
        model(*batch)
    else:
        model(batch)


def collect_moments(
    model: nn.Module, planned: list[Entry], calibration: Iterable[Any]
) -> dict[str, Tensor]:
    """``{entry name: E[x x^T] of its inputs}`` over one pass of ``calibration`` (eval
    mode, no gradients; the model's mode is restored)."""
    moments: dict[str, SecondMoment] = {}
    handles = []
    for e in planned:
        assert e.view is not None
        acc = SecondMoment(int(e.view.weight.shape[1]))
        moments[e.name] = acc

        def hook(_module: nn.Module, args: tuple[Any, ...], acc: SecondMoment = acc) -> None:
            acc.update(args[0])

        handles.append(e.module.register_forward_pre_hook(hook))
    was_training = model.training
    batches = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in calibration:
                run_batch(model, batch)
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if batches == 0:
        raise ValueError("kronify: calibration yielded no batches; pass at least one.")
    unused = [name for name, acc in moments.items() if acc.count == 0]
    if unused:
        raise ValueError(
            f"kronify: the calibration batches never reached {', '.join(unused[:3])}; "
            f"exclude those layers, or pass batches that run through them."
        )
    return {name: acc.matrix() for name, acc in moments.items()}
