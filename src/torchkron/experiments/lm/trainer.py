"""One language-model training run: nanoGPT's recipe, checkpoints, exact resume.

The loop is nanoGPT's ``train.py`` for ``shakespeare_char`` on CPU: random windows of
``block_size`` characters, AdamW (weight decay on matrices and factors only), linear
warm-up then cosine decay to ``min_lr``, gradient clipping. Evaluation uses fixed batches
(drawn once from a generator independent of the run seed, so every run is scored on the
same windows) every ``eval_interval`` iterations, and the whole validation split at the
end. A checkpoint is written at every evaluation; ``--resume`` continues from the last
one with the same model, optimizer, data-sampling and dropout RNG state, so a resumed run
ends with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkron.experiments.common.checkpoints import RunPaths, first_line, save_torch
from torchkron.experiments.common.environment import environment, now_iso
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_json
from torchkron.experiments.common.runs import SCHEMA, RunRecord, load_run
from torchkron.experiments.data.text import TextData
from torchkron.experiments.lm.config import LMConfig
from torchkron.experiments.lm.gpt import GPT, GPTSpec
from torchkron.optim import lr_multipliers

__all__ = [
    "EvalEvent",
    "LMJob",
    "LMPaths",
    "eval_batches",
    "final_score",
    "full_split_loss",
    "lr_at",
    "structure_aware_groups",
    "train_lm",
]

# Offsets so that init (global RNG), data order and evaluation windows are independent
# streams; the evaluation windows do not depend on the run seed at all.
_DATA_SEED_OFFSET = 1_000_003
_EVAL_SEED = 20_240_601
HISTORY_KEYS = ("iter", "train_loss", "val_loss", "lr", "train_seconds", "tokens_per_s")


def lr_at(it: int, config: LMConfig) -> float:
    """nanoGPT's schedule: linear warm-up to ``lr``, cosine to ``min_lr``, then flat."""
    if it < config.warmup_iters:
        return config.lr * (it + 1) / (config.warmup_iters + 1)
    if it > config.decay_iters:
        return config.final_lr
    span = max(1, config.decay_iters - config.warmup_iters)
    ratio = (it - config.warmup_iters) / span
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return config.final_lr + coeff * (config.lr - config.final_lr)


def _windows(data: Tensor, starts: Tensor, block: int) -> tuple[Tensor, Tensor]:
    offsets = torch.arange(block, device=data.device)
    idx = starts.to(data.device)[:, None] + offsets[None, :]
    return data[idx], data[idx + 1]


def sample_batch(
    data: Tensor, batch: int, block: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``batch`` random windows (inputs, next-character targets), as nanoGPT's get_batch."""
    if data.numel() <= block:
        raise UserError(
            f"A split of {data.numel()} characters is too short for --block-size {block}; "
            "use a smaller block or a longer text."
        )
    starts = torch.randint(data.numel() - block, (batch,), generator=generator)
    return _windows(data, starts, block)


def eval_batches(data: Tensor, batches: int, batch: int, block: int) -> list[tuple[Tensor, Tensor]]:
    """The fixed evaluation batches of a split (same for every run and seed)."""
    g = torch.Generator().manual_seed(_EVAL_SEED)
    return [sample_batch(data, batch, block, g) for _ in range(batches)]


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x)
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))


