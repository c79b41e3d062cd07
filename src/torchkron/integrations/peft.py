"""PEFT: LoRA (and the like) on top of ``KronLinear``.

PEFT's built-in LoRA dispatch knows ``nn.Linear`` and HF ``Conv1D`` only, and its
``"all-linear"`` shorthand lists those types, so it neither targets nor finds
``KronLinear``. This module registers :class:`KronLoraLinear` through PEFT's custom-module
hook (``LoraConfig._register_custom_module``) and expands ``"all-linear"`` to include
``KronLinear`` layers. Importing it also makes PEFT's error for an unregistered
``KronLinear`` name :func:`register`, and LoRA inits that rewrite the base weight
(PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) are refused on a ``KronLinear`` base.

The adapter adds ``B A x * scaling`` to the Kronecker layer's output. A low-rank delta has
no exact Kronecker form, so ``merge_and_unload`` on a ``KronLinear`` base raises; call
:func:`torchkron.merge` first (``KronLinear`` -> dense) and then merge the adapter.

Examples:
    >>> import torchkron
    >>> from peft import LoraConfig
    >>> model = nn.Sequential()
    >>> model.mlp = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
    >>> model, _ = torchkron.kronify(model, target=r".*mlp\\..*")
    >>> model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear"))
    >>> type(model.base_model.model.mlp[0]).__name__
    'KronLoraLinear'
"""

from __future__ import annotations

from typing import Any

import peft
from peft.tuners.lora.layer import Linear as _LoraLinear
from peft.tuners.lora.model import LoraModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from torchkron.layers import KronLinear

__all__ = ["KronLoraLinear", "get_peft_model", "register", "target_modules"]


class KronLoraLinear(_LoraLinear):  # type: ignore[misc]
    """PEFT's LoRA ``Linear`` with a ``KronLinear`` base layer.

    Forward, adapters, dropout, scaling and ``disable_adapter`` are PEFT's; only the
    in/out sizes are read from the ``KronLinear`` and merging into its factors is refused.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any):
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        self.fan_in_fan_out = False  # KronLinear computes x W^T like nn.Linear

    def update_layer(self, adapter_name: str, r: int, *args: Any, **kwargs: Any) -> None:
        init = getattr(kwargs.get("config"), "init_lora_weights", None)
        if isinstance(self.get_base_layer(), KronLinear) and _rewrites_base(init):
            raise ValueError(
                f"KronLoraLinear: init_lora_weights={init!r} writes a residual into the base "
                f"layer's weight, but a KronLinear's weight is rebuilt from its factors on every "
                f"access, so the write would be lost and the adapted model would not match the "
                f"base at init. Use init_lora_weights=True, 'gaussian', 'eva' or 'orthogonal', "
                f"or call torchkron.merge(model) first (KronLinear -> nn.Linear)."
            )
        super().update_layer(adapter_name, r, *args, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> Any:
        if isinstance(module, KronLinear):
            return module.in_features, module.out_features
        return super()._get_in_out_features(module)

    def _refuse_kron(self, what: str) -> None:
        if isinstance(self.get_base_layer(), KronLinear):
            raise ValueError(
                f"KronLoraLinear.{what}: a LoRA delta cannot be folded into Kronecker factors "
                f"exactly. Call torchkron.merge(model) first (KronLinear -> nn.Linear), then "
                f"merge_and_unload(); or keep the adapter unmerged."
            )

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        self._refuse_kron("merge")
        # torchkron.merge may have rebuilt an HF Conv1D, whose weight is stored (in, out).
        self.fan_in_fan_out = _is_conv1d(self.get_base_layer())
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        if self.merged:
            self._refuse_kron("unmerge")
        super().unmerge()


def _rewrites_base(init: object) -> bool:
    # PEFT's inits that assign base_layer.weight.data (PiSSA, CorDA, OLoRA, LoftQ, LoRA-GA).
    name = init.lower() if isinstance(init, str) else ""
    return name.startswith(("pissa", "corda")) or name in ("olora", "loftq", "lora_ga")


def _guide_unregistered(create: Any) -> Any:
    """Wrap PEFT's LoRA dispatch: an unregistered ``KronLinear`` gets a message naming
    :func:`register` instead of PEFT's bare "is not supported"."""

    def create_new_module(lora_config: Any, adapter_name: str, target: Any, **kwargs: Any) -> Any:
        try:
            return create(lora_config, adapter_name, target, **kwargs)
        except ValueError as exc:
            base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
            registered = KronLinear in (getattr(lora_config, "_custom_modules", None) or {})
            if registered or not isinstance(base, KronLinear):
                raise
            raise ValueError(
                "KronLinear is not supported by PEFT's LoRA unless registered on the config: "
                "use torchkron.integrations.peft.get_peft_model(model, config), or "
                "torchkron.integrations.peft.register(config) (to reload an adapter: "
                "PeftModel.from_pretrained(model, path, config=register("
                "LoraConfig.from_pretrained(path))))."
            ) from exc

    create_new_module._torchkron_guide = True  # type: ignore[attr-defined]
    return staticmethod(create_new_module)


