"""One run of ``torchkron lm compress``: convert the teacher, then distil into the student.

The loss is the KL divergence from the teacher's next-character distribution to the
student's at temperature ``T`` (times ``T^2``, Hinton et al.), optionally plus the mean
squared error between the final hidden states (``hidden_mse``). The optimiser, schedule
and data sampling are the GPT study's (AdamW, warm-up then cosine, gradient clip,
nanoGPT's random windows; ``optimizer="structure-aware"``, the default, sets the rates
as the second GPT study does: every factor of a structured layer at ``lr`` times its
:func:`torchkron.lr_multipliers` multiplier, every other parameter at ``dense_lr``);
every student gets the same number of iterations. The
validation loss (cross-entropy on the whole validation split) is measured right after
the conversion and after the distillation. A checkpoint every ``eval_interval`` steps
makes the run resumable; the record is one JSON file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkron.experiments.common.checkpoints import RunPaths, save_torch
from torchkron.experiments.common.compression import distillation_loss
from torchkron.experiments.common.environment import environment, now_iso
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_json
from torchkron.experiments.common.runs import SCHEMA, RunRecord
from torchkron.experiments.data.text import TextData
from torchkron.experiments.lm.compress import FAMILY, build_student, mlp_moments
from torchkron.experiments.lm.config import LMConfig
from torchkron.experiments.lm.gpt import GPT
from torchkron.experiments.lm.schedule import format_lr
from torchkron.experiments.lm.trainer import full_split_loss, lr_at, make_optimizer, sample_batch

__all__ = [
    "DISTILL_OPTIMIZERS",
    "FIRST_ROUND",
    "DistillConfig",
    "DistillJob",
    "calibration_batches",
    "distill_run",
    "read_record",
    "saved_config",
]

#: How the distillation sets learning rates (see :class:`DistillConfig`).
DISTILL_OPTIMIZERS = ("structure-aware", "one-rate")
#: The first round's recipe (one AdamW rate for every parameter), whose run files predate
#: the ``optimizer`` and ``dense_lr`` settings and keep the untagged names.
FIRST_ROUND = {"optimizer": "one-rate", "lr": 1e-3}

_KEYS = ("schema", "kind", "variant", "method", "budget", "seed", "config", "metrics", "complete")


def read_record(path: Path) -> RunRecord:
    """One ``lm compress`` run file, checked for the keys the report reads."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"Run file {path} cannot be read ({type(exc).__name__}); delete it and rerun "
            "`torchkron lm compress --resume` to redo that run."
        ) from None
    missing = [k for k in _KEYS if not isinstance(record, dict) or k not in record]
    if missing or record.get("kind") != "lm-compress" or record.get("schema") != SCHEMA:
        raise UserError(
            f"Run file {path} is not an lm compress run record (missing {missing} or another "
            "kind/schema); remove it from the runs folder."
        )
    return dict(record)


_DATA_SEED_OFFSET = 2_000_003
_CALIB_SEED = 7_777