def _mean_loss(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    model.eval()
    with torch.inference_mode():
        total = sum(float(_loss(model, x, y)) for x, y in batches)
    model.train()
    return total / len(batches)


def full_split_loss(model: nn.Module, data: Tensor, block: int, batch: int = 64) -> float:
    """Mean next-character loss over a whole split, in non-overlapping windows.

    Each window of ``block`` characters predicts its ``block`` successors (context from
    the window start, as in training); the tail shorter than a window is scored as a
    last, shorter window, so every character but the first is predicted once.
    """
    n = data.numel() - 1
    starts = list(range(0, n, block))
    total = torch.zeros((), dtype=torch.float64)
    model.eval()
    with torch.inference_mode():
        full = [s for s in starts if s + block <= n]
        for i in range(0, len(full), batch):
            x, y = _windows(data, torch.tensor(full[i : i + batch]), block)
            logits = model(x)
            total += F.cross_entropy(
                logits.view(-1, logits.shape[-1]), y.view(-1), reduction="sum"
            ).double()
        tail = [s for s in starts if s + block > n]
        for s in tail:
            x, y = data[s:n][None], data[s + 1 : n + 1][None]
            logits = model(x)
            total += F.cross_entropy(logits[0], y[0], reduction="sum").double()
    model.train()
    return float(total) / n


@dataclass(frozen=True)
class LMJob:
    """One (config, seed) of a study: the model, the recipe, and table metadata.

    Attributes:
        name: config id (file names, tables), e.g. ``kron-mlp-k2-r16``.
        spec: the model.
        config: the recipe.
        seed: init and data-order seed.
        family: structure family (learning-rate sweep unit, plot series).
        description: one line for tables.
        extra: producer metadata stored in the run file (budget, phase, group).
    """

    name: str
    spec: GPTSpec
    config: LMConfig
    seed: int
    family: str = "custom"
    description: str = ""
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.name} seed {self.seed}"

    def cost(self) -> float:
        """Relative cost (FLOPs x steps), for the ETA."""
        return float(self.spec.flops_per_token()) * self.config.iters * self.config.batch_size


#: Where one run keeps its record, checkpoint and final model: the MNIST trainer's layout.
LMPaths = RunPaths


@dataclass(frozen=True)
class EvalEvent:
    """Progress of one run after one evaluation."""

    name: str
    seed: int
    it: int
    iters: int
    train_loss: float
    val_loss: float
    tokens_per_s: float
    resumed_from: int = 0


def _optimizer(model: nn.Module, config: LMConfig) -> torch.optim.AdamW:
    if config.optimizer in ("structure-aware", "two-rate"):
        return torch.optim.AdamW(
            structure_aware_groups(model, config),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
        )
    # The first study's optimizer, unchanged (its run files and checkpoints must load):
    # as nanoGPT, decay every tensor of 2+ dims (matrices, factors, embeddings), not
    # biases and LayerNorm gains; every parameter at ``lr``.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def structure_aware_groups(model: nn.Module, config: LMConfig) -> list[dict[str, Any]]:
    """AdamW groups of ``optimizer="structure-aware"`` (and of its ablation ``"two-rate"``).

    Every factor of a ``KronLinear`` / ``LowRankLinear`` / ``MonarchLinear`` trains at
    ``config.lr`` times its :func:`torchkron.lr_multipliers` multiplier (``two-rate``:
    times 1, which separates the multipliers' effect from the dense rate's), every other
    parameter at ``config.dense_rate``. Weight decay as the first study's (nanoGPT's):
    every tensor of 2+ dimensions, embeddings included, so that a model without
    structured layers trains exactly as it did there. Each group's ``lr_scale`` is its
    peak rate over ``config.lr``: the schedule multiplies it in at every step.
    """
    params = dict(model.named_parameters())
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for rule in lr_multipliers(model, decay_embeddings=True):
        base = config.lr if rule.kind == "factor" else config.dense_rate
        peak = base * (1.0 if config.optimizer == "two-rate" else rule.multiplier)
        group = groups.setdefault(
            (peak, rule.decay),
            {
                "params": [],
                "lr": peak,
                "lr_scale": peak / config.lr,
                "weight_decay": config.weight_decay if rule.decay else 0.0,
                "param_names": [],
            },
        )
        group["params"].append(params[rule.name])
        group["param_names"].append(rule.name)
    return list(groups.values())


