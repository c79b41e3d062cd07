"""The CPU study of ``torchkron lm sweep``: which configs, which learning rates, what order.

A config is a model spec with an id and a structure family. Each family (dense, narrow
dense MLP, Kronecker, low-rank, Monarch) gets a learning-rate sweep on one representative
config (one seed, ``sweep_iters`` steps with the schedule compressed to them); every
config of the family is then trained for the full recipe, 3 seeds, at the family's best
learning rate. Jobs are listed in priority order, so that the most informative
comparisons finish first and an interrupted study is still useful:

1. the learning-rate sweeps (narrower dense models use dense's learning rate);
2. tier 1, the headline budget (MLP linears at ~3.9% of their dense weights): dense,
   Kronecker, low-rank, Monarch and the narrower dense MLP: seed 0 of each, then seed 1
   of each, then seed 2;
3. tier 2: the whole model narrower (n_embd 64, 96), Kronecker in attention and
   everywhere, the second budget (~7.8%), Kronecker ranks 1 and 2; by seed as tier 1;
4. tier 3: 3 factors, low-rank and Monarch attention.

Structure strings (``--mlp``/``--attn`` of ``torchkron lm train``): ``dense``,
``kron:k2:r4`` (``:tied`` for one shared factor), ``lowrank:r4``, ``monarch:b32``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.lm.config import LMConfig
from torchkron.experiments.lm.gpt import GPTSpec, LinearSpec
from torchkron.experiments.lm.trainer import LMJob

__all__ = [
    "DEFAULT_LRS",
    "DEFAULT_LR_EXTEND",
    "LMConfigSpec",
    "StudyPlan",
    "format_lr",
    "parse_linear",
    "study_configs",
    "study_plan",
]

DEFAULT_LRS = (1e-3, 2e-3, 4e-3)
DEFAULT_SWEEP_ITERS = 500
DEFAULT_LR_EXTEND = 2
DENSE = LinearSpec()


def parse_linear(text: str) -> LinearSpec:
    """``dense``, ``kron:k2:r4[:tied]``, ``lowrank:r4`` or ``monarch:b32`` as a LinearSpec."""
    parts = text.strip().lower().split(":")
    kind, opts = parts[0], parts[1:]
    kw: dict[str, Any] = {"kind": kind}
    keys = {"k": "factors", "r": "rank", "b": "nblocks"}
    for opt in opts:
        if opt == "tied":
            kw["tied"] = True
        elif opt[:1] in keys and opt[1:].isdigit():
            kw[keys[opt[0]]] = int(opt[1:])
        else:
            raise UserError(
                f"Cannot read layer structure {text!r} (bad part {opt!r}); write dense, "
                "kron:k2:r4 (optionally :tied), lowrank:r4 or monarch:b32."
            )
    return LinearSpec(**kw)


def linear_id(spec: LinearSpec) -> str:
    """The inverse of :func:`parse_linear`, e.g. ``kron:k2:r4``."""
    if spec.kind == "dense":
        return "dense"
    if spec.kind == "kron":
        return f"kron:k{spec.factors}:r{spec.rank}" + (":tied" if spec.tied else "")
    if spec.kind == "lowrank":
        return f"lowrank:r{spec.rank}"
    return f"monarch:b{spec.nblocks}"


def format_lr(lr: float) -> str:
    """``0.002`` as ``2e-3`` (ids and tables)."""
    exp = math.floor(math.log10(lr))
    mant = lr / 10**exp
    m = f"{mant:.2f}".rstrip("0").rstrip(".")
    return f"{m}e{exp}"


@dataclass(frozen=True)
class LMConfigSpec:
    """One config of the study.

    Attributes:
        name: id, e.g. ``kron-mlp-k2-r4``.
        spec: the model.
        family: learning-rate family, e.g. ``kron``.
        group: which layers are structured (``mlp``, ``attn``, ``both``, ``none``,
            ``model``), for tables and plots.
        budget: budget label (``b4`` ~3.9%, ``b8`` ~7.8%), or ``""``.
        priority: position in the run order (lower first), seed 0.
        description: one line for tables.
        fixed_lr: train at the recipe's ``--lr`` instead of the family's best.
        max_seeds: at most this many seeds (0: all of ``--seeds``).
    """

    name: str
    spec: GPTSpec
    family: str
    group: str
    budget: str
    priority: int
    description: str
    fixed_lr: bool = False
    max_seeds: int = 0


def _cfg(
    name: str,
    family: str,
    group: str,
    budget: str,
    priority: int,
    *,
    attn: LinearSpec = DENSE,
    mlp: LinearSpec = DENSE,
    fixed_lr: bool = False,
    max_seeds: int = 0,
    **model: Any,
) -> LMConfigSpec:
    spec = GPTSpec(attn=attn, mlp=mlp, **model)
    parts = []
    if attn != DENSE:
        parts.append(f"attention {attn.describe()}")
    if mlp != DENSE:
        parts.append(f"MLP {mlp.describe()}")
    if model.get("mlp_hidden"):
        parts.append(f"dense MLP hidden {model['mlp_hidden']}")
    if model.get("n_embd"):
        parts.append(f"dense, n_embd {model['n_embd']}")
    what = ", ".join(parts) or "dense (nanoGPT)"
    if fixed_lr:
        what += ", the recipe's lr (nanoGPT anchor)"
    return LMConfigSpec(name, spec, family, group, budget, priority, what, fixed_lr, max_seeds)


def study_configs(vocab_size: int = 65) -> list[LMConfigSpec]:
    """Every config of the CPU study, in run priority order.

    Budgets are in the MLP linears (dense: 131,072 weights per block): ``b4`` = 2,560 per
    layer (3.9%: Kronecker k=2 R=4, low-rank r=4, Monarch 32 blocks, dense hidden 20),
    ``b8`` = 5,120 (7.8%: R=8, r=8, 16 blocks, hidden 40). Attention at R=4 / r=4 /
    32 blocks keeps ~5% of its dense weights.
    """

    def kron(r: int, k: int = 2) -> LinearSpec:
        return LinearSpec("kron", factors=k, rank=r)

    def low(r: int) -> LinearSpec:
        return LinearSpec("lowrank", rank=r)

    def mon(b: int) -> LinearSpec:
        return LinearSpec("monarch", nblocks=b)

    configs = [
        # tier 1: the headline budget, MLP linears at 3.9% of their dense weights
        _cfg("dense", "dense", "none", "", 10),
        _cfg("kron-mlp-k2-r4", "kron", "mlp", "b4", 11, mlp=kron(4)),
        _cfg("lowrank-mlp-r4", "lowrank", "mlp", "b4", 12, mlp=low(4)),
        _cfg("monarch-mlp-b32", "monarch", "mlp", "b4", 13, mlp=mon(32)),
        _cfg("narrow-mlp-h20", "narrow", "mlp", "b4", 14, mlp_hidden=20),
        # the recipe exactly (lr 1e-3, not swept), one seed: the check against nanoGPT's 1.88
        _cfg("dense-recipe", "dense", "none", "", 15, fixed_lr=True, max_seeds=1),
        # tier 2: whole model narrower, Kronecker elsewhere, the second budget, ranks
        _cfg("dense-e64", "narrow", "model", "", 20, n_embd=64),
        _cfg("kron-both-k2-r4", "kron", "both", "b4", 21, attn=kron(4), mlp=kron(4)),
        _cfg("dense-e96", "narrow", "model", "", 22, n_embd=96),
        _cfg("kron-attn-k2-r4", "kron", "attn", "b4", 23, attn=kron(4)),
        _cfg("kron-mlp-k2-r8", "kron", "mlp", "b8", 24, mlp=kron(8)),
        _cfg("lowrank-mlp-r8", "lowrank", "mlp", "b8", 25, mlp=low(8)),
        _cfg("monarch-mlp-b16", "monarch", "mlp", "b8", 26, mlp=mon(16)),
        _cfg("narrow-mlp-h40", "narrow", "mlp", "b8", 27, mlp_hidden=40),
        _cfg("kron-mlp-k2-r1", "kron", "mlp", "", 28, mlp=kron(1)),
        _cfg("kron-mlp-k2-r2", "kron", "mlp", "", 29, mlp=kron(2)),
        # tier 3: 3 factors (slow on CPU: many small contractions), attention baselines
        _cfg("kron-mlp-k3-r5", "kron", "mlp", "", 30, mlp=kron(5, 3)),
        _cfg("lowrank-attn-r4", "lowrank", "attn", "b4", 31, attn=low(4)),
        _cfg("monarch-attn-b32", "monarch", "attn", "b4", 32, attn=mon(32)),
        # tier 4: higher ranks while still far below dense (15.6% and 31% of the MLP)
        _cfg("kron-mlp-k2-r16", "kron", "mlp", "", 40, mlp=kron(16)),
        _cfg("kron-mlp-k2-r32", "kron", "mlp", "", 41, mlp=kron(32)),
    ]
    return [replace(c, spec=c.spec.with_(vocab_size=vocab_size)) for c in configs]


#: The config each family's learning rate is chosen on.
REPRESENTATIVES = {
    "dense": "dense",
    "kron": "kron-mlp-k2-r4",
    "lowrank": "lowrank-mlp-r4",
    "monarch": "monarch-mlp-b32",
}
#: Families trained at another family's learning rate: narrower dense models are dense
#: layers, so they use dense's (a CPU-budget choice, stated in the report).
LR_FAMILY = {"narrow": "dense"}


@dataclass(frozen=True)
class PlannedJob:
    """A job of the plan; ``lr_family`` set means "at that family's best learning rate",
    resolved once its sweep has finished."""

    job: LMJob
    lr_family: str | None
    order: tuple[int, int, int]


@dataclass(frozen=True)
class StudyPlan:
    """``extend``: how many times a family's sweep may grow by a factor 2 past the end of
    its grid when its best rate is at that end (a best at the edge is not yet a best)."""

    sweep: list[LMJob]
    main: list[PlannedJob]
    extend: int = DEFAULT_LR_EXTEND

    def all_names(self) -> list[str]:
        return [j.name for j in self.sweep] + [p.job.name for p in self.main]


def extension_job(tried: Sequence[LMJob], lr: float) -> LMJob:
    """The sweep run of ``tried``'s family at ``lr``, past an end of its grid."""
    first = tried[0]
    base = dict(first.extra).get("base_config", first.name)
    head = first.description.rpartition(" at ")[0]  # "...; lr sweep", "...; base-rate sweep"
    return replace(
        first,
        name=sweep_name(str(base), lr),
        config=first.config.with_(lr=lr),
        description=f"{head} at {format_lr(lr)} (past the grid's end)",
    )