@dataclass(frozen=True)
class DistillConfig:
    """The distillation recipe (the same for every student).

    Attributes:
        iters: optimizer steps.
        lr: peak learning rate (warm-up ``warmup_iters``, cosine to a tenth of the peak);
            ``structure-aware``: the base rate of the factors, each times its
            :func:`torchkron.lr_multipliers` multiplier.
        warmup_iters: linear warm-up steps.
        temperature: softmax temperature of the KL term.
        hidden_mse: weight of the final-hidden-state MSE term (0: KL only).
        batch_size: windows per step.
        calib_batches: calibration batches (of ``batch_size`` windows, training split)
            for the activation-aware conversions.
        eval_interval: checkpoint every this many steps.
        threads: torch threads.
        optimizer: ``"structure-aware"`` (factors of ``KronLinear`` / ``LowRankLinear`` /
            ``MonarchLinear`` at ``lr`` times their multiplier, every other parameter,
            the teacher's trained ones included, at ``dense_lr``) or ``"one-rate"`` (the
            first round: every parameter at ``lr``).
        dense_lr: ``structure-aware``: peak rate of every parameter that is not a
            factor (the only rate of students without structured layers). Unused by
            ``one-rate``.
    """

    iters: int = 500
    lr: float = 8e-3
    warmup_iters: int = 50
    temperature: float = 2.0
    hidden_mse: float = 0.0
    batch_size: int = 12
    calib_batches: int = 32
    eval_interval: int = 100
    threads: int = 1
    optimizer: str = "structure-aware"
    dense_lr: float = 4e-3

    def __post_init__(self) -> None:
        for name in ("iters", "batch_size", "calib_batches", "eval_interval"):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise UserError(f"--{flag} must be >= 1, got {getattr(self, name)}.")
        if not self.lr > 0 or not self.temperature > 0 or self.hidden_mse < 0:
            raise UserError(
                f"--lr and --temperature must be positive and --hidden-mse >= 0, got "
                f"{self.lr}, {self.temperature}, {self.hidden_mse}."
            )
        if self.optimizer not in DISTILL_OPTIMIZERS:
            raise UserError(
                f"--optimizer must be one of {', '.join(DISTILL_OPTIMIZERS)}, got "
                f"{self.optimizer!r}."
            )
        if not 0 < self.dense_lr < float("inf"):
            raise UserError(
                f"--dense-lr must be a positive finite number, got {self.dense_lr}; it is "
                "the rate of every parameter that is not a factor of a structured layer."
            )

    @property
    def tag(self) -> str:
        """The optimizer and its rates as a run-name suffix (``-sa-lr4e-3-dense1e-3``,
        ``-one-rate-lr2e-3``); empty for the first round's recipe, whose files have none."""
        if self.optimizer == FIRST_ROUND["optimizer"] and self.lr == FIRST_ROUND["lr"]:
            return ""
        if self.optimizer == "one-rate":
            return f"-one-rate-lr{format_lr(self.lr)}"
        return f"-sa-lr{format_lr(self.lr)}-dense{format_lr(self.dense_lr)}"

    def recipe(self) -> dict[str, Any]:
        """Every setting that changes the result (``dense_lr`` only where it is used)."""
        out = asdict(self)
        del out["threads"]  # speed only
        if self.optimizer == "one-rate":
            del out["dense_lr"]
        return out

    def schedule(self) -> LMConfig:
        return LMConfig(
            iters=self.iters,
            lr=self.lr,
            warmup_iters=self.warmup_iters,
            optimizer=self.optimizer,
            dense_lr=self.dense_lr,
        )