def _new_record(job: LMJob, model: GPT, command: str, data: TextData) -> RunRecord:
    spec = job.spec
    by_role = spec.weights_by_role()
    return {
        "schema": SCHEMA,
        "kind": "lm",
        "variant": job.name,
        "description": job.description or job.name,
        "family": job.family,
        "spec": spec.to_dict(),
        "seed": job.seed,
        "weights_by_role": by_role,
        "block_weights": sum(by_role.values()),
        "parameters": model.num_parameters(),
        "flops_per_token": spec.flops_per_token(),
        "config": job.config.to_dict(),
        "data": {
            "source": str(data.source),
            "md5": data.md5,
            "train_chars": int(data.train.numel()),
            "val_chars": int(data.val.numel()),
            "vocab_size": data.vocab_size,
        },
        "history": {k: [] for k in HISTORY_KEYS},
        "final": None,
        "complete": False,
        "command": command,
        "environment": environment(),
        "started_at": now_iso(),
        "finished_at": None,
        "extra": dict(job.extra),
    }


def _check_same(record: RunRecord, job: LMJob, where: Path) -> None:
    # Threads and device change speed, not the recipe, so they may differ on resume.
    saved = LMConfig.from_dict(record["config"]).with_(
        threads=job.config.threads, device=job.config.device
    )
    saved_spec = GPTSpec.from_dict(record["spec"])
    if saved != job.config or saved_spec != job.spec:
        now, then = job.config.to_dict(), saved.to_dict()
        changes = [f"{k}: saved {then[k]} vs now {now[k]}" for k in now if now[k] != then[k]]
        if saved_spec != job.spec:
            changes.append("the model spec differs")
        raise UserError(
            f"{where} was trained with other settings ({', '.join(changes)}); use a different "
            "--out folder, or delete that run to redo it with the new settings."
        )


