"""``torchkron adapt``: the learning-rate search (one seed per arm and rate, judged on the
held-out validation images), then the reported seeds at each arm's picked rate, then the
report. Finished runs are kept; a rerun trains only what is missing.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkron.experiments.adapters.arms import Arm, require_peft, study_arms
from torchkron.experiments.adapters.report import (
    at_edge,
    load_records,
    pick_rates,
    picks,
    tried_rates,
    write_report,
)
from torchkron.experiments.adapters.source import ensure_source, load_source_state, state_sha256
from torchkron.experiments.adapters.trainer import (
    TUNE_SEED,
    AdaptConfig,
    AdaptJob,
    Splits,
    check_same,
    final_seeds,
    prepare_splits,
    train_adapter,
)
from torchkron.experiments.common.lock import FolderLock
from torchkron.experiments.common.progress import Progress, format_duration
from torchkron.experiments.common.runs import RunRecord, load_run
from torchkron.experiments.mnist.compress import load_source
from torchkron.experiments.mnist.config import TrainConfig

__all__ = ["LOG_FILE", "StudyOptions", "extension_jobs", "next_rate", "run_study"]

LOG_FILE = "adapt.log"


@dataclass(frozen=True)
class StudyOptions:
    """Everything ``torchkron adapt`` was asked to do."""

    out_dir: Path
    command: str
    config: AdaptConfig
    lrs: Sequence[float]
    lora_ranks: Sequence[int]
    seeds: int
    source_recipe: TrainConfig
    mnist_dir: Path | None = None
    fashion_dir: Path | None = None
    download: bool = True
    workers: int = 1
    quiet: bool = False
    plots: bool = True
    extend: int = 2


def _finished(job: AdaptJob, out_dir: Path) -> bool:
    path = job.path(out_dir)
    return path.is_file() and bool(load_run(path).get("complete"))


# Worker-process state: the data and the source model are loaded once per process.
_WORKER: dict[str, Any] = {}


def _init_worker(options: StudyOptions, source: Path | None) -> None:
    from torchkron.experiments.common.workers import exit_with_parent

    exit_with_parent()
    _load_into_worker(options, source)


def _load_into_worker(options: StudyOptions, source: Path | None) -> None:
    import torch

    from torchkron.experiments.data.mnist import load_mnist

    torch.set_num_threads(options.config.threads)
    fashion = load_mnist(options.fashion_dir, download=False, dataset="fashion-mnist")
    _WORKER["data"] = prepare_splits(fashion, options.config)
    _WORKER["source"] = None if source is None else load_source_state(source, _WORKER["data"])


def _run_job(job: AdaptJob, options: StudyOptions) -> RunRecord:
    data: Splits = _WORKER["data"]
    return train_adapter(
        job, options.config, data, _WORKER["source"], options.out_dir, command=options.command
    )


def _run_jobs(
    jobs: Sequence[AdaptJob], options: StudyOptions, source: Path | None, progress: Progress
) -> None:
    """Train ``jobs`` (none finished), in this process or ``options.workers`` workers."""
    if not jobs:
        return
    done = 0

    def report(record: RunRecord) -> None:
        nonlocal done
        done += 1
        hist = record["history"]
        result = (
            "diverged"
            if record["diverged"]
            else f"val {hist['val_accuracy'][-1]:.2f}%, test {hist['test_accuracy'][-1]:.2f}%"
        )
        progress.message(
            f"[{done}/{len(jobs)}] {record['variant']} seed {record['seed']}: {result} "
            f"({format_duration(sum(hist['seconds']))})"
        )

    if options.workers <= 1:
        _load_into_worker(options, source)
        for job in jobs:
            report(_run_job(job, options))
        return
    with ProcessPoolExecutor(
        min(options.workers, len(jobs)),
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(options, source),
    ) as pool:
        futures = [pool.submit(_run_job, job, options) for job in jobs]
        try:
            for fut in as_completed(futures):
                report(fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _source_for(jobs: Sequence[AdaptJob], options: StudyOptions, progress: Progress) -> Path | None:
    """The source's weights file when some job adapts it (trained first if missing)."""
    if not any(job.arm.uses_source for job in jobs):
        return None
    return ensure_source(
        options.out_dir,
        options.mnist_dir,
        options.source_recipe,
        progress,
        command=options.command,
        download=options.download,
    )