def saved_config(record: RunRecord) -> DistillConfig:
    """The recipe a run file was distilled with; a first-round file (no ``optimizer``
    setting) reads as ``one-rate``."""
    known = {f.name for f in fields(DistillConfig)}
    data = {"optimizer": FIRST_ROUND["optimizer"], **record["config"]}
    return DistillConfig(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class DistillJob:
    """One student: method, budget, seed."""

    method: str
    budget: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-b{self.budget}"


def calibration_batches(data: TextData, config: DistillConfig, block: int) -> list[Tensor]:
    """Fixed calibration windows of the training split (the same for every run)."""
    g = torch.Generator().manual_seed(_CALIB_SEED)
    return [
        sample_batch(data.train, config.batch_size, block, g)[0]
        for _ in range(config.calib_batches)
    ]


def _hidden(model: GPT, idx: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits, final hidden state)`` of ``model`` (the GPT's forward, unrolled)."""
    pos = torch.arange(idx.shape[1], device=idx.device)
    x = model.drop(model.wte(idx) + model.wpe(pos))
    for block in model.blocks:
        x = block(x)
    h = model.ln_f(x)
    return model.head(h), h


def _distill_loss(student: GPT, teacher: GPT, x: Tensor, config: DistillConfig) -> Tensor:
    with torch.no_grad():
        t_logits, t_hidden = _hidden(teacher, x)
    s_logits, s_hidden = _hidden(student, x)
    kl = distillation_loss(s_logits, t_logits, config.temperature)
    if config.hidden_mse and s_hidden.shape == t_hidden.shape:
        kl = kl + config.hidden_mse * F.mse_loss(s_hidden, t_hidden)
    return kl


def _apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    if not masks:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def distill_run(
    job: DistillJob,
    teacher: GPT,
    teacher_info: dict[str, Any],
    data: TextData,
    config: DistillConfig,
    out_dir: Path,
    *,
    command: str,
    stop_after: int | None = None,
) -> RunRecord:
    """Convert, score, distil, score; resumes from the last checkpoint, returns a
    finished record as it is."""
    torch.set_num_threads(config.threads)
    # The optimizer and its rates are in the name, so a sweep's runs, the study's and
    # the first round's (untagged) live side by side; any other change is refused.
    name = job.name + config.tag
    paths = RunPaths.under(out_dir, name, job.seed)
    if paths.record.exists():
        record = read_record(paths.record)
        if record.get("complete"):
            then, now = saved_config(record).recipe(), config.recipe()
            if then != now:
                changes = [
                    f"{k}: saved {then.get(k)} vs now {now.get(k)}"
                    for k in now
                    if then.get(k) != now.get(k)
                ]
                raise UserError(
                    f"{paths.record} was distilled with other settings ({', '.join(changes)}); "
                    "use another --out folder, or delete that run to redo it."
                )
            return record
    block = teacher.spec.block_size
    moments = mlp_moments(teacher, calibration_batches(data, config, block))
    t0 = time.perf_counter()
    student = build_student(teacher, job.method, job.budget, moments, seed=job.seed)
    convert_seconds = time.perf_counter() - t0
    model = student.model
    sched = config.schedule()
    optimizer = make_optimizer(model, sched)
    generator = torch.Generator().manual_seed(job.seed + _DATA_SEED_OFFSET)
    start = 0
    if paths.checkpoint.exists():
        state = torch.load(paths.checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start = int(state["iter"])
        record = json.loads(state["record"])
    else:
        by_role = student.spec.weights_by_role()
        record = {
            "schema": SCHEMA,
            "kind": "lm-compress",
            "variant": name,
            "method": job.method,
            "family": FAMILY[job.method],
            "budget": job.budget,
            "structure": student.structure,
            "seed": job.seed,
            "spec": student.spec.to_dict(),
            "mlp_weights": by_role["mlp.fc"] + by_role["mlp.proj"]
            if job.method != "pruned"
            else sum(int(m.sum()) for m in student.masks.values()),
            "parameters": model.num_parameters()
            - sum(int((~m).sum()) for m in student.masks.values()),
            "teacher": teacher_info,
            "config": asdict(config),
            "conversion": {**student.conversion, "seconds": convert_seconds},
            "metrics": {"val_loss_converted": full_split_loss(model, data.val, block)},
            "history": {"iter": [], "loss": []},
            "complete": False,
            "command": command,
            "environment": environment(),
            "started_at": now_iso(),
            "finished_at": None,
        }
    model.train()
    teacher.eval()
    it, total, since, t_start = start, 0.0, start, time.perf_counter()
    while it < config.iters:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, sched) * group.get("lr_scale", 1.0)
        x, _ = sample_batch(data.train, config.batch_size, block, generator)
        loss = _distill_loss(model, teacher, x, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        _apply_masks(model, student.masks)
        it += 1
        total += float(loss.detach())
        if it % config.eval_interval and it != config.iters:
            continue
        record["history"]["iter"].append(it)
        record["history"]["loss"].append(total / (it - since))
        total, since = 0.0, it
        if it == config.iters:
            record["metrics"]["val_loss_distilled"] = full_split_loss(model, data.val, block)
            record["metrics"]["distill_seconds"] = time.perf_counter() - t_start
            record["complete"] = True
            record["finished_at"] = now_iso()
        save_torch(
            paths.checkpoint,
            {
                "iter": it,
                "record": json.dumps(record),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
            },
        )
        atomic_write_json(paths.record, record)
        if stop_after is not None and it >= stop_after and it < config.iters:
            return record
    return record
