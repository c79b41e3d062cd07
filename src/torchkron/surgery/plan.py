"""Kronify plans: the structure of a kronified model, to re-create it before loading weights.

:func:`kronify_plan` records every ``KronLinear`` (names, sizes, shapes, rank, the type it
replaced) as a JSON-able dict; :func:`apply_plan` re-creates those layers in a freshly
built model; :func:`sync_config` keeps an HF model's config holding its plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from torchkron.layers import KronLinear
from torchkron.surgery._modules import module_names
from torchkron.surgery.build import set_source, source_of, swap
from torchkron.surgery.converters import KRONIFY_MAPPING, Unconvertible, lookup

__all__ = [
    "PLAN_ATTRIBUTE",
    "PLAN_FORMAT",
    "apply_plan",
    "dense_size",
    "kron_layers",
    "kronify_plan",
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


def apply_plan(model: nn.Module, plan: Mapping[str, Any]) -> nn.Module:
    """Re-create the ``KronLinear`` layers of a :func:`kronify_plan` in ``model``.

    Each named module is replaced by a freshly initialised ``KronLinear`` of the recorded
    structure (on the device and dtype of the module it replaces), so that the saved
    ``state_dict`` then loads strictly. Reused modules become one shared layer again.
    Sizes are checked against the module being replaced; nothing changes on an error.

    Args:
        model: a model of the architecture that was kronified (e.g. built from its config).
        plan: the dict from :func:`kronify_plan`.

    Returns:
        ``model``, changed in place.
    """
    if not isinstance(plan, Mapping) or plan.get("format") != PLAN_FORMAT:
        got = plan.get("format") if isinstance(plan, Mapping) else type(plan).__name__
        raise ValueError(
            f"apply_plan: not a torchkron plan (format {got!r}, expected {PLAN_FORMAT!r}); "
            f"make one with torchkron.kronify_plan(model)."
        )
    changes: list[tuple[str, nn.Module]] = []
    for entry in plan["layers"]:
        names = list(entry["names"])
        try:
            old = model.get_submodule(names[0])
        except AttributeError:
            raise ValueError(
                f"apply_plan: the model has no module {names[0]!r}; the plan was made for "
                f"another architecture."
            ) from None
        in_f, out_f = int(entry["in_features"]), int(entry["out_features"])
        ref = reference_tensor(old)
        size = dense_size(old)
        if size is not None and size != (out_f, in_f):
            raise ValueError(
                f"apply_plan: {names[0]} is {size[1]} -> {size[0]} in the model but "
                f"{in_f} -> {out_f} in the plan; the plan was made for another config."
            )
        layer = KronLinear(
            in_f,
            out_f,
            bias=bool(entry["bias"]),
            shapes=[tuple(s) for s in entry["shapes"]],
            rank=int(entry["rank"]),
            tied=bool(entry["tied"]),
            device=None if ref is None else ref.device,
            dtype=None if ref is None else ref.dtype,
        )
        set_source(layer, str(entry.get("source", "torch.nn.modules.linear.Linear")))
        changes.extend((n, layer) for n in names)
    swap(model, changes)
    sync_config(model)
    return model


def reference_tensor(module: nn.Module) -> Tensor | None:
    for p in module.parameters():
        if not isinstance(p, nn.parameter.UninitializedParameter):
            return p
    return None


def dense_size(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, KronLinear):
        return (module.out_features, module.in_features)
    converter, _ = lookup(module, KRONIFY_MAPPING, True)
    if converter is None:
        return None
    try:
        w = converter.read(module).weight
    except Unconvertible:
        return None
    return (int(w.shape[0]), int(w.shape[1]))


PLAN_ATTRIBUTE = "torchkron_plan"
"""The config attribute (and config.json key) holding the kronify plan of an HF model."""


def sync_config(model: nn.Module) -> None:
    """Keep an HF model's ``config.torchkron_plan`` equal to its structure, so that
    ``save_pretrained`` writes the plan into config.json.

    :func:`kronify`, :func:`apply_plan` and :func:`merge` call it after every change of
    structure; a model without a transformers config is left alone. The config is
    recognised by its class's module name, so torchkron never imports transformers.
    """
    config = getattr(model, "config", None)
    if config is None or not type(config).__module__.startswith("transformers."):
        return
    plan = kronify_plan(model)
    if plan["layers"]:
        setattr(config, PLAN_ATTRIBUTE, plan)
    elif hasattr(config, PLAN_ATTRIBUTE):
        delattr(config, PLAN_ATTRIBUTE)