def _check_finished(jobs: Sequence[AdaptJob], options: StudyOptions, sha: str | None) -> None:
    """Finished runs must be of this command's settings (and, given ``sha``, source)."""
    for job in jobs:
        path = job.path(options.out_dir)
        record = load_run(path)
        config = options.config.with_(lr=job.lr)
        check_same({**record, "_path": path}, job, config, sha, check_source=sha is not None)


def _phase(name: str, jobs: list[AdaptJob], options: StudyOptions, progress: Progress) -> None:
    todo = [job for job in jobs if not _finished(job, options.out_dir)]
    done = [job for job in jobs if job not in todo]
    progress.message(f"{name}: {len(jobs)} runs, {len(done)} already finished")
    _check_finished(done, options, None)  # before a source is trained for nothing
    source = _source_for(todo, options, progress)
    if source is not None:
        # New runs must not be made from another source than the finished ones.
        _check_finished(done, options, state_sha256(load_source(source).state_dict))
    _run_jobs(todo, options, source, progress)


def run_study(options: StudyOptions) -> Path:
    """Search the rates, train the reported seeds, write the report; returns results.md."""
    from torchkron.experiments.data.mnist import load_mnist
    from torchkron.experiments.mnist.runner import check_dataset, check_out_dir

    require_peft()
    check_out_dir(options.out_dir)
    with FolderLock(options.out_dir, options.command):
        progress = Progress(
            0,
            quiet=options.quiet,
            log_path=options.out_dir / LOG_FILE,
            workers=options.workers,
            force=True,
        )
        progress.message(f"$ {options.command}")
        start = time.perf_counter()
        # Loaded (or downloaded) and checked here, before any training; workers reread it.
        fashion = load_mnist(
            options.fashion_dir,
            download=options.download,
            progress=progress.log,
            dataset="fashion-mnist",
        )
        check_dataset(fashion)
        options = _with_folder(options, fashion.source)
        arms = study_arms(options.lora_ranks)
        for arm in arms:
            if arm.method == "lokr":
                m = arm.matching
                progress.message(
                    f"{arm.name}: {m['count']:,} trainable parameters for {arm.budget}'s "
                    f"{m['budget_count']:,} ({100 * m['relative_gap']:+.1f}%)"
                )
        _phase("learning-rate search", _tune_jobs(arms, options.lrs), options, progress)
        for step in range(1, options.extend + 1):
            # An arm whose best rate is the grid's largest (or smallest) tries one more
            # beyond it: a fair comparison needs every arm's rate inside its search.
            extra = extension_jobs(arms, load_records(options.out_dir))
            if not extra:
                break
            _phase(f"learning-rate search beyond the grid, step {step}", extra, options, progress)
        picked = pick_rates(options.out_dir, [a.name for a in arms])
        finals = [
            AdaptJob(arm, picked[arm.name], seed)
            for arm in arms
            if arm.name in picked
            for seed in final_seeds(options.seeds)
        ]
        _phase("reported seeds", finals, options, progress)
        progress.message(f"all runs done in {format_duration(time.perf_counter() - start)}")
        paths = write_report(options.out_dir, plots=options.plots)
        progress.message(f"wrote {', '.join(str(p) for p in paths)}")
        return paths[0]


def next_rate(lr: float, up: bool) -> float:
    """The next rate of the 1-3-10 ladder above (or below) ``lr``: 1e-2 -> 3e-2 -> 1e-1."""
    exponent = math.floor(math.log10(lr)) - 1
    ladder = [m * 10.0**e for e in range(exponent, exponent + 4) for m in (1, 3)]
    ladder = [float(f"{v:.0e}") for v in ladder]
    if up:
        return min(v for v in ladder if v > lr * 1.01)
    return max(v for v in ladder if v < lr / 1.01)


def extension_jobs(arms: Sequence[Arm], records: Sequence[RunRecord]) -> list[AdaptJob]:
    """A tuning run one rate beyond the edge for each arm whose pick is at an edge of the
    rates it has tried."""
    picked, tried = picks(records), tried_rates(records)
    jobs = []
    for arm in arms:
        edge = at_edge(picked.get(arm.name), tried.get(arm.name, []))
        if edge is not None:
            jobs.append(AdaptJob(arm, next_rate(picked[arm.name], edge == "top"), TUNE_SEED))
    return jobs


def _tune_jobs(arms: Sequence[Arm], lrs: Sequence[float]) -> list[AdaptJob]:
    return [AdaptJob(arm, lr, TUNE_SEED) for arm in arms for lr in lrs]


def _with_folder(options: StudyOptions, fashion: Path) -> StudyOptions:
    from dataclasses import replace

    return replace(options, fashion_dir=fashion)
