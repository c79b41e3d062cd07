"""LyCORIS's ``LokrModule`` on ``nn.Linear`` computing its delta as a factored product.

LyCORIS's default ("rebuild") forward builds ``dW = scale * kron(w1, w2)``, adds it to a
copy of the frozen weight, subtracts the weight again and runs a second dense GEMM.
:func:`accelerate` swaps the class of each such module for :class:`FactoredLokrModule`,
which overrides that one method; LyCORIS's own ``forward`` (``module_dropout``,
``bypass_mode``), its parameters, state dict, ``merge_to`` and ``restore`` are untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from lycoris.modules.lokr import LokrModule as _LokrModule
from torch import Tensor, nn

from torchkron.integrations.lokr.delta import Acceleration, check_impl, lokr_delta

__all__ = ["FactoredLokrModule", "accelerate", "restore"]


class FactoredLokrModule(_LokrModule):  # type: ignore[misc]
    """LyCORIS's ``LokrModule`` whose rebuild forward applies the delta factored:
    ``org_forward(x) + x @ (multiplier * scalar * scale * rank_drop(kron(w1, w2))).T``.

    Made only by :func:`accelerate` (which sets ``__class__`` of an existing module).
    """

    _torchkron_impl: str
    _torchkron_recompute: bool

    def _rebuild_forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        base = self.org_forward(x, *args, **kwargs)
        w1 = self.lokr_w1 if self.use_w1 else self.lokr_w1_a @ self.lokr_w1_b
        w2 = self.lokr_w2 if self.use_w2 else self.lokr_w2_a @ self.lokr_w2_b
        mask = None
        if self.training and self.rank_dropout:
            mask = _row_mask(self.shape[0], self.rank_dropout, self.rank_dropout_scale, w1.dtype)
        # LyCORIS casts the delta weight to the input's dtype before its GEMM.
        scale = self.scalar.to(device=x.device, dtype=x.dtype) * (
            float(self.scale) * float(self.multiplier)
        )
        delta = lokr_delta(
            x,
            w1.to(x.dtype),
            w2.to(x.dtype),
            scale=scale,
            row_mask=mask,
            impl=self._torchkron_impl,
            recompute=self._torchkron_recompute,
        )
        return base + delta  # type: ignore[no-any-return]


def _row_mask(rows: int, p: float, rescale: bool, dtype: torch.dtype) -> Tensor:
    """LyCORIS's rank-dropout mask, drawn as LyCORIS draws it (``torch.rand(rows)`` on the
    default CPU generator, in the weight's dtype), so that one seed drops the same rows."""
    drop = (torch.rand(rows) > p).to(dtype)
    if rescale:
        drop /= drop.mean()
    return drop


def _why_not(module: Any) -> str | None:
    """Why this LoKr module is left alone, or None if it is accelerated."""
    if module.module_type != "linear" or type(module.org_module[0]) is not nn.Linear:
        return (
            f"LoKr on {type(module.org_module[0]).__name__}: only LoKr on nn.Linear is "
            f"accelerated; LyCORIS's own forward runs"
        )
    if module.wd:
        return (
            "weight_decompose (DoRA) rescales every row by the norm of the merged weight "
            "W + dW, which needs the full weight each step; refused, LyCORIS's own forward "
            "runs"
        )
    if module.bypass_mode:
        return "bypass_mode: LyCORIS already applies this delta without building the weight"
    return None


def _lokr_modules(network: nn.Module) -> list[tuple[str, Any]]:
    # A LycorisNetwork lists its modules in .loras (registered as submodules only by
    # apply_to()); any other module is searched.
    loras = getattr(network, "loras", None)
    if isinstance(loras, list | nn.ModuleList):
        return [(m.lora_name, m) for m in loras if isinstance(m, _LokrModule)]
    return [(n, m) for n, m in network.named_modules() if isinstance(m, _LokrModule)]


def accelerate(network: nn.Module, *, impl: str = "bmm", recompute: bool = True) -> Acceleration:
    """Make every LyCORIS LoKr module on an ``nn.Linear`` apply its delta factored.

    Covers LyCORIS's ``factor``, ``decompose_both``, ``full_matrix``, ``rank_dropout``
    (drawn as LyCORIS draws it), ``rank_dropout_scale``, ``use_scalar``, ``rs_lora``,
    ``alpha`` and the network's ``multiplier``; ``module_dropout`` is LyCORIS's own
    forward's. Left alone and listed: LoKr on convolutions, ``weight_decompose`` (DoRA:
    it needs the full weight's row norms, so it is refused rather than approximated) and
    ``bypass_mode`` (already factored by LyCORIS). :func:`restore` undoes it.

    Args:
        network: a ``LycorisNetwork`` (from ``lycoris.create_lycoris``), before or after
            ``apply_to()``, or any module holding ``LokrModule`` instances.
        impl: :func:`torchkron.functional.kron_linear`'s ``impl`` for the delta.
        recompute: ``True`` (default): the delta keeps only the input, the factors,
            scale and mask for the backward and recomputes its one intermediate there
            (LoRA's peak memory for one more small GEMM); ``False`` keeps it. The
            trade-off in full: :func:`torchkron.integrations.lokr.accelerate_peft.accelerate`.

    Returns:
        :class:`~torchkron.integrations.lokr.Acceleration`: accelerated and skipped names.

    Raises:
        ValueError: no LoKr module in ``network``, or ``impl`` is unknown.
    """
    check_impl(impl)
    if not callable(getattr(_LokrModule, "_rebuild_forward", None)):
        raise RuntimeError(
            "accelerate: this lycoris-lora has no LokrModule._rebuild_forward, the method "
            "accelerate replaces; install lycoris-lora>=4.1 (pip install 'lycoris-lora>=4.1', "
            "or pip install -e '.[lycoris]' in a clone of torchkron)."
        )
    modules = _lokr_modules(network)
    if not modules:
        raise ValueError(
            f"accelerate: {type(network).__name__} holds no LyCORIS LoKr module. Pass the "
            f"network of lycoris.create_lycoris(model, algo='lokr', ...) or "
            f"create_lycoris_from_weights(...)."
        )
    accelerated: list[str] = []
    skipped: dict[str, str] = {}
    for name, module in modules:
        why = _why_not(module)
        if why is not None:
            skipped[name] = why
            continue
        module.__class__ = FactoredLokrModule
        module._torchkron_impl = impl
        module._torchkron_recompute = recompute
        accelerated.append(name)
    return Acceleration(tuple(accelerated), skipped)


def restore(network: nn.Module) -> list[str]:
    """Undo :func:`accelerate`; returns the names of the modules restored."""
    names = []
    for name, module in _lokr_modules(network):
        if type(module) is FactoredLokrModule:
            module.__class__ = _LokrModule
            del module._torchkron_impl, module._torchkron_recompute
            names.append(name)
    return names
