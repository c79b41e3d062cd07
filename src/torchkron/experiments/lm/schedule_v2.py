"""The second GPT study (``torchkron lm sweep --study v2``): the first without its
learning-rate confound, plus an equal-compute comparison.

In the first study every parameter of a model trained at its structure family's best
rate, so in a Kronecker-MLP model the dense attention, embeddings and norms trained at
Kronecker's 1e-3, not dense's 4e-3. Here every run uses ``optimizer="structure-aware"``:

- every non-structured parameter (embeddings, dense attention, norms, head) trains at
  :data:`DENSE_LR`, the first study's best dense rate (``results/lm/summary.json``,
  ``best_lr.dense``), recorded in each run's config as ``dense_lr``;
- each factor of a structured layer trains at the family's swept base rate times its
  :func:`torchkron.lr_multipliers` multiplier.

Jobs, in priority order (an interrupted study is useful early):

1. each structured family's base-rate sweep (Kronecker, low-rank, Monarch; one seed,
   ``sweep_iters`` steps; extended past an end of the grid as the first study's);
   dense layers are not swept again: their rate is the first study's;
2. tier 1, the 3.9% MLP budget (dense, Kronecker, low-rank, Monarch, narrower MLP), by
   seed: seed 0 of each, then seed 1, then seed 2;
3. tier 2, the 7.8% budget and the equal-compute Kronecker model (:func:`equal_compute_width`);
4. tier 3, Kronecker in attention and the whole-model-narrower dense baselines;
5. tier 4, the ablation: Kronecker and low-rank at the 3.9% budget with
   ``optimizer="two-rate"`` (every non-structured parameter at the dense rate, every
   factor at one swept base rate, no multipliers), each with its own base-rate sweep. It
   splits v2's change from the first study into the dense rate's share (the confound)
   and the multipliers' share. Its sweeps reach 16x further up than the others' (a
   factor without its multiplier may need that much more).

Models without structured layers (dense, narrower MLP, narrower model) train exactly as
in the first study (every parameter at ``DENSE_LR``); they are rerun so that the second
study's comparisons are within one set of run files, one machine state and one session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.lm.config import LMConfig
from torchkron.experiments.lm.gpt import GPTSpec, LinearSpec
from torchkron.experiments.lm.schedule import (
    DEFAULT_LR_EXTEND,
    DEFAULT_LRS,
    DEFAULT_SWEEP_ITERS,
    REPRESENTATIVES,
    LMConfigSpec,
    StudyPlan,
    _cfg,
    main_jobs,
    select_configs,
    sweep_jobs,
    sweep_recipe,
)

__all__ = [
    "DENSE_LR",
    "NO_MULTIPLIER",
    "STRUCTURED_FAMILIES",
    "equal_compute_width",
    "study_configs_v2",
    "study_plan_v2",
]

#: The first study's best dense learning rate (results/lm/summary.json, best_lr.dense;
#: tests/experiments/lm/test_lm_v2.py checks the two agree). ``--dense-lr`` overrides it.
DENSE_LR = 4e-3
#: Families whose base rate is swept (their layers have factors).
STRUCTURED_FAMILIES = ("kron", "lowrank", "monarch")
#: The ablation's families (tier 4) and the config of each: factors at one rate without
#: their multipliers (``optimizer="two-rate"``); ``"-nomult"`` names the v2 config it ablates.
NO_MULTIPLIER = {"kron-nomult": "kron-mlp-k2-r4-nomult", "lowrank-nomult": "lowrank-mlp-r4-nomult"}
#: The width search of :func:`equal_compute_width` stops at this many times the width.
MAX_WIDEN = 8


def _kron(r: int) -> LinearSpec:
    return LinearSpec("kron", factors=2, rank=r)


def equal_compute_width(base: GPTSpec, mlp: LinearSpec) -> GPTSpec:
    """``base`` with ``mlp`` in its MLP, widened until its FLOPs per token equal ``base``'s.

    The width grows in steps of ``base``'s head size (``n_embd / n_head``), the head
    count with it (the head size stays), the MLP hidden width stays ``4 * n_embd``; the
    width whose forward FLOPs per token (:meth:`GPTSpec.flops_per_token`) are closest to
    ``base``'s wins (the smaller on a tie). Training FLOPs (forward and backward) are a
    fixed multiple of the forward FLOPs of the same layers, so they match too.

    Raises:
        UserError: no width up to ``MAX_WIDEN`` times ``base``'s can be built.

    Examples:
        >>> wide = equal_compute_width(GPTSpec(), LinearSpec("kron", rank=4))
        >>> wide.n_embd, wide.n_head
        (160, 5)
    """
    target = base.flops_per_token()
    head = base.n_embd // base.n_head
    best: tuple[int, int, GPTSpec] | None = None
    for heads in range(base.n_head, MAX_WIDEN * base.n_head + 1):
        try:
            spec = base.with_(n_embd=heads * head, n_head=heads, mlp_hidden=0, mlp=mlp)
            flops = spec.flops_per_token()
        except UserError:
            continue  # a width the Kronecker factors cannot split
        key = (abs(flops - target), heads)
        if best is None or key < best[:2]:
            best = (*key, spec)
    if best is None:
        raise UserError(
            f"No width up to {MAX_WIDEN}x {base.n_embd} gives a {mlp.describe()} MLP model; "
            "choose another --n-embd."
        )
    return best[2]


def study_configs_v2(base: GPTSpec) -> list[LMConfigSpec]:
    """Every config of the second study, in priority order, from the model ``base``.

    The names are the first study's (so the report pairs them), plus the equal-compute
    ``kron-mlp-k2-r4-e<width>``.
    """

    def cfg(name: str, family: str, group: str, budget: str, prio: int, **kw: Any) -> Any:
        model = {k: kw.pop(k) for k in ("n_embd", "mlp_hidden") if k in kw}
        c = _cfg(name, family, group, budget, prio, **kw, **model)
        spec = base.with_(attn=c.spec.attn, mlp=c.spec.mlp, mlp_hidden=c.spec.mlp_hidden)
        if "n_embd" in model:
            spec = spec.with_(n_embd=model["n_embd"])
        return replace(c, spec=spec)

    wide = equal_compute_width(base, _kron(4))
    configs = [
        # tier 1: the 3.9% MLP budget and the reference
        cfg("dense", "dense", "none", "", 10),
        cfg("kron-mlp-k2-r4", "kron", "mlp", "b4", 11, mlp=_kron(4)),
        cfg("lowrank-mlp-r4", "lowrank", "mlp", "b4", 12, mlp=LinearSpec("lowrank", rank=4)),
        cfg("monarch-mlp-b32", "monarch", "mlp", "b4", 13, mlp=LinearSpec("monarch", nblocks=32)),
        cfg("narrow-mlp-h20", "narrow", "mlp", "b4", 14, mlp_hidden=20),
        # tier 2: the 7.8% budget, and Kronecker plus width at dense's FLOPs
        cfg("kron-mlp-k2-r8", "kron", "mlp", "b8", 20, mlp=_kron(8)),
        cfg("lowrank-mlp-r8", "lowrank", "mlp", "b8", 21, mlp=LinearSpec("lowrank", rank=8)),
        cfg("monarch-mlp-b16", "monarch", "mlp", "b8", 22, mlp=LinearSpec("monarch", nblocks=16)),
        cfg("narrow-mlp-h40", "narrow", "mlp", "b8", 23, mlp_hidden=40),
        LMConfigSpec(
            f"kron-mlp-k2-r4-e{wide.n_embd}",
            wide,
            "kron",
            "wide",
            "flops",
            24,
            f"MLP {_kron(4).describe()}, n_embd {wide.n_embd}, {wide.n_head} heads "
            "(dense's FLOPs per token)",
        ),
        # tier 3: Kronecker in attention, the whole model narrower
        cfg("kron-attn-k2-r4", "kron", "attn", "b4", 30, attn=_kron(4)),
        cfg("dense-e64", "narrow", "model", "", 31, n_embd=64),
        cfg("dense-e96", "narrow", "model", "", 32, n_embd=96),
        # tier 4: the ablation (no multipliers)
        cfg("kron-mlp-k2-r4-nomult", "kron-nomult", "mlp", "b4", 40, mlp=_kron(4)),
        cfg("lowrank-mlp-r4-nomult", "lowrank-nomult", "mlp", "b4", 41,
            mlp=LinearSpec("lowrank", rank=4)),
    ]  # fmt: skip
    return [
        replace(c, description=f"{c.description}, factors without multipliers")
        if c.family in NO_MULTIPLIER
        else c
        for c in configs
    ]


def study_plan_v2(
    *,
    vocab_size: int,
    base: LMConfig,
    model: Mapping[str, Any] | None = None,
    dense_lr: float = DENSE_LR,
    lrs: Sequence[float] = DEFAULT_LRS,
    sweep_iters: int = DEFAULT_SWEEP_ITERS,
    seeds: int = 3,
    only: Sequence[str] = (),
    extend: int = DEFAULT_LR_EXTEND,
) -> StudyPlan:
    """The jobs of the second study (see the module docstring).

    Args:
        vocab_size: the text's vocabulary.
        base: the full recipe; its ``optimizer`` becomes ``structure-aware``, its
            ``dense_lr`` ``dense_lr``, its ``lr`` each structured family's best base rate
            (models without structured layers: ``dense_lr``).
        model: GPTSpec overrides of the reference model (``n_layer``, ``n_embd``...).
        dense_lr: the rate of every non-structured parameter.
        lrs: base rates of each structured family's sweep.
        sweep_iters: steps of a sweep run (the schedule compressed to them).
        seeds: seeds of each config.
        only: shell patterns on config ids (the sweeps of the families kept stay).
        extend: extra sweep points allowed per family past an end of the grid.
    """
    spec = GPTSpec(vocab_size=vocab_size, **dict(model or {}))
    configs = select_configs(study_configs_v2(spec), only)
    recipe = base.with_(optimizer="structure-aware", dense_lr=dense_lr)
    by_name = {c.name: c for c in study_configs_v2(spec)}
    representative = {**REPRESENTATIVES, **NO_MULTIPLIER}

    def recipe_of(family: str) -> LMConfig:
        return recipe.with_(optimizer="two-rate") if family in NO_MULTIPLIER else recipe

    def grid_of(family: str) -> tuple[float, ...]:
        # Without multipliers a factor's best rate may sit near the structure-aware
        # rate, the base times a multiplier of up to ~16 here: the ablation's grid goes
        # 16x past the top of the grid (a flat sweep would not trigger the extension).
        if family not in NO_MULTIPLIER:
            return tuple(lrs)
        return tuple(sorted({*lrs, *(max(lrs) * 2**k for k in range(1, 5))}))

    swept = (*STRUCTURED_FAMILIES, *NO_MULTIPLIER)
    sweep = [
        job
        for fam in swept
        if any(c.family == fam for c in configs)
        for job in sweep_jobs(
            by_name[representative[fam]],
            sweep_recipe(recipe_of(fam), sweep_iters),
            grid_of(fam),
            "base-rate sweep",
            study="v2",
        )
    ]
    main = [
        planned
        for c in configs
        for planned in (
            main_jobs(c, recipe_of(c.family), seeds, c.family, study="v2")
            if c.family in swept
            else main_jobs(c, recipe.with_(lr=dense_lr), seeds, None, study="v2")
        )
    ]
    main.sort(key=lambda p: p.order)
    return StudyPlan(sweep, main, extend)
