"""Running many (variant, seed) trainings: in process, or spread over worker processes.

Each run is independent and single-threaded by default; on a small machine running
``--jobs`` of them side by side uses the cores better than intra-op threads do for these
tiny matmuls. Every run checkpoints after each epoch, so an interrupted grid resumes
where it stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkron.experiments.config import TrainConfig
from torchkron.experiments.errors import UserError
from torchkron.experiments.mnist import MnistData, load_mnist
from torchkron.experiments.progress import Progress
from torchkron.experiments.runs import RunRecord, load_run
from torchkron.experiments.trainer import EpochEvent, Prepared, RunPaths, prepare_data, train_run
from torchkron.experiments.variants import MLPSpec

__all__ = ["Job", "RunOptions", "check_existing", "open_session", "run_jobs", "track"]


@dataclass(frozen=True)
class RunOptions:
    """Where and how a command trains: the options reproduce, train, sweep and compress share."""

    data_dir: Path | None
    out_dir: Path
    command: str
    resume: bool = False
    workers: int = 1
    quiet: bool = False
    plots: bool = True
    download: bool = True


@dataclass(frozen=True)
class Job:
    spec: MLPSpec
    seed: int

    @property
    def key(self) -> str:
        return f"{self.spec.name} seed {self.seed}"

    def cost(self) -> float:
        """Expected seconds per epoch (a rough model: start the longest runs first, ETA)."""
        return self.spec.epoch_cost()


def _epochs_done(paths: RunPaths) -> int:
    if not paths.record.exists():
        return 0
    try:
        return len(load_run(paths.record)["history"]["epoch"])
    except UserError:
        return 0


def check_existing(jobs: Sequence[Job], out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite earlier runs unless resuming."""
    if resume:
        return
    found = [j for j in jobs if RunPaths.under(out_dir, j.spec.name, j.seed).record.exists()]
    if found:
        names = ", ".join(j.key for j in found[:3]) + (" ..." if len(found) > 3 else "")
        raise UserError(
            f"{out_dir} already holds runs ({names}); pass --resume to continue them (finished "
            "runs are kept, interrupted ones go on from their last epoch), or choose another "
            "--out folder."
        )


def track(progress: Progress, jobs: Sequence[Job], out_dir: Path, epochs: int) -> int:
    """Declare ``jobs`` to ``progress`` (costs, epochs already done); return those done."""
    done_total = 0
    for j in jobs:
        done = min(epochs, _epochs_done(RunPaths.under(out_dir, j.spec.name, j.seed)))
        progress.expect(j.spec.name, j.cost(), epochs, done)
        done_total += done
    return done_total


def open_session(
    jobs: Sequence[Job], options: RunOptions, log_name: str
) -> tuple[Progress, MnistData]:
    """Start a command's training session: refuse to overwrite runs unless resuming,
    open the progress log (its first line is the exact command), load the data.

    The data are loaded (and if needed downloaded) here, before any training, so a data
    problem stops the command before it has done any work.
    """
    check_existing(jobs, options.out_dir, options.resume)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(0, quiet=options.quiet, log_path=options.out_dir / log_name)
    progress.message(f"$ {options.command}")
    mnist = load_mnist(options.data_dir, download=options.download, progress=progress.message)
    return progress, mnist


# Worker-process state: the dataset is loaded once per process, not once per run.
_WORKER: dict[str, Any] = {}


def _init_worker(events: Any, data_dir: Path | None, config: TrainConfig) -> None:
    _WORKER["events"] = events
    _WORKER["data"] = prepare_data(load_mnist(data_dir, download=False), config)


def _train_job(
    job: Job,
    config: TrainConfig,
    data: Prepared,
    out_dir: Path,
    command: str,
    on_epoch: Callable[[EpochEvent], None] | None,
) -> RunRecord:
    paths = RunPaths.under(out_dir, job.spec.name, job.seed)
    return train_run(job.spec, job.seed, config, data, paths, command=command, on_epoch=on_epoch)


def _run_in_worker(job: Job, config: TrainConfig, out_dir: Path, command: str) -> RunRecord:
    return _train_job(job, config, _WORKER["data"], out_dir, command, _WORKER["events"].put)


def run_jobs(
    jobs: Sequence[Job],
    config: TrainConfig,
    options: RunOptions,
    mnist: MnistData,
    *,
    progress: Progress | None = None,
    data: Prepared | None = None,
) -> list[RunRecord]:
    """Train every job (finished ones are read back), longest first; returns the records.

    ``options.workers == 1`` trains in this process (on ``data`` if given, else on
    ``mnist`` prepared for ``config``); more start that many worker processes, each
    loading the dataset from ``mnist.source`` once.
    """
    out_dir, command, workers, data_dir = (
        options.out_dir,
        options.command,
        options.workers,
        mnist.source,
    )
    ordered = sorted(jobs, key=lambda j: -j.cost())
    on_epoch = progress.epoch if progress is not None else None
    if workers <= 1:
        prepared = data or prepare_data(mnist, config)
        return [_train_job(j, config, prepared, out_dir, command, on_epoch) for j in ordered]
    ctx = mp.get_context("spawn")
    events: Any = ctx.Queue()
    records: dict[Job, RunRecord] = {}
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(events, data_dir, config),
    ) as pool:
        futures: dict[Future[RunRecord], Job] = {
            pool.submit(_run_in_worker, j, config, out_dir, command): j for j in ordered
        }
        pending = set(futures)
        while pending:
            _drain(events, on_epoch)
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                records[futures[fut]] = fut.result()  # re-raises a worker's error
        _drain(events, on_epoch)
    return [records[j] for j in ordered]


def _drain(events: Any, on_epoch: Any) -> None:
    while True:
        try:
            ev: EpochEvent = events.get_nowait()
        except queue.Empty:
            return
        if on_epoch is not None:
            on_epoch(ev)
