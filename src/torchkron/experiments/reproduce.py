"""``torchkron reproduce`` and ``torchkron train``: the founding experiment."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from torchkron.experiments.config import TrainConfig
from torchkron.experiments.mnist import load_mnist
from torchkron.experiments.progress import Progress, format_duration
from torchkron.experiments.runner import Job, check_existing, run_jobs, track
from torchkron.experiments.runs import RunRecord, atomic_write_json, environment, now_iso
from torchkron.experiments.trainer import prepare_data
from torchkron.experiments.variants import MLPSpec, get_variant, reproduction_variants

__all__ = ["default_workers", "reproduce", "resolve_variants", "train_one"]


def default_workers() -> int:
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def resolve_variants(names: Sequence[str] | None) -> list[MLPSpec]:
    """The requested variants (default: all of the reproduction), unknown ids rejected."""
    if not names:
        return reproduction_variants()
    specs: list[MLPSpec] = []
    for name in names:
        spec = get_variant(name)
        if spec not in specs:
            specs.append(spec)
    return specs


def reproduce(
    *,
    variants: Sequence[str] | None,
    seeds: int,
    config: TrainConfig,
    data_dir: Path | None,
    out_dir: Path,
    resume: bool,
    workers: int,
    quiet: bool,
    command: str,
    plots: bool = True,
    download: bool = True,
) -> Path:
    """Train every variant x seed, then write the report; returns results.md's path."""
    specs = resolve_variants(variants)
    jobs = [Job(spec, seed) for spec in specs for seed in range(seeds)]
    check_existing(jobs, out_dir, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(jobs) * config.epochs, quiet=quiet, log_path=out_dir / "reproduce.log")
    progress.message(f"$ {command}")
    # Load (and if needed download) once here, so a data problem stops us before any work.
    mnist = load_mnist(data_dir, download=download, progress=progress.message)
    progress.message(
        f"data: {mnist.source} ({mnist.train_images.shape[0]} train, "
        f"{mnist.test_images.shape[0]} test); {len(specs)} variants x {seeds} seeds x "
        f"{config.epochs} epochs; {workers} worker(s)"
    )
    track(progress, jobs, out_dir, config.epochs)
    start, started_at = time.perf_counter(), now_iso()
    prepared = prepare_data(mnist, config) if workers <= 1 else None
    run_jobs(
        jobs,
        config,
        data_dir=mnist.source,
        out_dir=out_dir,
        command=command,
        workers=workers,
        progress=progress,
        data=prepared,
    )
    wall = time.perf_counter() - start
    _record_wall_time(out_dir, command, started_at, wall, workers, len(jobs))
    progress.message(f"all runs done in {format_duration(wall)}; writing the report")
    from torchkron.experiments.report import report_text, write_report

    paths = write_report(out_dir, plots=plots)
    progress.message(report_text(_load_summary(paths.summary)))
    return paths.results


def _load_summary(path: Path) -> dict[str, object]:
    import json

    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def _record_wall_time(
    out_dir: Path, command: str, started_at: str, wall: float, workers: int, runs: int
) -> None:
    """Keep the wall time of each reproduce session (the report shows the last one)."""
    path = out_dir / "sessions.json"
    import json

    sessions: list[dict[str, object]] = []
    if path.exists():
        try:
            sessions = list(json.loads(path.read_text()))
        except (OSError, ValueError):
            sessions = []
    sessions.append(
        {
            "command": command,
            "started_at": started_at,
            "finished_at": now_iso(),
            "wall_seconds": round(wall, 2),
            "workers": workers,
            "runs": runs,
            "environment": environment(),
        }
    )
    atomic_write_json(path, sessions)


def train_one(
    *,
    variant: str,
    seed: int,
    config: TrainConfig,
    data_dir: Path | None,
    out_dir: Path,
    resume: bool,
    quiet: bool,
    command: str,
    download: bool = True,
) -> RunRecord:
    """One run of one variant (``torchkron train``)."""
    job = Job(get_variant(variant), seed)
    check_existing([job], out_dir, resume)
    progress = Progress(config.epochs, quiet=quiet, log_path=out_dir / "train.log")
    progress.message(f"$ {command}")
    mnist = load_mnist(data_dir, download=download, progress=progress.message)
    track(progress, [job], out_dir, config.epochs)
    (record,) = run_jobs(
        [job],
        config,
        data_dir=mnist.source,
        out_dir=out_dir,
        command=command,
        workers=1,
        progress=progress,
        data=prepare_data(mnist, config),
    )
    return record
