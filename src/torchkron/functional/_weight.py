"""Building the dense ``W``, and the inference cache of the built ``W``."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from torchkron.functional._guards import check_factors, tracing, transformed

__all__ = [
    "WEIGHT_CACHE",
    "cacheable",
    "cached_weight",
    "clear_weight_cache",
    "kron_terms",
    "kron_weight",
    "materialize",
    "set_weight_cache",
]


def kron_weight(factors: Sequence[Tensor]) -> Tensor:
    """Build the dense weight ``W = sum_r F_1[r] (x) ... (x) F_k[r]``.

    Args:
        factors: ``k`` tensors, factor ``i`` of shape ``(R, out_i, in_i)``.

    Returns:
        ``W`` of shape ``(prod out_i, prod in_i)``, differentiable in the factors (complex
        factors included), in the factors' dtype also under ``torch.autocast`` (as
        ``nn.Linear.weight`` stays float32 there).

    Examples:
        >>> a, b = torch.randn(1, 2, 3), torch.randn(1, 4, 5)
        >>> torch.equal(kron_weight([a, b]), torch.kron(a[0], b[0]))
        True
    """
    check_factors(factors, "kron_weight")
    if torch._C._is_any_autocast_enabled():
        with torch.autocast(factors[0].device.type, enabled=False):
            return materialize(factors)
    return materialize(factors)


def materialize(factors: Sequence[Tensor]) -> Tensor:
    """``W`` as one GEMM over the rank: the first ``k - 1`` factors' terms times the last's.

    ``W[(a, c), (b, d)] = sum_r A[r, a, b] F_k[r, c, d]`` is a ``(a b, R) @ (R, c d)``
    product followed by one permute copy; its backward is two GEMMs of the same size, where
    the broadcast product ``A[:, :, None, :, None] * F_k[:, None, :, None, :]`` would hold
    R copies of ``W`` and reduce them.
    """
    if len(factors) == 1:
        f = factors[0]
        return f[0] if f.shape[0] == 1 else f.sum(0)
    head = factors[0] if len(factors) == 2 else kron_terms(factors[:-1])
    last = factors[-1]
    rank, a, b = head.shape
    _, c, d = last.shape
    w = head.reshape(rank, a * b).t() @ last.reshape(rank, c * d)  # (a b, c d)
    return w.view(a, b, c, d).permute(0, 2, 1, 3).reshape(a * c, b * d)


def kron_terms(factors: Sequence[Tensor]) -> Tensor:
    """``(R, prod out_i, prod in_i)``: the Kronecker product of each rank term, unsummed."""
    w = factors[0]
    rank = w.shape[0]
    for f in factors[1:]:
        _, o, n = w.shape
        _, p, q = f.shape
        w = (w[:, :, None, :, None] * f[:, None, :, None, :]).reshape(rank, o * p, n * q)
    return w


class _CacheEntry(NamedTuple):
    ref: Any  # weakref.ref to the first factor (drops the entry when it is freed)
    key: tuple[Any, ...]  # identity, storage, version and layout of every factor
    snapshot: tuple[Tensor, ...]  # copies of the factors' values W was built from
    weight: Tensor


#: One entry per (first factor's id, compute dtype): inference under autocast and in
#: the factors' own dtype each get their own ``W``.
WEIGHT_CACHE: dict[tuple[int, torch.dtype], _CacheEntry] = {}
_CACHE_ENABLED = True


def clear_weight_cache() -> None:
    """Drop every cached materialised ``W`` (see ``impl="materialize"``).

    The cache holds one ``W`` per factor set and compute dtype used for inference. An
    entry is reused only while every factor is the same tensor, with the same storage
    (``data_ptr``), version counter (moved by optimizer steps, ``copy_``,
    ``load_state_dict``) and layout, *and* equal values to a snapshot of the factors,
    from which ``W`` itself was built: writes that bypass version counters (through
    ``tensor.data``, into a flat buffer the parameters are views of, as
    ``torchkron.experiments.mnist.optim.FlatAdadelta`` does, or from another thread or
    process) are caught by the comparison, which costs one pass over the (small)
    factors per call.
    """
    WEIGHT_CACHE.clear()


def set_weight_cache(enabled: bool) -> None:
    """Turn caching of the materialised ``W`` in inference on (default) or off."""
    global _CACHE_ENABLED
    _CACHE_ENABLED = bool(enabled)
    if not enabled:
        clear_weight_cache()


def _cache_key(factors: Sequence[Tensor]) -> tuple[Any, ...] | None:
    try:
        return tuple(
            (id(f), f.data_ptr(), f._version, tuple(f.shape), f.stride(), f.dtype, f.device)
            for f in factors
        )
    except RuntimeError:  # inference tensors have no version counter: never cached
        return None


def cacheable(factors: Sequence[Tensor]) -> bool:
    """Whether ``W`` of these factors may come from (and go to) the cache: inference,
    caching on, no tracing, plain tensors."""
    if not _CACHE_ENABLED or (torch.is_grad_enabled() and any(f.requires_grad for f in factors)):
        return False
    if tracing() or transformed():
        return False
    return all(type(f) in (Tensor, torch.nn.Parameter) for f in factors)


def _build(factors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """``W`` in ``dtype``, built in the factors' own dtype (autocast off) and then cast,
    as ``nn.Linear`` under autocast casts its float32 weight."""
    with torch.autocast(factors[0].device.type, enabled=False):
        return materialize(factors).to(dtype)


def cached_weight(factors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """``W`` of ``factors`` in ``dtype`` (default: theirs), without autograd, reused while
    no factor has changed."""
    dtype = factors[0].dtype if dtype is None else dtype
    key = _cache_key(factors)
    if key is None:
        with torch.no_grad():
            return _build(factors, dtype)
    head = factors[0]
    slot = (id(head), dtype)
    entry = WEIGHT_CACHE.get(slot)
    if (
        entry is not None
        and entry.ref() is head
        and entry.key == key
        and all(torch.equal(f, s) for f, s in zip(factors, entry.snapshot, strict=True))
    ):
        return entry.weight
    # Snapshot first, then build W from the snapshot itself: a write that lands while W
    # is built (another thread, another process sharing the memory) then shows as a
    # difference between the factors and the snapshot on the next call, instead of
    # hiding behind a snapshot taken after it. Outside inference mode (even when called
    # in it), so that W may later be saved for backward by a training step.
    with torch.inference_mode(False), torch.no_grad():
        snapshot = tuple(f.detach().clone() for f in factors)
        w = _build(snapshot, dtype)

    def _drop(_: Any, slot: tuple[int, torch.dtype] = slot) -> None:
        current = WEIGHT_CACHE.get(slot)
        if current is not None and current.ref() is None:
            del WEIGHT_CACHE[slot]

    WEIGHT_CACHE[slot] = _CacheEntry(weakref.ref(head, _drop), key, snapshot, w)
    return w
