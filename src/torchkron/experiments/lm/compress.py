"""Students of ``torchkron lm compress``: a trained dense GPT with its MLP made smaller.

Every student is the teacher (same embeddings, attention, LayerNorms) with the two MLP
linears of each block replaced at a budget, a fraction of the dense MLP weights (the GPT
study's 3.9% and 7.8%), initialised by one method:

- ``kron-plain``: Kronecker, nearest Kronecker sum of the weight (Van Loan);
- ``kron-act``: Kronecker, activation-aware (K-FAC whitening with each layer's input
  moment on calibration batches; :func:`torchkron.nearest_kronecker` with
  ``input_second_moment``);
- ``kron-act-perm``: as ``kron-act`` after permuting the hidden units
  (:func:`torchkron.factorization.hidden_permutation`, chosen by the plain Kronecker
  error; the hidden moment is permuted with them);
- ``lowrank-svd`` / ``lowrank-whitened``: low rank, truncated SVD of ``W`` / of
  ``W C^1/2`` (:func:`torchkron.factorization.whitened_low_rank`);
- ``monarch``: the Monarch projection (:func:`torchkron.factorization.monarch_projection`);
- ``pruned``: the dense MLP with only its largest-magnitude weights (as many per layer as
  the Kronecker layer stores), the rest fixed at zero;
- ``narrow-mlp``: the dense MLP keeping the hidden units with the largest
  ``||fc row|| * ||proj column||`` (as many weights as the Kronecker layer);
- ``narrow-model``: the whole model narrower (``n_embd`` chosen so its parameters are
  closest to the Kronecker student's), dense, random init.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from torchkron.experiments.common.compression import input_moments
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.lm.gpt import GPT, GPTSpec, LinearSpec, layer_weights
from torchkron.factorization import (
    factor_shapes,
    hidden_permutation,
    monarch_projection,
    nearest_kronecker,
    output_error,
    permute_hidden,
    whitened_low_rank,
)
from torchkron.functional import kron_weight

__all__ = [
    "BUDGETS",
    "METHODS",
    "Student",
    "budget_specs",
    "build_student",
    "mlp_moments",
]

#: Budget id -> fraction of the dense MLP weights (the GPT study's R=4 and R=8 budgets).
BUDGETS: dict[str, float] = {"3.9": 2560 / 65536, "7.8": 5120 / 65536}
METHODS = (
    "kron-plain",
    "kron-act",
    "kron-act-perm",
    "lowrank-svd",
    "lowrank-whitened",
    "monarch",
    "pruned",
    "narrow-mlp",
    "narrow-model",
)
#: Structure family of each method, for the report and the plot.
FAMILY = {
    "kron-plain": "kron",
    "kron-act": "kron",
    "kron-act-perm": "kron",
    "lowrank-svd": "lowrank",
    "lowrank-whitened": "lowrank",
    "monarch": "monarch",
    "pruned": "pruned",
    "narrow-mlp": "narrow",
    "narrow-model": "narrow-model",
}


@dataclass(frozen=True)
class BudgetSpecs:
    """The MLP structure of every method at one budget, for a teacher's widths."""

    kron: LinearSpec
    lowrank: LinearSpec
    monarch: LinearSpec
    hidden: int  # narrow-mlp's hidden units
    nonzeros: int  # pruned: kept weights per layer


def _nearest_divisor(n: int, target: float) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))


def budget_specs(spec: GPTSpec, fraction: float) -> BudgetSpecs:
    """Each method's structure nearest to ``fraction`` of a dense MLP layer's weights.

    For the study's teacher (``n_embd`` 128, hidden 512) the 3.9% budget is Kronecker
    ``R = 4``, low rank ``r = 4``, Monarch ``b = 32``, 20 hidden units and 2,560 weights
    per layer: the from-scratch configs of the GPT study.
    """
    e, h = spec.n_embd, spec.hidden
    target = fraction * e * h
    shapes = factor_shapes(e, h)
    per_rank = sum(o * n for o, n in shapes)
    kron = LinearSpec("kron", factors=2, rank=max(1, round(target / per_rank)))
    lowrank = LinearSpec("lowrank", rank=max(1, round(target / (e + h))))
    nblocks = _nearest_divisor(math.gcd(e, h), min(e, h) * (e + h) / target)
    monarch = LinearSpec("monarch", nblocks=nblocks)
    kron_weights = layer_weights(kron, e, h)
    return BudgetSpecs(kron, lowrank, monarch, max(1, round(kron_weights / e)), kron_weights)


