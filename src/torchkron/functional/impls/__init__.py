"""One module per ``impl=`` value of :func:`torchkron.functional.kron_linear`.

Each module exposes the same two functions:

- ``run(x, factors, bias, sizes) -> Tensor``: ``x @ W.T + bias`` for a 2-D ``x`` of shape
  ``(B, prod in_i)``, arguments already validated (:mod:`torchkron.functional._guards`);
- ``unsupported_reason(x, factors) -> str | None``: why it cannot run here (a missing
  optional package, device or dtype), or None when it can.

A new implementation is a new module here plus its name in :data:`MODULES`; no module
here imports the dispatcher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from torch import Tensor

from torchkron.functional._guards import Sizes
from torchkron.functional.impls import bmm, fastkron, fused, materialize, permute, triton

__all__ = ["MODULES", "Impl"]


class Impl(Protocol):
    """What every implementation module provides."""

    def run(
        self, x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, sizes: Sizes
    ) -> Tensor: ...

    def unsupported_reason(self, x: Tensor, factors: Sequence[Tensor]) -> str | None: ...


#: The implementation module of each ``impl=`` value other than ``"auto"``.
MODULES: Mapping[str, Impl] = MappingProxyType(
    {
        "permute": permute,
        "bmm": bmm,
        "fused": fused,
        "fastkron": fastkron,
        "materialize": materialize,
        "triton": triton,
    }
)
