"""The contenders: every implementation of one Kronecker-factored linear map, built alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkron import KronLinear
from torchkron.experiments.bench.format import fmt_bytes
from torchkron.experiments.bench.shapes import BenchShape
from torchkron.functional import (
    IMPLS,
    dense_flops,
    executed_flops,
    kron_flops,
    kron_linear,
    kron_weight,
)

__all__ = ["Contender", "Skip", "build_contender", "contender_names", "make_factors"]


@dataclasses.dataclass
class Contender:
    """A callable computing the layer, its trainable tensors, and its FLOP count."""

    name: str
    fn: Callable[[Tensor], Tensor]
    params: list[Tensor]
    flops: int  # forward FLOPs of this formulation for the whole batch
    note: str = ""
    tag: str = ""


class Skip(Exception):
    """A contender that cannot run here; the message says why."""


def make_factors(shape: BenchShape, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    # Scaled so that W has nn.Linear's variance and outputs stay O(1) in bfloat16.
    std = (1.0 / (3.0 * shape.in_features * shape.rank)) ** (1.0 / (2 * len(shape.factors)))
    return [
        (torch.randn(shape.rank, o, n, generator=g) * std).to(device, dtype)
        for o, n in shape.factors
    ]


def _chain_flops(shape: BenchShape) -> int:
    """Forward FLOPs per row of torchkron's in-place chain (including grouped factors)."""
    outs = tuple(o for o, _ in shape.factors)
    ins = tuple(n for _, n in shape.factors)
    if len(outs) == 1:
        return dense_flops(ins[0], outs[0])
    return executed_flops(outs, ins, shape.rank)