def mlp_moments(model: GPT, batches: Sequence[Tensor]) -> dict[str, Tensor]:
    """``E[x x^T]`` of the inputs of every ``blocks.i.mlp.fc`` / ``mlp.proj`` over the
    calibration ``batches`` (token ids), float64; leaves ``model`` in eval mode."""
    model.eval()
    names = [name for name, _ in model.named_modules() if name.endswith(("mlp.fc", "mlp.proj"))]
    return input_moments(model, names, batches)


@dataclass
class Student:
    """A student model and what its conversion did."""

    model: GPT
    spec: GPTSpec
    structure: str
    masks: dict[str, Tensor]  # pruned weights: parameter name -> keep mask
    conversion: dict[str, Any]  # per-layer errors (weight and output) and notes


def _narrow_model_spec(teacher: GPTSpec, params: int) -> GPTSpec:
    best: tuple[int, GPTSpec] | None = None
    for e in range(teacher.n_head, teacher.n_embd + 1, teacher.n_head):
        spec = teacher.with_(n_embd=e, mlp_hidden=0, mlp=LinearSpec(), attn=LinearSpec())
        with torch.device("meta"):
            count = GPT(spec).num_parameters()
        if best is None or abs(count - params) < abs(best[0] - params):
            best = (count, spec)
    assert best is not None
    return best[1]


