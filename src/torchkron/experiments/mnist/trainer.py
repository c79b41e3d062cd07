"""One training run: in-memory tensors, per-epoch checkpoints, exact resume.

The loop follows the PyTorch MNIST example (Adadelta + StepLR, NLL of log-softmax),
with the data kept as normalised tensors and batches gathered by index, so an epoch does
no per-sample Python work.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkron.experiments.common.checkpoints import RunPaths, first_line, save_torch
from torchkron.experiments.common.compression import distillation_loss
from torchkron.experiments.common.environment import environment, now_iso
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_json, dumps_json
from torchkron.experiments.common.progress import EpochEvent
from torchkron.experiments.common.runs import (
    SCHEMA,
    RunRecord,
    load_run,
    record_problem,
)
from torchkron.experiments.data.mnist import MnistData
from torchkron.experiments.data.permute import permute_pixels, pixel_permutation
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.optim import FlatAdadelta
from torchkron.experiments.mnist.variants import MLPSpec, build_mlp

__all__ = [
    "Prepared",
    "evaluate",
    "prepare_data",
    "spec_fields",
    "train_epoch",
    "train_run",
]

# Shuffling draws from its own generator, seeded from the run seed plus this offset, so
# the init (global RNG) and the data order are independent streams.
_SHUFFLE_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class Prepared:
    """Normalised float32 images ``(N, H*W)`` and int64 labels, for both splits."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def prepare_data(data: MnistData, config: TrainConfig) -> Prepared:
    """Scale to [0, 1], normalise with the config's mean/std, flatten, apply limits.

    With ``config.permute_pixels`` set, the flat images of both splits are reordered by the
    same :func:`~torchkron.experiments.data.permute.pixel_permutation`.
    """
    pixels = data.train_images.shape[1] * data.train_images.shape[2]
    perm = None
    if config.permute_pixels is not None:
        perm = pixel_permutation(config.permute_pixels, pixels)

    def norm(images: Tensor, limit: int) -> Tensor:
        images = images[:limit] if limit else images
        x = images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)  # (N, H*W)
        if perm is not None:
            x = permute_pixels(x, perm)
        return x.sub_(config.mean).div_(config.std)

    def lim(labels: Tensor, limit: int) -> Tensor:
        return (labels[:limit] if limit else labels).to(torch.int64)

    return Prepared(
        norm(data.train_images, config.train_limit),
        lim(data.train_labels, config.train_limit),
        norm(data.test_images, config.test_limit),
        lim(data.test_labels, config.test_limit),
    )


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> tuple[float, float]:
    """Mean NLL and accuracy (percent) on a split."""
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            out = model(x[i : i + batch])
            target = y[i : i + batch]
            loss_sum += F.nll_loss(out, target, reduction="sum").double()
            correct += (out.argmax(1) == target).sum()
    n = x.shape[0]
    return float(loss_sum) / n, 100.0 * int(correct) / n


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Prepared,
    batch: int,
    generator: torch.Generator,
    *,
    teacher: Tensor | None = None,
    config: TrainConfig | None = None,
) -> float:
    """One shuffled pass over ``data.train_x``; returns the mean training loss.

    With ``teacher`` (its log-probabilities for the rows of ``data.train_x``) and a
    ``config`` with ``distill_temperature`` set, the loss is that config's distillation
    loss instead of the labels' NLL."""
    n = data.train_x.shape[0]
    order = torch.randperm(n, generator=generator)
    loss_sum = torch.zeros((), dtype=torch.float64)
    model.train()
    for i in range(0, n, batch):
        idx = order[i : i + batch]
        # index_select is several times faster than advanced indexing for a row gather.
        x = torch.index_select(data.train_x, 0, idx)  # (b, 784)
        y = torch.index_select(data.train_y, 0, idx)  # (b,)
        optimizer.zero_grad()
        out = model(x)  # (b, 10) log-probabilities
        loss = F.nll_loss(out, y)
        if teacher is not None and config is not None and config.distill_temperature:
            soft = distillation_loss(
                out, torch.index_select(teacher, 0, idx), config.distill_temperature
            )
            alpha = config.distill_alpha
            loss = soft if alpha == 0 else alpha * loss + (1 - alpha) * soft
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        # Summed as a tensor: no per-step host round trip of .item().
        loss_sum += loss.detach() * idx.shape[0]
    return float(loss_sum) / n