def build_contender(
    name: str,
    shape: BenchShape,
    factors: list[Tensor],
    bias: Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> Contender:
    outs = [o for o, _ in shape.factors]
    ins = [n for _, n in shape.factors]
    b = shape.batch
    kron = b * kron_flops(outs, ins, shape.rank)
    dense = b * dense_flops(shape.in_features, shape.out_features)
    if name in _NEEDS_W and not shape.dense:
        size = shape.in_features * shape.out_features * torch.finfo(dtype).bits // 8
        raise Skip(f"not run: the dense W alone would take {fmt_bytes(size)}")
    if name == "dense":
        lin = nn.Linear(shape.in_features, shape.out_features, device=device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(kron_weight(factors))
            lin.bias.copy_(bias)
        return Contender(name, lin, list(lin.parameters()), dense)
    if name == "dense:onednn":
        from torchkron.functional.backends import onednn_available, onednn_linear

        if device.type != "cpu" or dtype != torch.float32 or not onednn_available():
            raise Skip("not run: oneDNN's matmul is used for float32 on the CPU only")
        w = kron_weight(factors).clone().requires_grad_()
        bb = bias.clone().requires_grad_()

        def onednn_dense(x: Tensor) -> Tensor:
            # The chain's oneDNN linear, run whatever the calibration says.
            return onednn_linear(x, w, bb)

        note = "nn.Linear's GEMMs on oneDNN (the BLAS choice alone)"
        return Contender(name, onednn_dense, [w, bb], dense, note)
    if name == "materialize":
        fs = [f.clone().requires_grad_() for f in factors]
        bb = bias.clone().requires_grad_()

        def materialize(x: Tensor) -> Tensor:
            w = _torch_kron_sum(fs)
            return F.linear(x, w, bb)

        build = shape.rank * shape.in_features * shape.out_features
        return Contender(name, materialize, [*fs, bb], dense + build, "torch.kron + F.linear")
    if name == "pyfastkron":
        return _pyfastkron_contender(shape, factors, bias, dtype, kron)
    if name == "tltorch":
        return _tltorch_contender(shape, factors, bias, dtype, device, kron)
    if name == "KronLinear":
        layer = KronLinear(
            shape.in_features,
            shape.out_features,
            shapes=shape.factors,
            rank=shape.rank,
            device=device,
            dtype=dtype,
        )
        with torch.no_grad():
            for p, f in zip(layer.factors, factors, strict=True):
                p.copy_(f)
            if layer.bias is not None:
                layer.bias.copy_(bias)
        return Contender(name, layer, list(layer.parameters()), b * _chain_flops(shape))
    if name.startswith("torchkron:"):
        impl = name.split(":", 1)[1]
        if impl in ("fastkron", "triton"):
            from torchkron.functional.backends import unsupported_reason

            # The library's one answer to "can this impl run here" (None: it can).
            x_probe = torch.empty(1, shape.in_features, dtype=dtype, device=device)
            reason = unsupported_reason(impl, x_probe, factors)
            if reason is not None:
                raise Skip(reason)
        wrapped = _ImplLayer(factors, bias, impl)
        flops = b * _chain_flops(shape) if impl in ("bmm", "fused") else kron
        return Contender(name, wrapped, list(wrapped.parameters()), flops)
    raise ValueError(f"unknown contender {name!r}")


class _ImplLayer(nn.Module):
    """``kron_linear`` with a fixed ``impl``, called as a module as KronLinear is.

    Going through ``nn.Module.__call__`` like KronLinear keeps the comparison with the
    layer's automatic choice about the choice, not about module-call overhead.
    """

    def __init__(self, factors: Sequence[Tensor], bias: Tensor, impl: str) -> None:
        super().__init__()
        self.num_factors = len(factors)
        for i, f in enumerate(factors):
            self.register_parameter(f"factor_{i}", nn.Parameter(f.clone()))
        self.bias = nn.Parameter(bias.clone())
        self.impl = impl

    def forward(self, x: Tensor) -> Tensor:
        factors = [getattr(self, f"factor_{i}") for i in range(self.num_factors)]
        return kron_linear(x, factors, self.bias, impl=self.impl)


def _torch_kron_sum(factors: Sequence[Tensor]) -> Tensor:
    """``sum_r kron(F_1[r], ..., F_k[r])`` with torch.kron, as LoKr implementations do."""
    terms = []
    for r in range(factors[0].shape[0]):
        w = factors[0][r]
        for f in factors[1:]:
            w = torch.kron(w, f[r])
        terms.append(w)
    total = terms[0]
    for w in terms[1:]:
        total = total + w
    return total


def _pyfastkron_contender(
    shape: BenchShape, factors: list[Tensor], bias: Tensor, dtype: torch.dtype, flops: int
) -> Contender:
    try:
        from pyfastkron import fastkrontorch as fk
    except Exception as exc:  # not installed, or its native library does not load
        raise Skip(f"pyfastkron not importable ({type(exc).__name__}: {exc})") from None
    if dtype not in (torch.float32, torch.float64):
        raise Skip(f"pyfastkron supports float32/float64 only, not {dtype}")
    fs = [f.clone().requires_grad_() for f in factors]
    bb = bias.clone().requires_grad_()

    def fn(x: Tensor) -> Tensor:
        y: Tensor = fk.gemkm(x, [f[0].t() for f in fs])
        for r in range(1, shape.rank):
            y = y + fk.gemkm(x, [f[r].t() for f in fs])
        return y + bb

    note = "one gemkm per rank term" if shape.rank > 1 else ""
    return Contender("pyfastkron", fn, [*fs, bb], flops, note)


def _tltorch_contender(
    shape: BenchShape,
    factors: list[Tensor],
    bias: Tensor,
    dtype: torch.dtype,
    device: torch.device,
    flops: int,
) -> Contender:
    try:
        import tltorch
    except Exception as exc:
        raise Skip(f"tensorly-torch not importable ({type(exc).__name__}: {exc})") from None
    k = len(shape.factors)
    if shape.rank > 1 and k > 2:
        raise Skip(
            "a sum of R Kronecker products of k > 2 factors is not a block tensor-train "
            "of TT-rank R; tltorch has no exact equivalent"
        )
    ranks = (1, shape.rank, 1) if k == 2 else (1,) * (k + 1)
    layer = tltorch.FactorizedLinear(
        tuple(n for _, n in shape.factors),
        tuple(o for o, _ in shape.factors),
        factorization="blocktt",
        rank=ranks,
        device=device,
        dtype=dtype,
    )
    with torch.no_grad():
        cores = layer.weight.factors  # core i: (r_i, out_i, in_i, r_{i+1})
        if k == 2:
            cores[0].copy_(factors[0].permute(1, 2, 0).unsqueeze(0))
            cores[1].copy_(factors[1].unsqueeze(-1))
        else:
            for core, f in zip(cores, factors, strict=True):
                core.copy_(f[0][None, :, :, None])
        layer.bias.copy_(bias)
    return Contender("tltorch", layer, list(layer.parameters()), flops, "blocktt einsum")


# Contenders that hold the dense W: not run where W alone would not fit.
_NEEDS_W = ("dense", "dense:onednn", "materialize", "torchkron:materialize")


def contender_names() -> list[str]:
    impls = [f"torchkron:{i}" for i in IMPLS if i != "auto"]
    return ["dense", "dense:onednn", "materialize", "pyfastkron", "tltorch", *impls, "KronLinear"]
