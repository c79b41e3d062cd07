"""The one validation of factors, input and bias that every entry point shares, and the
checks of what the caller's context allows (tracing, autograd recording).

The entry points (:func:`torchkron.functional.kron_linear`, ``kron_weight``,
``choose_impl``, ``kron_linear_triton``) validate here once; the implementations in
:mod:`torchkron.functional.impls` trust what they are given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Sizes",
    "check_bias",
    "check_factors",
    "check_input",
    "check_real",
    "records",
    "tracing",
    "transformed",
]


class Sizes(NamedTuple):
    """The validated sizes of a factor set."""

    rank: int  # number of summed Kronecker terms R
    outs: list[int]  # out_i of each factor
    ins: list[int]  # in_i of each factor

    @property
    def in_features(self) -> int:
        return math.prod(self.ins)

    @property
    def out_features(self) -> int:
        return math.prod(self.outs)


def check_factors(factors: Sequence[Tensor], caller: str) -> Sizes:
    """Validate factor tensors; return their rank and sizes."""
    if len(factors) == 0:
        raise ValueError(f"{caller}: got no factors; pass a sequence of at least one tensor.")
    for i, f in enumerate(factors):
        if f.dim() != 3:
            raise ValueError(
                f"{caller}: factor {i} has shape {tuple(f.shape)}, but every factor must be "
                "3-D (rank, out_i, in_i); add a leading rank dimension with factor.unsqueeze(0)."
            )
    ranks = {int(f.shape[0]) for f in factors}
    if len(ranks) != 1:
        shapes = [tuple(f.shape) for f in factors]
        raise ValueError(
            f"{caller}: the factors' leading (rank) dimensions differ: {shapes}; every factor "
            "must hold the same number R of summed terms."
        )
    rank = ranks.pop()
    if rank < 1:
        raise ValueError(f"{caller}: the factors have rank 0; each needs at least one term.")
    return Sizes(rank, [int(f.shape[1]) for f in factors], [int(f.shape[2]) for f in factors])


def check_input(x: Tensor, sizes: Sizes, caller: str, *, hint: bool = True) -> None:
    """The input's last dimension must be ``in_features``.

    ``hint`` adds the alternative of other factors to the message (the factor set is the
    caller's choice in :func:`~torchkron.functional.kron_linear`).
    """
    in_features = sizes.in_features
    if x.dim() != 0 and x.shape[-1] == in_features:
        return
    got = "a 0-d tensor" if x.dim() == 0 else f"shape {tuple(x.shape)}"
    ins = " x ".join(str(n) for n in sizes.ins)
    if not hint:
        raise ValueError(
            f"{caller}: the input has {got}, but its last dimension must be "
            f"in_features={in_features} ({ins}); reshape it to (*, {in_features})."
        )
    raise ValueError(
        f"{caller}: the input has {got}, but its last dimension must be "
        f"in_features={in_features} (the product of the factors' in-sizes {ins}); "
        f"reshape the input to (*, {in_features}) or use factors whose in-sizes "
        f"multiply to {x.shape[-1] if x.dim() else 'its size'}."
    )


def check_bias(bias: Tensor | None, sizes: Sizes, caller: str) -> None:
    """``bias`` must be ``None`` or of shape ``(out_features,)``."""
    out_features = sizes.out_features
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"{caller}: bias has shape {tuple(bias.shape)}, but it must be "
            f"({out_features},) to match out_features."
        )


def check_real(x: Tensor, factors: Sequence[Tensor], bias: Tensor | None, caller: str) -> None:
    """Refuse complex tensors: the hand-written backwards and the oneDNN, FastKron and
    Triton kernels are written for real numbers (a transpose where a complex gradient
    needs a conjugate transpose), so a complex call would give wrong gradients."""
    # Input and first factor only, on the hot path: a complex tensor among real ones
    # already fails in the first GEMM that mixes them (torch requires one dtype).
    if not (x.dtype.is_complex or factors[0].dtype.is_complex) and (
        bias is None or not bias.dtype.is_complex
    ):
        return
    named = [("input", x), *((f"factor {i}", f) for i, f in enumerate(factors)), ("bias", bias)]
    what = ", ".join(f"{n} {t.dtype}" for n, t in named if t is not None and t.is_complex())
    raise TypeError(
        f"{caller}: complex dtypes are not supported (got {what}). Build the weight with "
        "torchkron.functional.kron_weight(factors), which is differentiable for complex "
        "factors, and apply it with torch.nn.functional.linear(x, weight, bias); or keep "
        "real and imaginary parts as separate real tensors."
    )


def tracing() -> bool:
    """Under torch.compile, torch.export or torch.jit.trace: plain operators only, no
    state (trace cannot check a custom Function; the compiler optimises the plain graph,
    and a cached weight would be baked into it)."""
    return bool(torch._C._get_tracing_state()) or torch.compiler.is_compiling()


def transformed() -> bool:
    """Under a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...): plain
    operators only. The hand-written autograd Functions save intermediate states, work
    in place or call kernels (oneDNN, FastKron, Triton) that have no batching rule, so
    the transforms differentiate and batch the plain operators instead; the cache is
    off (its tensors would be the transform's wrappers)."""
    return bool(torch._C._are_functorch_transforms_active())


def records(*tensors: Tensor | None) -> bool:
    """Whether autograd records an operation on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
