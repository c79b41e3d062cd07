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

from types import MappingProxyType

from torchkron.functional.impls import bmm, fastkron, fused, materialize, permute, triton

__all__ = ["MODULES"]

#: The implementation module of each ``impl=`` value other than ``"auto"``.
MODULES = MappingProxyType(
    {
        "permute": permute,
        "bmm": bmm,
        "fused": fused,
        "fastkron": fastkron,
        "materialize": materialize,
        "triton": triton,
    }
)