def train_lm(
    job: LMJob,
    data: TextData,
    paths: LMPaths,
    *,
    command: str,
    resume: bool = True,
    on_eval: Callable[[EvalEvent], None] | None = None,
    stop_after: int | None = None,
) -> RunRecord:
    """Train ``job``, evaluating and checkpointing every ``eval_interval`` steps.

    Args:
        job: model, recipe, seed.
        data: the corpus.
        paths: where the record, checkpoint and final model go.
        command: the command line recorded in the run file.
        resume: reuse a finished run (same settings) and continue an interrupted one.
        on_eval: called after each evaluation (progress).
        stop_after: stop (as if interrupted) after this many steps, once checkpointed;
            for testing resume.

    Returns:
        The run record (also written to ``paths.record``).
    """
    config, spec = job.config, job.spec
    if spec.vocab_size != data.vocab_size:
        raise UserError(
            f"The model's vocab_size {spec.vocab_size} differs from the text's "
            f"{data.vocab_size} characters; build the spec from the loaded text."
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    if resume and paths.record.exists():
        record = load_run(paths.record)
        if record.get("complete"):
            _check_same(record, job, paths.record)
            return record

    device = torch.device(config.device)
    torch.manual_seed(job.seed)
    model = GPT(spec).to(device)
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(job.seed + _DATA_SEED_OFFSET)
    record = _new_record(job, model, command, data)
    start = 0
    if resume and paths.checkpoint.exists():
        start, record = _restore(paths.checkpoint, model, optimizer, generator, device)
        _check_same(record, job, paths.checkpoint)
        record["command"] = command
    hist = record["history"]
    block = spec.block_size
    val_ids = data.val.to(device)
    fixed = {
        "train": _to(eval_batches(data.train, config.eval_iters, config.batch_size, block), device),
        "val": _to(eval_batches(data.val, config.eval_iters, config.batch_size, block), device),
    }
    train_seconds = hist["train_seconds"][-1] if hist["train_seconds"] else 0.0
    tokens = config.batch_size * block
    model.train()
    it = start
    t0 = time.perf_counter()
    while it < config.iters:
        lr = lr_at(it, config)
        for group in optimizer.param_groups:
            # One-rate groups have no lr_scale: exactly ``lr``, as before.
            group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
        x, y = sample_batch(data.train, config.batch_size, block, generator)
        x, y = x.to(device), y.to(device)
        loss = _loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if config.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        it += 1
        if it % config.eval_interval and it != config.iters:
            continue
        # Evaluation time is not training time.
        train_seconds += time.perf_counter() - t0
        train_loss = _mean_loss(model, fixed["train"])
        val_loss = _mean_loss(model, fixed["val"])
        steps_timed = it - (hist["iter"][-1] if hist["iter"] else 0)
        seconds_here = train_seconds - (hist["train_seconds"][-1] if hist["train_seconds"] else 0)
        tps = steps_timed * tokens / max(seconds_here, 1e-9)
        for key, value in zip(
            HISTORY_KEYS, (it, train_loss, val_loss, lr, train_seconds, tps), strict=True
        ):
            hist[key].append(value)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            # Diverged: every later step would stay non-finite, so the run ends here, as
            # a finished run whose losses are null (a resume must not train it again).
            _diverged(record, job, it, train_loss, val_loss, train_seconds, tokens)
            atomic_write_json(paths.record, record)
            if on_eval is not None:
                on_eval(EvalEvent(job.name, job.seed, it, it, train_loss, val_loss, tps, start))
            return record
        if it == config.iters:
            final = _final(val_loss, train_loss, it, tokens, train_seconds)
            if config.full_eval:
                final["val_loss_full"] = full_split_loss(model, val_ids, block)
            record["final"] = final
            record["complete"] = True
            record["finished_at"] = now_iso()
            save_torch(paths.model, {"spec": spec.to_dict(), "state_dict": model.state_dict()})
        save_torch(
            paths.checkpoint,
            {
                "iter": it,
                "record": json.dumps(record),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            },
        )
        atomic_write_json(paths.record, record)
        if on_eval is not None:
            on_eval(
                EvalEvent(job.name, job.seed, it, config.iters, train_loss, val_loss, tps, start)
            )
        if stop_after is not None and it >= stop_after and it < config.iters:
            return record
        t0 = time.perf_counter()
    return record


def _final(
    val_loss: float | None, train_loss: float | None, it: int, tokens: int, train_seconds: float
) -> dict[str, Any]:
    """A run's ``final`` numbers after ``it`` steps of ``tokens`` tokens each."""
    return {
        "val_loss": val_loss,
        "train_loss": train_loss,
        "train_seconds": train_seconds,
        "tokens_per_s": it * tokens / max(train_seconds, 1e-9),
        "step_seconds": train_seconds / it,
    }


def _diverged(
    record: RunRecord,
    job: LMJob,
    it: int,
    train_loss: float,
    val_loss: float,
    train_seconds: float,
    tokens: int,
) -> None:
    """Mark ``record`` as a finished run that diverged at step ``it``: losses null, a reason."""
    final = _final(None, None, it, tokens, train_seconds)
    if job.config.full_eval:
        final["val_loss_full"] = None
    record["final"] = final
    record["diverged"] = {
        "iter": it,
        "reason": f"the loss is not finite at iteration {it} (train {train_loss}, validation "
        f"{val_loss} on the fixed batches) at lr {job.config.lr:g}; a lower --lr (or "
        "--grad-clip) may keep it finite",
    }
    record["complete"] = True
    record["finished_at"] = now_iso()


def final_score(record: RunRecord) -> float | None:
    """A finished run's validation loss (the full split when scored, else the fixed
    batches), or None when it has none: diverged, or not finished."""
    final = record.get("final")
    if not isinstance(final, dict) or record.get("diverged"):
        return None
    value = final.get("val_loss_full", final.get("val_loss"))
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _to(batches: list[tuple[Tensor, Tensor]], device: torch.device) -> list[tuple[Tensor, Tensor]]:
    return [(x.to(device), y.to(device)) for x, y in batches]


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[int, RunRecord]:
    try:
        state = torch.load(path, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"].cpu())
        if device.type == "cuda" and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda_rng"]])
        return int(state["iter"]), dict(json.loads(state["record"]))
    except (OSError, RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(
            f"Checkpoint {path} cannot be loaded (truncated, corrupt or not a torchkron "
            f"checkpoint: {type(exc).__name__}: {first_line(exc)}); delete it to restart that run "
            "from scratch."
        ) from None
