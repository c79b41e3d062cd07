"""Fabricated run records with chosen per-epoch numbers, for the report tests.

Records follow the schema of :mod:`torchkron.experiments.common.runs` and are written with its
atomic helpers, so the report code reads them exactly as it reads real runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.files import atomic_write_json
from torchkron.experiments.common.runs import SCHEMA, run_filename
from torchkron.experiments.mnist.trainer import spec_fields
from torchkron.experiments.mnist.variants import MLPSpec, get_variant

#: A training recipe as ``TrainConfig.to_dict()`` writes it (``epochs`` set per record).
BASE_CONFIG: dict[str, Any] = {
    "epochs": 0,
    "batch_size": 64,
    "test_batch_size": 1000,
    "lr": 1.0,
    "gamma": 0.7,
    "threads": 1,
}

ENVIRONMENT: dict[str, Any] = {
    "torch": "2.13.0+cpu",
    "python": "3.11.9",
    "numpy": "2.1.0",
    "platform": "Linux-test",
    "machine": "x86_64",
    "processor": "Test CPU @ 3.00GHz",
    "cpu_count": 2,
    "threads": 1,
    "git_sha": "0123456789abcdef0123456789abcdef01234567",
}


def make_record(
    variant: str | MLPSpec,
    seed: int,
    accuracy: Sequence[float],
    *,
    test_loss: Sequence[float] | None = None,
    train_loss: Sequence[float] | None = None,
    seconds: Sequence[float] | None = None,
    complete: bool = True,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A run record of ``variant`` (a registry id or a spec) whose history is ``accuracy``
    per epoch.

    Losses default to simple functions of the accuracy, seconds to 1.0 per epoch; the
    config's ``epochs`` is the history length unless ``config`` says otherwise.
    """
    spec = get_variant(variant) if isinstance(variant, str) else variant
    n = len(accuracy)
    test_loss = [(100.0 - a) / 50.0 for a in accuracy] if test_loss is None else test_loss
    train_loss = [0.9 * x for x in test_loss] if train_loss is None else train_loss
    seconds = [1.0] * n if seconds is None else seconds
    biases = spec.hidden.out_features + spec.output.out_features
    return {
        "schema": SCHEMA,
        **spec_fields(spec),
        "seed": seed,
        "weights": spec.weights(),
        "parameters": spec.weights() + biases,
        "config": {**BASE_CONFIG, "epochs": n, **(config or {})},
        "history": {
            "epoch": list(range(1, n + 1)),
            "train_loss": list(train_loss),
            "test_loss": list(test_loss),
            "test_accuracy": list(accuracy),
            "seconds": list(seconds),
        },
        "complete": complete,
        "command": f"torchkron reproduce --variants {spec.name} --seeds {seed}",
        "environment": dict(ENVIRONMENT),
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:10:00+00:00" if complete else None,
        "extra": dict(spec.extra),
    }


def write_run(runs_dir: Path, record: Mapping[str, Any], name: str | None = None) -> Path:
    """Write ``record`` into ``runs_dir`` (atomically) under its usual or a given name."""
    path = runs_dir / (name or run_filename(record["variant"], record["seed"]))
    atomic_write_json(path, record)
    return path


def write_finals(
    runs_dir: Path, finals: Mapping[str, Sequence[float]], *, epochs: int = 2
) -> list[Path]:
    """One run per (variant, seed): ``finals[variant][seed]`` is the final accuracy.

    Earlier epochs climb to it in steps of 1 pp, so the final epoch is also the best.
    """
    paths = []
    for variant, per_seed in finals.items():
        for seed, final in enumerate(per_seed):
            curve = [final - (epochs - 1 - i) for i in range(epochs)]
            paths.append(write_run(runs_dir, make_record(variant, seed, curve)))
    return paths
