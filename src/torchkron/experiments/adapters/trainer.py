"""One adapter run: an arm at one learning rate and seed, trained on Fashion-MNIST, its
validation and test metrics after every epoch, one run file at the end.

A run of this study lasts seconds to a minute, so it resumes by run (a finished run file is
kept, an unfinished one is redone), not by epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchkron.experiments.adapters.arms import Arm, adapted_model, trainable
from torchkron.experiments.common.config import ConfigDict, check_at_least_one
from torchkron.experiments.common.environment import environment, now_iso
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_json
from torchkron.experiments.common.runs import RUNS_DIR, SCHEMA, RunRecord, load_run, run_filename
from torchkron.experiments.data.mnist import DATASETS, MnistData
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.trainer import Prepared, evaluate, prepare_data, train_epoch

__all__ = [
    "FINAL_SEEDS",
    "TUNE_SEED",
    "AdaptConfig",
    "AdaptJob",
    "Splits",
    "check_same",
    "prepare_splits",
    "train_adapter",
]

#: The seed of the learning-rate search runs; the reported runs use other seeds.
TUNE_SEED = 0
_FASHION = DATASETS["fashion-mnist"]
_SHUFFLE_SEED_OFFSET = 1_000_003


def final_seeds(n: int) -> tuple[int, ...]:
    """The seeds of the reported runs: ``1..n``, none of them the tuning seed."""
    return tuple(range(TUNE_SEED + 1, TUNE_SEED + 1 + n))


FINAL_SEEDS = final_seeds(3)


@dataclass(frozen=True)
class AdaptConfig(ConfigDict):
    """The recipe every arm shares (the learning rate is each run's own).

    Attributes:
        epochs: passes over the training split.
        lr: Adam's learning rate, decayed to 0 by a cosine over the epochs.
        batch_size: training batch.
        test_batch_size: evaluation batch.
        val_size: images held out of the end of the training set to pick the rate.
        mean: pixel mean (Fashion-MNIST's training set).
        std: pixel std.
        train_limit: use only the first N training images, the held-out ones included (0: all).
        test_limit: use only the first N test images (0: all).
        threads: torch intra-op threads of the run.
    """

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    test_batch_size: int = 1000
    val_size: int = 5000
    mean: float = _FASHION.mean
    std: float = _FASHION.std
    train_limit: int = 0
    test_limit: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        check_at_least_one(self, ("epochs", "batch_size", "test_batch_size", "val_size"))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"A learning rate must be positive and finite, got {self.lr}.")


@dataclass(frozen=True)
class AdaptJob:
    """One run: an arm, a learning rate, a seed."""

    arm: Arm
    lr: float
    seed: int

    @property
    def name(self) -> str:
        """The run's id: ``ARM-lrRATE`` (``lora-r4-lr0.001``)."""
        return f"{self.arm.name}-lr{self.lr:g}"

    def path(self, out_dir: Path) -> Path:
        return out_dir / RUNS_DIR / run_filename(self.name, self.seed)


@dataclass(frozen=True)
class Splits:
    """Training (``train.train_x``), held-out validation and test tensors."""

    train: Prepared
    val_x: Tensor
    val_y: Tensor


def prepare_splits(data: MnistData, config: AdaptConfig) -> Splits:
    """Normalise ``data`` and hold the last ``val_size`` training images out."""
    recipe = TrainConfig(
        dataset="fashion-mnist",
        mean=config.mean,
        std=config.std,
        train_limit=config.train_limit,
        test_limit=config.test_limit,
    )
    full = prepare_data(data, recipe)
    n = full.train_x.shape[0]
    if config.val_size >= n:
        raise UserError(
            f"--val-size {config.val_size} leaves no training images of the {n} in use; pass "
            "a smaller --val-size (or a larger --train-limit)."
        )
    keep = n - config.val_size
    train = Prepared(full.train_x[:keep], full.train_y[:keep], full.test_x, full.test_y)
    return Splits(train, full.train_x[keep:], full.train_y[keep:])


def check_same(
    record: RunRecord,
    job: AdaptJob,
    config: AdaptConfig,
    source: str | None,
    *,
    check_source: bool = True,
) -> None:
    """A finished run file must be of this job's arm, recipe (``config`` at the job's rate)
    and source model (the hash ``source``; not checked without ``check_source``)."""
    where = record.get("_path", job.name)
    saved = dict(record.get("config") or {})
    now = asdict(config)
    diff = [k for k in now if k != "threads" and saved.get(k) != now[k]]
    theirs = Arm.from_dict(record.get("arm") or {"name": "?", "method": "?"})
    problems = [f"config {', '.join(f'{k}: saved {saved.get(k)} vs now {now[k]}' for k in diff)}"]
    problems = problems if diff else []
    if theirs != job.arm:
        problems.append(f"arm {theirs.name} {dict(theirs.options)} vs now {dict(job.arm.options)}")
    made_from = (record.get("source") or {}).get("state_sha256")
    if check_source and job.arm.uses_source and made_from != source:
        problems.append(
            "another source model (the source was retrained and differs, e.g. on another machine)"
        )
    if problems:
        raise UserError(
            f"{where} was made with {'; '.join(problems)}; use another --out folder, or delete "
            "that run file to redo it with this command's settings."
        )


def _history() -> dict[str, list[Any]]:
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
    return {k: [] for k in (*keys, "seconds")}


def train_adapter(
    job: AdaptJob,
    config: AdaptConfig,
    data: Splits,
    source: tuple[dict[str, Tensor], dict[str, Any]] | None,
    out_dir: Path,
    *,
    command: str,
) -> RunRecord:
    """Train ``job`` (``config.lr`` is replaced by the job's) and write its run file; a
    finished run file of the same job is returned as it is.

    ``source`` is the source model's state dict and what the run files keep about it
    (:func:`~torchkron.experiments.adapters.source.source_info`); None for scratch runs.
    """
    config = config.with_(lr=job.lr)
    path = job.path(out_dir)
    info = None if source is None or not job.arm.uses_source else source[1]
    sha = None if info is None else info["state_sha256"]
    if path.exists():
        saved = load_run(path)
        if saved.get("complete"):
            check_same({**saved, "_path": path}, job, config, sha)
            return saved
    torch.set_num_threads(config.threads)
    model = adapted_model(job.arm, None if source is None else source[0], job.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    generator = torch.Generator().manual_seed(job.seed + _SHUFFLE_SEED_OFFSET)
    record: RunRecord = {
        "schema": SCHEMA,
        "kind": "adapters",
        "variant": job.name,
        "seed": job.seed,
        "phase": "tune" if job.seed == TUNE_SEED else "final",
        "arm": job.arm.to_dict(),
        "lr": job.lr,
        "trainable": trainable(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": config.to_dict(),
        "source": info,
        "history": _history(),
        "complete": False,
        "diverged": False,
        "command": command,
        "environment": {**environment(out_dir), "peft": _peft_version()},
        "started_at": now_iso(),
        "finished_at": None,
    }
    hist = record["history"]
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        train_loss = train_epoch(model, optimizer, data.train, config.batch_size, generator)
        scheduler.step()
        if not math.isfinite(train_loss):
            # A rate too high for this arm: a finished run that the rate search ranks last.
            record["diverged"] = True
            break
        model.eval()
        val = evaluate(model, data.val_x, data.val_y, config.test_batch_size)
        test = evaluate(model, data.train.test_x, data.train.test_y, config.test_batch_size)
        values = (epoch, train_loss, *val, *test, time.perf_counter() - t0)
        for key, value in zip(hist, values, strict=True):
            hist[key].append(value)
    record["complete"] = True
    record["finished_at"] = now_iso()
    atomic_write_json(path, record)
    return record


def _peft_version() -> str | None:
    try:
        import peft
    except ImportError:
        return None
    return str(peft.__version__)
