"""The config mixin every study's frozen dataclass config shares, and its checks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, fields, replace
from typing import Any, TypeVar, cast

from torchkron.experiments.common.errors import UserError

__all__ = ["ConfigDict", "check_at_least_one"]

_C = TypeVar("_C", bound="ConfigDict")


class ConfigDict:
    """``to_dict`` / ``from_dict`` / ``with_`` of a frozen dataclass config (a mixin)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        # Keys that are not fields are ignored; missing fields get their defaults.
        known = {f.name for f in fields(cast(Any, cls))}
        return cast(_C, cast(Any, cls)(**{k: v for k, v in data.items() if k in known}))

    def with_(self: _C, **changes: Any) -> _C:
        return cast(_C, replace(cast(Any, self), **changes))


def check_at_least_one(config: object, names: Iterable[str]) -> None:
    """Raise the command line's error for the first option of ``names`` below 1."""
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
