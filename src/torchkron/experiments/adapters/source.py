"""The source model: the seed's ``original`` MLP trained on MNIST by the reproduction's
recipe, retrained (deterministically, one thread) when its weights are missing.

Its weights stay out of git (``*.pt`` is ignored); its run file
(``OUT/source/runs/original--seed0.json``) is kept with the study. Every adapter run file
records the hash of the weights it was adapted from, so runs of two different source
models are never mixed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch import Tensor

from torchkron.experiments.adapters.arms import SOURCE_VARIANT
from torchkron.experiments.common.checkpoints import RunPaths
from torchkron.experiments.common.progress import Progress
from torchkron.experiments.common.runs import load_run
from torchkron.experiments.mnist.compress import load_source
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.trainer import evaluate, prepare_data, train_run
from torchkron.experiments.mnist.variants import build_mlp, get_variant

__all__ = [
    "SOURCE_DIR",
    "SOURCE_SEED",
    "ensure_source",
    "load_source_state",
    "source_paths",
    "state_sha256",
]

SOURCE_DIR = "source"
SOURCE_SEED = 0


def source_paths(out_dir: Path) -> RunPaths:
    """Where the source's run file, checkpoint and weights live under ``out_dir``."""
    return RunPaths.under(out_dir / SOURCE_DIR, SOURCE_VARIANT, SOURCE_SEED)


def state_sha256(state: dict[str, Tensor]) -> str:
    """A hash of the weights' values (names, shapes, bytes), independent of the file format."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def ensure_source(
    out_dir: Path,
    mnist_dir: Path | None,
    recipe: TrainConfig,
    progress: Progress,
    *,
    command: str,
    download: bool = True,
) -> Path:
    """The source's weights file under ``out_dir``, trained on MNIST by ``recipe`` first if
    it is missing; returns its path."""
    from torchkron.experiments.data.mnist import load_mnist
    from torchkron.experiments.mnist.runner import check_dataset

    paths = source_paths(out_dir)
    if paths.model.is_file():
        return paths.model
    # A finished run file without its weights (a fresh clone): retrain from the start. An
    # unfinished one goes on from its checkpoint.
    finished = paths.record.is_file() and bool(load_run(paths.record).get("complete"))
    mnist = load_mnist(mnist_dir, download=download, progress=progress.log, dataset="mnist")
    check_dataset(mnist)
    progress.message(
        f"training the source model ({SOURCE_VARIANT}, seed {SOURCE_SEED}, {recipe.epochs} "
        f"epochs on MNIST from {mnist.source}) into {paths.model.parent.parent}"
    )
    spec = get_variant(SOURCE_VARIANT)
    progress.expect(spec.name, spec.epoch_cost(), recipe.epochs, 0, seed=SOURCE_SEED)
    train_run(
        spec,
        SOURCE_SEED,
        recipe,
        prepare_data(mnist, recipe),
        paths,
        command=command,
        resume=not finished,
        on_epoch=progress.epoch,
    )
    return paths.model


def load_source_state(path: Path, fashion: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The source's weights (checked) and what the run files keep about it: its hash, its
    MNIST test accuracy (from its run file) and its Fashion-MNIST test accuracy before any
    adaptation (``fashion``: the study's :class:`~.trainer.Splits`)."""
    source = load_source(path)
    model = build_mlp(source.spec)
    model.load_state_dict(source.state_dict)
    model.eval()
    _, fashion_accuracy = evaluate(model, fashion.train.test_x, fashion.train.test_y, 1000)
    record = source.record or {}
    history = record.get("history") or {}
    info = {
        "variant": source.spec.name,
        "seed": record.get("seed"),
        "epochs": (record.get("config") or {}).get("epochs"),
        "mnist_test_accuracy": (history.get("test_accuracy") or [None])[-1],
        "fashion_test_accuracy": fashion_accuracy,
        "state_sha256": state_sha256(source.state_dict),
    }
    return source.state_dict, info
