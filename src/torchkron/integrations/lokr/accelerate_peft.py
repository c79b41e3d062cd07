"""PEFT's LoKr ``Linear`` layers computing their delta as a factored product.

:func:`accelerate` swaps the class of every PEFT LoKr ``Linear`` layer for
:class:`FactoredLoKrLinear`, a subclass that overrides one method, the delta of one
adapter (``_get_delta_activations``); PEFT's own ``forward`` still decides whether and
which adapters run (``disable_adapter``, merged state, several adapters,
``module_dropout``), and parameters, their names and the state dict are untouched, so
saving, loading, merging and unloading are PEFT's own. :func:`restore` swaps the class
back.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lokr.layer import Linear as _LoKrLinear
from peft.tuners.lokr.layer import LoKrLayer as _LoKrLayer
from torch import Tensor, nn

from torchkron.integrations.lokr.delta import Acceleration, check_impl, lokr_delta

__all__ = ["FactoredLoKrLinear", "accelerate", "restore"]


class FactoredLoKrLinear(_LoKrLinear):  # type: ignore[misc]
    """PEFT's LoKr ``Linear`` whose delta ``scale * kron(w1, w2)`` is applied factored.

    Made only by :func:`accelerate` (which sets ``__class__`` of an existing layer); an
    adapter PEFT stores in another form (a Tucker core, which PEFT creates for
    convolutions only) falls back to PEFT's own computation.
    """

    _torchkron_impl: str
    _torchkron_recompute: bool

    def _get_delta_activations(
        self, adapter_name: str, input: Tensor, *args: Any, **kwargs: Any
    ) -> Tensor:
        if adapter_name in self.lokr_t2:
            return super()._get_delta_activations(adapter_name, input, *args, **kwargs)  # type: ignore[no-any-return]
        w1, w2 = _factors(self, adapter_name)
        dtype = torch.promote_types(w1.dtype, w2.dtype)
        mask = None
        if self.training and bool(self.rank_dropout[adapter_name]):
            mask = _row_mask(
                self.out_features,
                self.rank_dropout[adapter_name],
                bool(getattr(self, "rank_dropout_scale", {}).get(adapter_name, False)),
            )
        x = self._cast_input_dtype(input, dtype)
        return lokr_delta(
            x,
            w1,
            w2,
            scale=self.scaling[adapter_name],
            row_mask=mask,
            impl=self._torchkron_impl,
            recompute=self._torchkron_recompute,
        )


def _factors(layer: Any, name: str) -> tuple[Tensor, Tensor]:
    """``w1`` and ``w2`` of one adapter, each whole or its low-rank product (small)."""
    w1 = (
        layer.lokr_w1[name]
        if name in layer.lokr_w1
        else layer.lokr_w1_a[name] @ layer.lokr_w1_b[name]
    )
    w2 = (
        layer.lokr_w2[name]
        if name in layer.lokr_w2
        else layer.lokr_w2_a[name] @ layer.lokr_w2_b[name]
    )
    return w1, w2


def _row_mask(rows: int, p: float, rescale: bool) -> Tensor:
    """PEFT's rank-dropout mask on the rows of ``dW``, drawn exactly as PEFT draws it
    (``torch.rand(rows)`` from the default CPU generator, kept where above ``p``), so that
    the same seed drops the same rows."""
    drop = (torch.rand(rows) > p).float()
    if rescale:
        drop /= drop.mean()
    return drop


def accelerate(model: nn.Module, *, impl: str = "bmm", recompute: bool = True) -> Acceleration:
    """Make every PEFT LoKr ``Linear`` layer of ``model`` apply its delta factored.

    Each layer computes ``base(x) + scale * kron_linear(x, [w1, w2])`` (rank dropout as a
    mask on the output features, drawn as PEFT draws it) instead of building
    ``kron(w1, w2)`` and running a second dense GEMM. Outputs and gradients are PEFT's
    up to rounding. LoKr layers of other types (``Conv1d``, ``Conv2d``) are left alone and
    listed in the result. Calling it again is harmless; :func:`restore` undoes it.

    Args:
        model: a ``PeftModel`` (or any module holding PEFT LoKr layers).
        impl: :func:`torchkron.functional.kron_linear`'s ``impl`` for the delta;
            ``"bmm"`` (default) never builds the weight.
        recompute: ``True`` (default): the delta is one autograd node that keeps only the
            input (which the frozen layer keeps anyway), the factors, scale and mask;
            it recomputes its one intermediate (``rows x in_m * out_k`` numbers, as large
            as the input for a square split) in the backward, one more small GEMM per
            step, and returns an input gradient that autograd can add the frozen layer's
            to in place. The trade-off, measured in docs/adapters.md: the same peak
            memory as LoRA's there, at a step time within that benchmark's noise. With
            an ``impl`` other than ``"bmm"`` the delta runs under
            :func:`torch.utils.checkpoint.checkpoint` instead (its whole forward again).
            ``False``: ``kron_linear(..., impl=impl)`` as it is, the intermediate kept
            for the backward (one input-sized tensor more per layer, and one more at the
            backward's peak).

    Returns:
        :class:`~torchkron.integrations.lokr.Acceleration`: accelerated and skipped names.

    Raises:
        ValueError: ``model`` holds no PEFT LoKr layer, or ``impl`` is unknown.
    """
    check_impl(impl)
    if not callable(getattr(_LoKrLinear, "_get_delta_activations", None)):
        raise RuntimeError(
            "accelerate: this PEFT's LoKr Linear has no _get_delta_activations, the method "
            "accelerate replaces; upgrade PEFT (pip install -U peft)."
        )
    accelerated: list[str] = []
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _LoKrLayer):
            continue
        if type(module) is _LoKrLinear or type(module) is FactoredLoKrLinear:
            module.__class__ = FactoredLoKrLinear
            module._torchkron_impl = impl
            module._torchkron_recompute = recompute
            accelerated.append(name)
        else:
            base = type(module.get_base_layer()).__name__
            skipped[name] = (
                f"{type(module).__module__}.{type(module).__qualname__} on {base}: only "
                f"LoKr on nn.Linear is accelerated; PEFT's own forward runs"
            )
    if not accelerated and not skipped:
        raise ValueError(
            f"accelerate: {type(model).__name__} holds no PEFT LoKr layer. Pass the model "
            f"returned by peft.get_peft_model(model, peft.LoKrConfig(...)) (or "
            f"PeftModel.from_pretrained of a LoKr adapter)."
        )
    return Acceleration(tuple(accelerated), skipped)


def restore(model: nn.Module) -> list[str]:
    """Undo :func:`accelerate`: every accelerated layer runs PEFT's own forward again.

    Returns:
        The names of the layers restored (empty if none was accelerated).
    """
    names = []
    for name, module in model.named_modules():
        if type(module) is FactoredLoKrLinear:
            module.__class__ = _LoKrLinear
            del module._torchkron_impl, module._torchkron_recompute
            names.append(name)
    return names