def build_student(
    teacher: GPT,
    method: str,
    budget: str,
    moments: dict[str, Tensor],
    *,
    seed: int,
) -> Student:
    """The student of ``method`` at ``budget`` (``BUDGETS`` key) from ``teacher``.

    ``moments`` are the teacher's MLP input moments (:func:`mlp_moments`); ``seed`` only
    matters for ``narrow-model`` (random init).
    """
    if method not in METHODS:
        raise UserError(f"Unknown compression method {method!r}; choose from {', '.join(METHODS)}.")
    if budget not in BUDGETS:
        raise UserError(f"Unknown budget {budget!r}; choose from {', '.join(BUDGETS)}.")
    tspec = teacher.spec
    specs = budget_specs(tspec, BUDGETS[budget])
    if method == "narrow-model":
        with torch.device("meta"):
            kron_params = GPT(tspec.with_(mlp=specs.kron)).num_parameters()
        spec = _narrow_model_spec(tspec, kron_params)
        torch.manual_seed(seed)
        model = GPT(spec)
        return Student(model, spec, f"dense, n_embd {spec.n_embd} (random init)", {}, {})
    mlp = {
        "kron-plain": specs.kron,
        "kron-act": specs.kron,
        "kron-act-perm": specs.kron,
        "lowrank-svd": specs.lowrank,
        "lowrank-whitened": specs.lowrank,
        "monarch": specs.monarch,
        "pruned": LinearSpec(),
        "narrow-mlp": LinearSpec(),
    }[method]
    spec = tspec.with_(mlp=mlp, mlp_hidden=specs.hidden if method == "narrow-mlp" else 0)
    torch.manual_seed(seed)
    model = GPT(spec)
    # Everything outside the MLPs is the teacher's.
    state = {k: v for k, v in teacher.state_dict().items() if ".mlp." not in k}
    model.load_state_dict(state, strict=False)
    masks: dict[str, Tensor] = {}
    layers: list[dict[str, Any]] = []
    tblocks: list[Any] = list(teacher.blocks)
    sblocks: list[Any] = list(model.blocks)
    for i, (tblock, sblock) in enumerate(zip(tblocks, sblocks, strict=True)):
        fc_w = tblock.mlp.fc.weight.detach()  # (h, e)
        proj_w = tblock.mlp.proj.weight.detach()  # (e, h)
        c_fc = moments[f"blocks.{i}.mlp.fc"]
        c_proj = moments[f"blocks.{i}.mlp.proj"]
        if method == "narrow-mlp":
            # Units that carry the most: the largest ||fc row|| * ||proj column||.
            score = fc_w.norm(dim=1) * proj_w.norm(dim=0)
            keep = score.topk(specs.hidden).indices.sort().values
            with torch.no_grad():
                sblock.mlp.fc.weight.copy_(fc_w[keep])
                sblock.mlp.proj.weight.copy_(proj_w[:, keep])
            kept = float((score[keep] ** 2).sum() / (score**2).sum())
            layers.append({"block": i, "kept_units": specs.hidden, "kept_score_fraction": kept})
            continue
        if method == "kron-act-perm":
            shapes_fc = factor_shapes(tspec.n_embd, tspec.hidden)
            shapes_proj = factor_shapes(tspec.hidden, tspec.n_embd)
            perm, before, after = hidden_permutation(
                fc_w, proj_w, shapes_fc, shapes_proj, specs.kron.rank
            )
            fc_w, _, proj_w = permute_hidden(fc_w, None, proj_w, perm)
            c_proj = c_proj[perm][:, perm]
            layers.append({"block": i, "permutation_sq_error": [before, after]})
        for role, w, c, layer in (
            ("fc", fc_w, c_fc, sblock.mlp.fc),
            ("proj", proj_w, c_proj, sblock.mlp.proj),
        ):
            name = f"blocks.{i}.mlp.{role}"
            errors = _convert(method, w, c, layer, specs, masks, name)
            layers.append({"block": i, "role": role, **errors})
    structure = {
        "pruned": f"dense MLP, {specs.nonzeros:,} nonzeros per layer",
        "narrow-mlp": f"dense MLP hidden {specs.hidden}",
    }.get(method, mlp.describe())
    return Student(model, spec, structure, masks, {"layers": layers})


def _convert(
    method: str,
    w: Tensor,
    c: Tensor,
    layer: Any,
    specs: BudgetSpecs,
    masks: dict[str, Tensor],
    name: str,
) -> dict[str, float]:
    """Set ``layer`` from the teacher weight ``w``; returns its weight and output errors."""
    w64 = w.to(torch.float64)
    with torch.no_grad():
        if method.startswith("kron"):
            shapes = factor_shapes(w.shape[1], w.shape[0])
            moment = None if method == "kron-plain" else c
            factors, _ = nearest_kronecker(w, shapes, specs.kron.rank, input_second_moment=moment)
            for param, value in zip(layer.factors, factors, strict=True):
                param.copy_(value)
            approx = kron_weight([f.double() for f in factors])
        elif method.startswith("lowrank"):
            moment = c if method == "lowrank-whitened" else None
            u, v, _ = whitened_low_rank(w, specs.lowrank.rank, moment)
            layer.u.copy_(u)
            layer.v.copy_(v)
            approx = u.double() @ v.double().mT
        elif method == "monarch":
            b1, b2, _ = monarch_projection(w, specs.monarch.nblocks)
            layer.blkdiag1.copy_(b1)
            layer.blkdiag2.copy_(b2)
            approx = layer.weight.detach().double()
        elif method == "pruned":
            keep = torch.zeros(w.numel(), dtype=torch.bool)
            keep[w.abs().reshape(-1).topk(specs.nonzeros).indices] = True
            mask = keep.reshape(w.shape)
            layer.weight.copy_(w * mask)
            masks[f"{name}.weight"] = mask
            approx = (w * mask).double()
        else:
            raise AssertionError(method)  # narrow-mlp is converted per block
    return {
        "weight_error": output_error(w64, approx, None),
        "output_error": output_error(w64, approx, c),
    }
