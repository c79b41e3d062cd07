"""One training run: in-memory tensors, per-epoch checkpoints, exact resume.

The loop follows the PyTorch MNIST example (Adadelta + StepLR, NLL of log-softmax),
with the data kept as normalised tensors and batches gathered by index, so an epoch does
no per-sample Python work.
"""

from __future__ import annotations

import io
import json
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkron.experiments.config import TrainConfig
from torchkron.experiments.errors import UserError
from torchkron.experiments.mnist import MnistData
from torchkron.experiments.optim import FlatAdadelta
from torchkron.experiments.runs import (
    SCHEMA,
    RunRecord,
    atomic_write_bytes,
    atomic_write_json,
    environment,
    load_run,
    now_iso,
    run_filename,
)
from torchkron.experiments.variants import MLPSpec, build_mlp

__all__ = ["EpochEvent", "Prepared", "RunPaths", "evaluate", "prepare_data", "train_run"]

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
    """Scale to [0, 1], normalise with the config's mean/std, flatten, apply limits."""

    def norm(images: Tensor, limit: int) -> Tensor:
        images = images[:limit] if limit else images
        x = images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)
        return x.sub_(config.mean).div_(config.std)

    def lim(labels: Tensor, limit: int) -> Tensor:
        return (labels[:limit] if limit else labels).to(torch.int64)

    return Prepared(
        norm(data.train_images, config.train_limit),
        lim(data.train_labels, config.train_limit),
        norm(data.test_images, config.test_limit),
        lim(data.test_labels, config.test_limit),
    )


@dataclass(frozen=True)
class EpochEvent:
    """Progress of one run after one epoch (sent to the progress printer)."""

    variant: str
    seed: int
    epoch: int
    epochs: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float
    resumed_from: int = 0


@dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its record, checkpoint and final model."""

    record: Path
    checkpoint: Path
    model: Path

    @classmethod
    def under(cls, out_dir: Path, variant: str, seed: int) -> RunPaths:
        stem = run_filename(variant, seed).removesuffix(".json")
        return cls(
            out_dir / "runs" / f"{stem}.json",
            out_dir / "checkpoints" / f"{stem}.pt",
            out_dir / "models" / f"{stem}.pt",
        )


def _save_torch(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


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


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Prepared,
    batch: int,
    generator: torch.Generator,
) -> float:
    """One shuffled pass; returns the mean training loss."""
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
        loss = F.nll_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        # Summed as a tensor: no per-step host round trip of .item().
        loss_sum += loss.detach() * idx.shape[0]
    return float(loss_sum) / n


def _new_record(
    spec: MLPSpec, seed: int, config: TrainConfig, model: nn.Module, command: str
) -> RunRecord:
    return {
        "schema": SCHEMA,
        "variant": spec.name,
        "description": spec.description,
        "family": spec.family,
        "order": spec.order,
        "spec": spec.to_dict(),
        "seed": seed,
        "weights": spec.weights(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": config.to_dict(),
        "history": {
            k: [] for k in ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds")
        },
        "complete": False,
        "command": command,
        "environment": environment(),
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

    Returns:
        The complete run record (also written to ``paths.record``).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
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
    record = _new_record(spec, seed, config, model, command)
    start = 0
    if resume and paths.checkpoint.exists():
        start, record = _restore(paths.checkpoint, model, optimizer, scheduler, generator)
        _check_same(record, config, paths.checkpoint)
        record["command"] = command
    hist = record["history"]
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _train_epoch(model, optimizer, data, config.batch_size, generator)
        scheduler.step()
        model.eval()
        test_loss, accuracy = evaluate(model, data.test_x, data.test_y, config.test_batch_size)
        seconds = time.perf_counter() - t0
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
            _save_torch(paths.model, {"spec": spec.to_dict(), "state_dict": model.state_dict()})
        _save_torch(
            paths.checkpoint,
            {
                "epoch": epoch,
                "record": json.dumps(record),
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


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> tuple[int, RunRecord]:
    try:
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        return int(state["epoch"]), dict(json.loads(state["record"]))
    except (OSError, RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise UserError(
            f"Checkpoint {path} cannot be loaded (truncated, corrupt or not a torchkron "
            f"checkpoint: {type(exc).__name__}: {first_line}); delete it to restart that run "
            "from scratch."
        ) from None


def _check_same(record: RunRecord, config: TrainConfig, where: Path) -> None:
    # Thread count changes speed, not the recipe, so it may differ on resume.
    saved = TrainConfig.from_dict(record["config"]).with_(threads=config.threads)
    if saved != config:
        diff = {
            k: (v, config.to_dict()[k])
            for k, v in saved.to_dict().items()
            if v != config.to_dict()[k]
        }
        changes = ", ".join(f"{k}: saved {a} vs now {b}" for k, (a, b) in diff.items())
        raise UserError(
            f"{where} was trained with another config ({changes}); use a different --out "
            "folder, or delete that run to redo it with the new settings."
        )