def sweep_name(config: str, lr: float) -> str:
    return f"lrsweep-{config}-lr{format_lr(lr)}"


def select_configs(configs: list[LMConfigSpec], only: Sequence[str]) -> list[LMConfigSpec]:
    """The configs whose ids match one of the shell patterns ``only`` (all when empty);
    a pattern matching none is an error naming every config."""
    for pattern in only:
        if not any(fnmatch.fnmatchcase(c.name, pattern) for c in configs):
            names = ", ".join(c.name for c in configs)
            raise UserError(f"--only {pattern!r} matches no config; the configs are: {names}.")
    if only:
        configs = [c for c in configs if any(fnmatch.fnmatchcase(c.name, p) for p in only)]
    return configs


def sweep_recipe(base: LMConfig, sweep_iters: int) -> LMConfig:
    """``base`` with its schedule compressed to ``sweep_iters`` steps (a sweep run)."""
    return base.with_(
        iters=sweep_iters,
        lr_decay_iters=0,
        warmup_iters=min(base.warmup_iters, max(0, sweep_iters // 5)),
        eval_interval=min(base.eval_interval, sweep_iters),
        min_lr=0.0,
    )


def sweep_jobs(
    rep: LMConfigSpec, config: LMConfig, lrs: Sequence[float], what: str, **extra: Any
) -> list[LMJob]:
    """The sweep runs of ``rep``'s family: ``rep`` at each rate of ``lrs``, seed 0."""
    return [
        LMJob(
            sweep_name(rep.name, lr),
            rep.spec,
            config.with_(lr=lr),
            0,
            family=rep.family,
            description=f"{rep.description}; {what} at {format_lr(lr)}",
            extra=_extra(rep, "lr-sweep", base_config=rep.name, **extra),
        )
        for lr in lrs
    ]


def study_plan(
    *,
    vocab_size: int,
    base: LMConfig,
    lrs: Sequence[float] = DEFAULT_LRS,
    sweep_iters: int = DEFAULT_SWEEP_ITERS,
    seeds: int = 3,
    only: Sequence[str] = (),
    extend: int = DEFAULT_LR_EXTEND,
) -> StudyPlan:
    """The jobs of the study: the learning-rate sweeps, then the main runs by priority.

    Args:
        vocab_size: the text's vocabulary.
        base: the full recipe (its ``lr`` is replaced by each family's best).
        lrs: learning rates of each family's sweep.
        sweep_iters: steps of a sweep run (the schedule is compressed to them).
        seeds: seeds of each main config.
        only: shell patterns on config ids; when given, a config must match one (the
            sweeps of the families kept stay).
        extend: extra sweep points allowed per family past an end of the grid.
    """
    configs = select_configs(study_configs(vocab_size), only)
    by_name = {c.name: c for c in study_configs(vocab_size)}
    families = list(dict.fromkeys(LR_FAMILY.get(c.family, c.family) for c in configs))
    sweep_cfg = sweep_recipe(base, sweep_iters)
    sweep = [
        job
        for fam in families
        for job in sweep_jobs(by_name[REPRESENTATIVES[fam]], sweep_cfg, lrs, "lr sweep")
    ]
    main = [
        planned
        for c in configs
        for planned in main_jobs(
            c,
            base,
            min(seeds, c.max_seeds) if c.max_seeds else seeds,
            None if c.fixed_lr else LR_FAMILY.get(c.family, c.family),
        )
    ]
    main.sort(key=lambda p: p.order)
    return StudyPlan(sweep, main, extend)


def main_jobs(
    c: LMConfigSpec, recipe: LMConfig, seeds: int, lr_family: str | None, **extra: Any
) -> list[PlannedJob]:
    """Seeds ``0 .. seeds - 1`` of config ``c``; ``lr_family`` set: at that family's best
    rate once its sweep has finished. Ordered within a tier by seed, then priority: seed
    0 of every config, then seed 1 of every config, ..., so that an interrupted study has
    as many seeds of each config as possible."""
    return [
        PlannedJob(
            LMJob(
                c.name,
                c.spec,
                recipe,
                seed,
                family=c.family,
                description=c.description,
                extra=_extra(c, "main", **extra),
            ),
            lr_family,
            (c.priority // 10, seed, c.priority),
        )
        for seed in range(seeds)
    ]


def _extra(c: LMConfigSpec, phase: str, **more: Any) -> tuple[tuple[str, Any], ...]:
    items: dict[str, Any] = {
        "phase": phase,
        "group": c.group,
        "budget": c.budget,
        "priority": c.priority,
        **more,
    }
    return tuple(items.items())
