"""Hugging Face transformers: saving and reloading kronified models.

``kronify`` keeps ``model.config.torchkron_plan`` in sync with the model's structure, so a
plain ``model.save_pretrained(path)`` writes the plan into ``config.json`` beside the
factor weights. Plain ``from_pretrained`` would rebuild the dense architecture and
re-initialise those layers; :func:`from_pretrained` here loads through a subclass of the
model class whose ``__init__`` re-applies the plan, so transformers' own loader (sharded
files, ``torch_dtype``, tied weights) fills in the factors.

Examples:
    >>> import tempfile, torchkron
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128)
    >>> model, report = torchkron.kronify(GPT2LMHeadModel(config))
    >>> path = tempfile.mkdtemp()
    >>> model.save_pretrained(path)
    >>> again = from_pretrained(path)  # a GPT2LMHeadModel with the KronLinear layers
    >>> type(again.transformer.h[0].mlp.c_fc).__name__
    'KronLinear'
"""

from __future__ import annotations

import functools
import os
from typing import Any

import transformers
from torch import nn

from torchkron.layers import KronLinear
from torchkron.surgery import PLAN_ATTRIBUTE, apply_plan, sync_config

__all__ = ["PLAN_ATTRIBUTE", "from_pretrained", "kron_model_class", "save_pretrained"]


@functools.cache
def kron_model_class(model_class: type[Any]) -> type[Any]:
    """A subclass of an HF model class that re-applies ``config.torchkron_plan`` on init.

    Its ``from_pretrained`` therefore builds the kronified architecture before the
    weights are loaded. The subclass keeps the base class's name.

    Args:
        model_class: a ``PreTrainedModel`` subclass, e.g. ``GPT2LMHeadModel``.
    """
    if not (
        isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)
    ):
        raise TypeError(
            f"kron_model_class: expected a transformers PreTrainedModel class, got {model_class!r}."
        )

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        model_class.__init__(self, config, *args, **kwargs)
        plan = getattr(config, PLAN_ATTRIBUTE, None)
        if plan:
            # Checked against the model and bounded before allocating; transformers
            # renames checkpoint keys for some families, so the tensors are checked
            # after loading (from_pretrained below).
            apply_plan(self, plan)

    return type(
        model_class.__name__,
        (model_class,),
        {"__init__": __init__, "__module__": model_class.__module__,
         "__qualname__": model_class.__qualname__},
    )  # fmt: skip


def _resolve_class(model_class: Any, config: Any) -> type[Any]:
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        if not archs:
            raise ValueError(
                "torchkron.integrations.hf.from_pretrained: the config names no architecture; "
                "pass model_class (e.g. GPT2LMHeadModel or AutoModelForCausalLM)."
            )
        model_class = getattr(transformers, archs[0])
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is not None:  # an Auto class: the concrete class for this config
        model_class = mapping[type(config)]
    resolved: type[Any] = model_class
    return resolved


def from_pretrained(path: str | os.PathLike[str], model_class: Any = None, **kwargs: Any) -> Any:
    """Load a model saved by ``save_pretrained``, kronified or not.

    Args:
        path: a directory (or hub id, when online) written by ``save_pretrained``.
        model_class: the model class or an Auto class; default: the config's first
            ``architectures`` entry.
        **kwargs: passed to ``from_pretrained`` (``torch_dtype``, ``device_map``...).

    Returns:
        The model with its ``KronLinear`` layers and their saved factors; an un-kronified
        checkpoint loads as plain ``model_class.from_pretrained`` would.

    Raises:
        ValueError: the config's plan does not fit the model class (see
            :func:`torchkron.apply_plan`), or the checkpoint lacks tensors of its
            Kronecker layers (listed).
    """
    config = kwargs.pop("config", None)
    if config is None:
        config = transformers.AutoConfig.from_pretrained(path)
    cls = _resolve_class(model_class, config)
    if not getattr(config, PLAN_ATTRIBUTE, None):
        plain: nn.Module = cls.from_pretrained(path, config=config, **kwargs)
        return plain
    cls = kron_model_class(cls)  # type: ignore[arg-type]
    want_info = kwargs.pop("output_loading_info", False)
    model, info = cls.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    kron_params = {
        f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, KronLinear)
        for p, _ in m.named_parameters()
    }  # fmt: skip
    missing = sorted(k for k in info.get("missing_keys", ()) if k in kron_params)
    if missing:
        raise ValueError(
            f"torchkron.integrations.hf.from_pretrained: {path} lacks {len(missing)} tensor(s) "
            f"of its Kronecker layers: {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''}; they would be left uninitialised. The "
            f"checkpoint is incomplete or does not belong to its config's torchkron_plan."
        )
    return (model, info) if want_info else model


def save_pretrained(model: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """``model.save_pretrained(path)`` with ``config.torchkron_plan`` refreshed first
    (needed only if ``KronLinear`` layers were added or removed by hand after kronify)."""
    sync_config(model)
    model.save_pretrained(path, **kwargs)
