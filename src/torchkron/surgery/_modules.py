"""Walking a model: parameter counts, the names of each module, error notes."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["add_note", "count_params", "module_names", "numel"]


def numel(p: Tensor) -> int:
    # An uninitialised LazyLinear parameter has no size yet.
    return 0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel()


def count_params(model: nn.Module) -> int:
    return sum(numel(p) for p in model.parameters())


def module_names(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
    return names


def add_note(exc: BaseException, note: str) -> None:
    add = getattr(exc, "add_note", None)  # Python >= 3.11
    if add is not None:
        add(note)
