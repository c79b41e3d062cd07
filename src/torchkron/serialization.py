"""Saving a kronified model with its structure: ``torchkron.save`` / ``torchkron.load``.

The file is a safetensors file: the ``state_dict`` (shared tensors stored once) plus the
kronify plan (:func:`torchkron.kronify_plan`) as JSON in its metadata, so that
``load(path, base_model)`` can rebuild the ``KronLinear`` layers in a freshly built model
before loading the weights. safetensors is imported only here, on first use.
"""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from torchkron.surgery import PLAN_FORMAT, apply_plan, kronify_plan

__all__ = ["load", "read_plan", "save", "stored_shapes"]

_PLAN_KEY = "torchkron_plan"


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError(
            "torchkron.save/load need safetensors: pip install safetensors (or, in a clone "
            "of the torchkron repository, pip install -e '.[hf]')."
        ) from None
    return safetensors.torch


def save(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s weights and kronify plan to one safetensors file.

    Tied parameters (e.g. an LM head tied to the embeddings) are stored once and tied
    again on :func:`load`.

    Args:
        model: a model, kronified or not (a model without ``KronLinear`` stores an empty
            plan).
        path: the file to write (``.safetensors`` by convention).

    Examples:
        >>> import tempfile, os, torch
        >>> from torchkron import kronify
        >>> net, _ = kronify(nn.Sequential(nn.Linear(8, 8)), rank=2)
        >>> path = os.path.join(tempfile.mkdtemp(), "net.safetensors")
        >>> save(net, path)
        >>> again = load(path, nn.Sequential(nn.Linear(8, 8)))
        >>> bool(torch.equal(again[0].factor_0, net[0].factor_0))
        True
    """
    st = _safetensors()
    plan = kronify_plan(model)
    st.save_model(model, os.fspath(path), metadata={_PLAN_KEY: json.dumps(plan)})


def read_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The kronify plan stored in a file written by :func:`save`."""
    _safetensors()
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if _PLAN_KEY not in meta:
        raise ValueError(
            f"torchkron.load: {os.fspath(path)} has no torchkron plan in its metadata; it was "
            f"not written by torchkron.save (for a plain state_dict use "
            f"safetensors.torch.load_model)."
        )
    try:
        plan = json.loads(meta[_PLAN_KEY])
    except (ValueError, RecursionError) as exc:
        raise ValueError(
            f"torchkron.load: the plan in {os.fspath(path)} is not valid JSON ({exc}); the "
            f"file is damaged or was not written by torchkron.save."
        ) from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        got = plan.get("format") if isinstance(plan, dict) else type(plan).__name__
        raise ValueError(
            f"torchkron.load: plan format {got!r} in {os.fspath(path)} is not "
            f"{PLAN_FORMAT!r}; it was written by another torchkron version."
        )
    return plan


def stored_shapes(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """``{tensor name: shape}`` of a safetensors file, read from its header only."""
    _safetensors()
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def load(path: str | os.PathLike[str], base_model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Rebuild a model saved by :func:`save` from a model of the original architecture.

    The stored plan is applied to ``base_model`` (its layers are replaced by
    ``KronLinear`` of the saved shapes and ranks, reused modules shared again), then
    the weights are loaded. The plan is checked against ``base_model`` and against the
    file's tensor shapes before anything is allocated (see :func:`torchkron.apply_plan`).

    Args:
        path: a file written by :func:`save`.
        base_model: the architecture before kronify, e.g. built from the same config
            (its weights are overwritten).
        strict: every key must match (safetensors' ``load_model`` semantics).

    Returns:
        ``base_model``, changed in place.
    """
    st = _safetensors()
    plan = read_plan(path)
    apply_plan(base_model, plan, stored_shapes=stored_shapes(path))
    missing, unexpected = st.load_model(base_model, os.fspath(path), strict=strict)
    del missing, unexpected
    return base_model