def spec_fields(spec: MLPSpec) -> dict[str, Any]:
    """The fields of a run record that describe its model, in the record's key order."""
    return {
        "variant": spec.name,
        "description": spec.description,
        "family": spec.family,
        "order": spec.order,
        "spec": spec.to_dict(),
    }


def _new_record(
    spec: MLPSpec, seed: int, config: TrainConfig, model: nn.Module, command: str, out_dir: Path
) -> RunRecord:
    return {
        "schema": SCHEMA,
        **spec_fields(spec),
        "seed": seed,
        "weights": spec.weights(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": config.to_dict(),
        "history": {
            k: [] for k in ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds")
        },
        "complete": False,
        "command": command,
        "environment": environment(out_dir),
        "started_at": now_iso(),
        "finished_at": None,
        "extra": dict(spec.extra),
    }


def train_run(
    spec: MLPSpec,
    seed: int,
    config: TrainConfig,
    data: Prepared,
    paths: RunPaths,
    *,
    command: str,
    resume: bool = True,
    on_epoch: Callable[[EpochEvent], None] | None = None,
    model_hook: Callable[[nn.Module], None] | None = None,
    teacher: Tensor | None = None,
) -> RunRecord:
    """Train ``spec`` with ``seed``, checkpointing after every epoch.

    With ``resume=True`` a finished run (same config) is returned as is, and an
    interrupted one continues from its last checkpoint with the same model, optimizer,
    scheduler and shuffling state, so it ends with the numbers of an uninterrupted run.

    Args:
        spec: the model.
        seed: seeds the init (global RNG) and, offset, the shuffling generator.
        config: the recipe.
        data: normalised tensors.
        paths: where the record, checkpoint and final model go.
        command: the command line recorded in the run file.
        resume: reuse finished runs and checkpoints found at ``paths``.
        on_epoch: called after each epoch (progress).
        model_hook: called with the fresh model before training (e.g. to load weights).
        teacher: the teacher's log-probabilities ``(N, classes)`` for the rows of
            ``data.train_x``; required when ``config.distill_temperature`` is set.

    Returns:
        The complete run record (also written to ``paths.record``).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    if (config.distill_temperature is None) != (teacher is None):
        raise ValueError(
            "train_run: a teacher's predictions go with config.distill_temperature; give "
            "both or neither."
        )
    if teacher is not None and teacher.shape[0] != data.train_x.shape[0]:
        raise ValueError(
            f"train_run: the teacher has {teacher.shape[0]} rows for "
            f"{data.train_x.shape[0]} training images; compute it on data.train_x."
        )
    if resume and paths.record.exists():
        record = load_run(paths.record)
        if record.get("complete"):
            _check_same(record, config, paths.record)
            return record

    torch.manual_seed(seed)
    model = build_mlp(spec)
    if model_hook is not None:
        model_hook(model)
    optimizer = FlatAdadelta(model.parameters(), lr=config.lr, rho=config.rho, eps=config.eps)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.gamma)
    generator = torch.Generator().manual_seed(seed + _SHUFFLE_SEED_OFFSET)
    record = _new_record(spec, seed, config, model, command, paths.record.parent.parent)
    start = 0
    if resume and paths.checkpoint.exists():
        start, record = _restore(paths.checkpoint, model, optimizer, scheduler, generator)
        _check_same(record, config, paths.checkpoint)
        _check_epoch(start, record, config, paths.checkpoint)
        record["command"] = command
        record.pop("failed", None)
    hist = record["history"]
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_epoch(
            model, optimizer, data, config.batch_size, generator, teacher=teacher, config=config
        )
        scheduler.step()
        model.eval()
        test_loss, accuracy = evaluate(model, data.test_x, data.test_y, config.test_batch_size)
        seconds = time.perf_counter() - t0
        if not (math.isfinite(train_loss) and math.isfinite(test_loss)):
            _diverged(record, paths, epoch, train_loss, test_loss, config)
        for key, value in zip(
            ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds"),
            (epoch, train_loss, test_loss, accuracy, seconds),
            strict=True,
        ):
            hist[key].append(value)
        done = epoch == config.epochs
        if done:
            record["complete"] = True
            record["finished_at"] = now_iso()
            save_torch(paths.model, {"spec": spec.to_dict(), "state_dict": model.state_dict()})
        save_torch(
            paths.checkpoint,
            {
                "epoch": epoch,
                "record": dumps_json(record),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
            },
        )
        atomic_write_json(paths.record, record)
        if on_epoch is not None:
            on_epoch(
                EpochEvent(
                    spec.name,
                    seed,
                    epoch,
                    config.epochs,
                    train_loss,
                    test_loss,
                    accuracy,
                    seconds,
                    resumed_from=start,
                )
            )
    return record


def _diverged(
    record: RunRecord,
    paths: RunPaths,
    epoch: int,
    train_loss: float,
    test_loss: float,
    config: TrainConfig,
) -> None:
    """Stop a run whose loss is no longer finite; record why in its run file."""
    message = (
        f"{record['variant']} seed {record['seed']}: the loss became non-finite at epoch "
        f"{epoch} (train loss {train_loss}, test loss {test_loss}) with --lr {config.lr}; the "
        "run was stopped. Lower --lr (or check --mean/--std and the data); delete the run "
        "files (runs/, checkpoints/) of that run before training it again with new settings."
    )
    record["failed"] = {"epoch": epoch, "reason": message, "at": now_iso()}
    record["complete"] = False
    atomic_write_json(paths.record, record)  # the history keeps the last finite epoch
    raise UserError(f"{message} Recorded in {paths.record}.")


_CHECKPOINT_TYPES: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "record": str,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "generator": Tensor,
}


def _checkpoint_problem(state: Any) -> str | None:
    """What is wrong with the structure of a loaded checkpoint, or None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not the trainer's dict"
    missing = [k for k in _CHECKPOINT_TYPES if k not in state]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, kind in _CHECKPOINT_TYPES.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            return f"'{key}' is a {type(state[key]).__name__}"
    try:
        record = json.loads(state["record"])
    except ValueError:
        return "its embedded run record is not valid JSON"
    problem = record_problem(record)
    return None if problem is None else f"its embedded run record: {problem}"


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> tuple[int, RunRecord]:
    fix = "delete it to restart that run from scratch."
    try:
        state = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(
            f"Checkpoint {path} cannot be loaded (truncated, corrupt or not a torchkron "
            f"checkpoint: {type(exc).__name__}: {first_line(exc)}); {fix}"
        ) from None
    problem = _checkpoint_problem(state)
    if problem:
        raise UserError(
            f"Checkpoint {path} is not a torchkron training checkpoint ({problem}); {fix}"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise UserError(
            f"Checkpoint {path} does not fit this run's model or optimizer "
            f"({type(exc).__name__}: {first_line(exc)}); {fix}"
        ) from None
    return int(state["epoch"]), dict(json.loads(state["record"]))


def _check_epoch(epoch: int, record: RunRecord, config: TrainConfig, where: Path) -> None:
    """The checkpoint's epoch must lie within the configured epochs and match its history."""
    done = len(record["history"]["epoch"])
    if not 0 <= epoch <= config.epochs or done != epoch:
        raise UserError(
            f"Checkpoint {where} is at epoch {epoch} (its history has {done} epochs), which "
            f"does not fit a run of --epochs {config.epochs}; pass the --epochs it was "
            "trained with, or delete it to restart that run from scratch."
        )


def _check_same(record: RunRecord, config: TrainConfig, where: Path) -> None:
    # Thread count changes speed, not the recipe, so it may differ on resume.
    try:
        saved = TrainConfig.from_dict(record["config"]).with_(threads=config.threads)
    except (TypeError, ValueError, UserError) as exc:
        raise UserError(
            f"{where} holds an invalid training config ({first_line(exc)}); delete it to "
            "redo that run."
        ) from None
    if saved != config:
        # Every field, also those to_dict leaves out at their defaults.
        now = asdict(config)
        diff = {k: (v, now[k]) for k, v in asdict(saved).items() if v != now[k]}
        changes = ", ".join(f"{k}: saved {a} vs now {b}" for k, (a, b) in diff.items())
        raise UserError(
            f"{where} was trained with another config ({changes}); use a different --out "
            "folder, or delete that run to redo it with the new settings."
        )