if not getattr(LoraModel._create_new_module, "_torchkron_guide", False):
    LoraModel._create_new_module = _guide_unregistered(LoraModel._create_new_module)


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def register(config: Any) -> Any:
    """Register :class:`KronLoraLinear` for ``KronLinear`` on a ``LoraConfig``; returns it.

    Needed for every config that targets a ``KronLinear``, including one read back by
    ``PeftModel.from_pretrained(model, path, config=register(LoraConfig.from_pretrained(path)))``.
    """
    if not isinstance(config, peft.LoraConfig):
        raise TypeError(
            f"torchkron.integrations.peft.register: expected a peft.LoraConfig, got "
            f"{type(config).__name__}."
        )
    config._register_custom_module({KronLinear: KronLoraLinear})
    return config


def target_modules(model: nn.Module) -> list[str]:
    """Names of the linear layers PEFT's ``"all-linear"`` means, ``KronLinear`` included:
    ``nn.Linear``, HF ``Conv1D`` and ``KronLinear``, less the output embedding of an HF
    model (its LM head)."""
    from transformers.pytorch_utils import Conv1D

    head = None
    get_head = getattr(model, "get_output_embeddings", None)
    if callable(get_head):
        head = get_head()
    names = []
    for name, module in model.named_modules():
        if module is head or not name:
            continue
        if isinstance(module, nn.Linear | Conv1D | KronLinear):
            names.append(name)
    return names


def get_peft_model(model: nn.Module, config: Any, **kwargs: Any) -> Any:
    """``peft.get_peft_model`` for a model with ``KronLinear`` layers.

    Registers :class:`KronLoraLinear` on ``config`` and expands
    ``target_modules="all-linear"`` with :func:`target_modules`.

    Args:
        model: the (kronified) model.
        config: a ``peft.LoraConfig``.
        **kwargs: passed to ``peft.get_peft_model``.
    """
    register(config)
    if isinstance(config.target_modules, str) and config.target_modules.lower() == "all-linear":
        config.target_modules = set(target_modules(model))
    return peft.get_peft_model(model, config, **kwargs)


# LoKr adapters computed factored (issue 19): the code lives in torchkron.integrations.lokr.
def accelerate(model: nn.Module, *, impl: str = "bmm", recompute: bool = True) -> Any:
    """Make every PEFT LoKr ``Linear`` layer of ``model`` apply its delta
    ``scale * kron(w1, w2)`` as a factored product, never building the weight; returns an
    :class:`~torchkron.integrations.lokr.Acceleration` (accelerated and skipped names).
    ``recompute=True`` (default) keeps only the input and the factors for the backward
    (LoRA's peak memory, for one more small GEMM); ``recompute=False`` keeps the product's
    intermediate. See :func:`torchkron.integrations.lokr.accelerate_peft.accelerate`.

    Examples:
        >>> from peft import LoKrConfig
        >>> model = nn.Sequential(nn.Linear(64, 64))
        >>> pm = peft.get_peft_model(model, LoKrConfig(r=4, target_modules=["0"]))
        >>> accelerate(pm).accelerated
        ('base_model.model.0',)
        >>> restore(pm)
        ['base_model.model.0']
    """
    from torchkron.integrations.lokr import accelerate_peft

    return accelerate_peft.accelerate(model, impl=impl, recompute=recompute)


def restore(model: nn.Module) -> list[str]:
    """Undo :func:`accelerate`; returns the names of the layers restored."""
    from torchkron.integrations.lokr import accelerate_peft

    return accelerate_peft.restore(model)


__all__ += ["accelerate", "restore"]
