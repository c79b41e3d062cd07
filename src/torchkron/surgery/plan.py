"""Kronify plans: the structure of a kronified model, to re-create it before loading weights.

:func:`kronify_plan` records every ``KronLinear`` (names, sizes, shapes, rank, the type it
replaced) as a JSON-able dict; :func:`apply_plan` re-creates those layers in a freshly
built model; :func:`sync_config` keeps an HF model's config holding its plan.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from torchkron.layers import KronLinear
from torchkron.surgery._modules import module_names
from torchkron.surgery._plan_check import check_model, check_tensors, read_entries
from torchkron.surgery.build import set_source, source_of, swap
from torchkron.surgery.converters import KRONIFY_MAPPING, ConverterTable

__all__ = [
    "PLAN_ATTRIBUTE",
    "PLAN_FORMAT",
    "apply_plan",
    "kron_layers",
    "kronify_plan",
    "output_embeddings",
    "sync_config",
]


PLAN_FORMAT = "torchkron.plan/1"
"""The ``format`` tag of a plan dict (:func:`kronify_plan`)."""


def kronify_plan(model: nn.Module) -> dict[str, Any]:
    """The structure of every ``KronLinear`` in ``model``, as a JSON-able dict.

    Each entry lists the layer's names (several for a reused module), sizes, factor
    shapes, rank, ``tied``, ``bias`` and the type it replaced; :func:`apply_plan`
    re-creates the layers in a fresh model so that a ``state_dict`` loads into it.

    Examples:
        >>> from torchkron import kronify
        >>> net, _ = kronify(nn.Sequential(nn.Linear(8, 8)), from_dense=False)
        >>> kronify_plan(net)["layers"][0]["shapes"]
        [[4, 4], [2, 2]]
    """
    layers = []
    for names, layer in kron_layers(model):
        layers.append(
            {
                "names": names,
                "in_features": layer.in_features,
                "out_features": layer.out_features,
                "shapes": [list(s) for s in layer.shapes],
                "rank": layer.rank,
                "tied": layer.tied,
                "bias": layer.bias is not None,
                "source": source_of(layer),
            }
        )
    return {"format": PLAN_FORMAT, "layers": layers}


def kron_layers(model: nn.Module) -> list[tuple[list[str], KronLinear]]:
    names_of = module_names(model)
    out: list[tuple[list[str], KronLinear]] = []
    seen: set[int] = set()
    for _, module in model.named_modules():
        if isinstance(module, KronLinear) and id(module) not in seen and id(module) in names_of:
            seen.add(id(module))
            out.append((names_of[id(module)], module))
    return out


def apply_plan(
    model: nn.Module,
    plan: Mapping[str, Any],
    *,
    stored_shapes: Mapping[str, Sequence[int]] | None = None,
    mapping: ConverterTable | None = None,
) -> nn.Module:
    """Re-create the ``KronLinear`` layers of a :func:`kronify_plan` in ``model``.

    Each named module is replaced by a freshly initialised ``KronLinear`` of the recorded
    structure (on the device and dtype of the module it replaces), so that the saved
    ``state_dict`` then loads strictly. Reused modules become one shared layer again.

    A plan may come from a file, so everything is checked before anything is allocated
    or changed: every field's type; every named module must exist and be of the
    registered type the plan names (only registered converter types, never a module
    the plan would have imported), with the plan's sizes and bias presence; and the
    layers' parameters must match ``stored_shapes`` (or, without it, ranks must be at
    most :func:`torchkron.factorization.max_kronecker_rank`).

    Args:
        model: a model of the architecture that was kronified (e.g. built from its config).
        plan: the dict from :func:`kronify_plan`.
        stored_shapes: ``{tensor name: shape}`` of the checkpoint the weights come from
            (:func:`torchkron.load` passes it): every parameter of every planned layer
            must be in it with its shape.
        mapping: the converter registry (default :data:`KRONIFY_MAPPING`).

    Returns:
        ``model``, changed in place.

    Raises:
        ValueError: a malformed plan, a module that does not match it, a missing or
            mis-shaped stored tensor; the model is unchanged.
    """
    if not isinstance(plan, Mapping) or plan.get("format") != PLAN_FORMAT:
        got = plan.get("format") if isinstance(plan, Mapping) else type(plan).__name__
        raise ValueError(
            f"apply_plan: not a torchkron plan (format {got!r}, expected {PLAN_FORMAT!r}); "
            f"make one with torchkron.kronify_plan(model)."
        )
    entries = read_entries(plan)
    check_model(model, entries, KRONIFY_MAPPING if mapping is None else mapping)
    check_tensors(entries, stored_shapes)
    changes: list[tuple[str, nn.Module]] = []
    for e in entries:
        ref = reference_tensor(model.get_submodule(e.names[0]))
        layer = KronLinear(
            e.in_features,
            e.out_features,
            bias=e.bias,
            shapes=list(e.shapes),
            rank=e.rank,
            tied=e.tied,
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )
        set_source(layer, e.source)
        changes.extend((n, layer) for n in e.names)
    swap(model, changes)
    sync_config(model)
    return model


def reference_tensor(module: nn.Module) -> Tensor | None:
    for p in module.parameters():
        if not isinstance(p, nn.parameter.UninitializedParameter):
            return p
    return None


PLAN_ATTRIBUTE = "torchkron_plan"
"""The config attribute (and config.json key) holding the kronify plan of an HF model."""


def sync_config(model: nn.Module) -> None:
    """Keep an HF model's ``config.torchkron_plan`` equal to its structure, so that
    ``save_pretrained`` writes the plan into config.json.

    :func:`kronify`, :func:`apply_plan` and :func:`merge` call it after every change of
    structure; a model without a transformers config is left alone. A model whose output
    embedding is a ``KronLinear`` gets a ``resize_token_embeddings`` that refuses before
    changing anything (HF resizes the input embeddings first, then fails on the head).
    The model first gets its own copy of the config: the one it was built from is the
    caller's, and a dense model built from it later must not inherit the plan. The config
    is recognised by its class's module name, so torchkron never imports transformers.
    """
    if isinstance(output_embeddings(model), KronLinear):
        # Set as an instance attribute (types.MethodType: deepcopy rebinds it).
        guard = types.MethodType(_resize_token_embeddings, model)
        object.__setattr__(model, "resize_token_embeddings", guard)
    config = getattr(model, "config", None)
    if config is None or not _is_hf_config(config):
        return
    plan = kronify_plan(model)
    if not plan["layers"] and not hasattr(config, PLAN_ATTRIBUTE):
        return
    config = _own_config(model, config)
    if plan["layers"]:
        setattr(config, PLAN_ATTRIBUTE, plan)
    else:
        delattr(config, PLAN_ATTRIBUTE)


def output_embeddings(model: nn.Module) -> nn.Module | None:
    """``model.get_output_embeddings()`` (an HF LM head), or ``None``."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


def _resize_token_embeddings(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    if not isinstance(output_embeddings(self), KronLinear):
        return type(self).resize_token_embeddings(self, *args, **kwargs)  # type: ignore[attr-defined]
    raise ValueError(
        "resize_token_embeddings: the output embedding (get_output_embeddings()) is a "
        "KronLinear, whose out_features is fixed by its factor shapes; nothing was "
        "changed. Call torchkron.merge(model) first (dense again), resize, then kronify "
        "again; or kronify with include_output_embeddings=False (the default), which "
        "leaves the head dense."
    )


def _is_hf_config(value: object) -> bool:
    return type(value).__module__.startswith("transformers.")


def _own_config(model: nn.Module, config: Any) -> Any:
    """Give ``model`` (and every submodule holding the config or a part of it, such as a
    ``text_config``) a deep copy of ``config``; return the copy."""
    memo: dict[int, Any] = {}
    copied = copy.deepcopy(config, memo)
    for module in model.modules():
        for attr, value in list(vars(module).items()):
            if _is_hf_config(value) and id(value) in memo:
                setattr(module, attr, memo[id(value)])
    return copied
