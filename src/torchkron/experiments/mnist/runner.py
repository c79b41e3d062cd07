"""Running many (variant, seed) trainings: in process, or spread over worker processes.

Each run is independent and single-threaded by default; on a small machine running
``--jobs`` of them side by side uses the cores better than intra-op threads do for these
tiny matmuls. Every run checkpoints after each epoch, so an interrupted grid resumes
where it stopped.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from torchkron.experiments.common.checkpoints import RunPaths
from torchkron.experiments.common.errors import DataError, UserError
from torchkron.experiments.common.lock import FolderLock
from torchkron.experiments.common.progress import EpochEvent, Progress
from torchkron.experiments.common.runs import RunRecord, load_run
from torchkron.experiments.common.workers import exit_with_parent
from torchkron.experiments.data.mnist import FILES, MnistData, find_files, load_mnist
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.trainer import Prepared, prepare_data, train_run
from torchkron.experiments.mnist.variants import INPUT_FEATURES, NUM_CLASSES, MLPSpec

__all__ = [
    "Job",
    "RunOptions",
    "check_dataset",
    "check_existing",
    "check_out_dir",
    "open_session",
    "run_jobs",
    "track",
]

#: Seconds the workers get to stop after an interrupt before they are terminated.
STOP_GRACE_SECONDS = 15.0


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


def _done_history(paths: RunPaths) -> list[float]:
    """Seconds of the epochs a run has already done (none without a usable record)."""
    if not paths.record.exists():
        return []
    try:
        seconds = load_run(paths.record)["history"]["seconds"]
    except UserError:
        return []
    return [float(s) for s in seconds if s is not None]


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
        seconds = _done_history(RunPaths.under(out_dir, j.spec.name, j.seed))[:epochs]
        progress.expect(j.spec.name, j.cost(), epochs, len(seconds), seed=j.seed, seconds=seconds)
        done_total += len(seconds)
    return done_total


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that is a file, or whose runs/checkpoints/models are files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(
            f"--out {out_dir} is an existing file, not a folder; pass --out to a folder "
            "(it is created if missing)."
        )
    for name in ("runs", "checkpoints", "models"):
        sub = out_dir / name
        if sub.exists() and not sub.is_dir():
            raise UserError(
                f"{sub} is a file, but the run files go into a folder of that name; move the "
                "file away or pass another --out."
            )


def check_dataset(mnist: MnistData) -> None:
    """The experiment's MLPs take 28x28 images and predict 10 classes: check the data."""
    paths = find_files(mnist.source) or {}

    def where(role: str) -> str:
        return str(paths.get(role, mnist.source / FILES[role]))

    rows, cols = (int(d) for d in mnist.train_images.shape[1:])
    if rows * cols != INPUT_FEATURES or rows != cols:
        raise DataError(
            f"The images in {where('train_images')} are {rows}x{cols}, but the variants of "
            f"this experiment need 28x28 images: their first layer has {INPUT_FEATURES} "
            "inputs (the Kronecker ones factor them as 28x28). Pass --data-dir to an "
            "MNIST-format dataset of 28x28 images, or resize the images to 28x28."
        )
    for split in ("train", "test"):
        labels = getattr(mnist, f"{split}_labels")
        bad = (labels < 0) | (labels >= NUM_CLASSES)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            values = sorted({int(v) for v in labels[bad].unique()[:5]})
            raise DataError(
                f"{where(f'{split}_labels')} holds labels outside 0..{NUM_CLASSES - 1} "
                f"({', '.join(map(str, values))}; the first at index {index}); the variants "
                f"have {NUM_CLASSES} outputs, one per digit. Use a label file with labels "
                f"0..{NUM_CLASSES - 1} only."
            )


@contextlib.contextmanager
def open_session(
    jobs: Sequence[Job], options: RunOptions, log_name: str, *, dataset: str = "mnist"
) -> Iterator[tuple[Progress, MnistData]]:
    """A command's training session, as a context manager.

    Checks the output folder, locks it for the session (another session writing into it
    gets a clear error), refuses to overwrite runs unless resuming, opens the progress log
    (its first line is the exact command) and loads the data. The data are loaded (and if
    needed downloaded) and checked here, before any training, so a data problem stops the
    command before it has done any work. ``dataset`` names what an empty data folder
    downloads (and the default folder).
    """
    check_out_dir(options.out_dir)
    with FolderLock(options.out_dir, options.command):
        check_existing(jobs, options.out_dir, options.resume)
        progress = Progress(
            0, quiet=options.quiet, log_path=options.out_dir / log_name, workers=options.workers
        )
        progress.message(f"$ {options.command}")
        mnist = load_mnist(
            options.data_dir, download=options.download, progress=progress.log, dataset=dataset
        )
        check_dataset(mnist)
        yield progress, mnist


# Worker-process state: the dataset is loaded once per process, not once per run.
_WORKER: dict[str, Any] = {}


class Stopped(Exception):
    """A worker refused or abandoned a job because the session is stopping."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """A worker's SIGINT/SIGTERM: stop the run it trains, refuse every queued one.

    Ctrl-C reaches the whole process group, and the main process sends SIGTERM to every
    worker when it stops. A training worker stops its run once (its checkpoint is the last
    finished epoch; atomic writes clean up after themselves); a second signal during that
    clean-up is ignored so that it cannot leave a file half-written. A worker that is not
    training has nothing to save: SIGTERM ends it at once.
    """
    _WORKER["stop"] = True
    phase = _WORKER.get("phase", "idle")
    if phase == "busy":
        _WORKER["phase"] = "stopping"
        raise KeyboardInterrupt
    if phase == "idle" and signum == signal.SIGTERM:
        os._exit(0)


def _init_worker(events: Any, stop: Any, data_dir: Path | None, config: TrainConfig) -> None:
    exit_with_parent()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    # Started with SIGINT blocked (see run_jobs): a Ctrl-C that came while this process
    # imported is delivered now, to the handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _WORKER["events"] = events
    _WORKER["stop_event"] = stop
    if stop.is_set():
        return  # stopping already: load nothing, every job is refused
    _WORKER["data"] = prepare_data(
        load_mnist(data_dir, download=False, dataset=config.dataset), config
    )


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
    if _WORKER.get("stop") or _WORKER["stop_event"].is_set() or "data" not in _WORKER:
        raise Stopped(job.key)
    try:
        _WORKER["phase"] = "busy"
        return _train_job(job, config, _WORKER["data"], out_dir, command, _WORKER["events"].put)
    except KeyboardInterrupt:
        raise Stopped(job.key) from None
    finally:
        _WORKER["phase"] = "idle"


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
    loading the dataset from ``mnist.source`` once. An interrupt (Ctrl-C) or a failed run
    stops every worker within seconds and starts no queued run; each run keeps its last
    finished epoch's checkpoint, so the same command with ``--resume`` continues.
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
    stop: Any = ctx.Event()
    records: dict[Job, RunRecord] = {}
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(ordered)) or 1,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(events, stop, data_dir, config),
    )
    futures: dict[Future[RunRecord], Job] = {}
    try:
        # The workers start during submit; with SIGINT blocked meanwhile they inherit the
        # mask (it survives fork and exec), so a Ctrl-C while they import torch cannot kill
        # one with a traceback: it waits until the initializer has installed their handler.
        # Blocked, not ignored: a Ctrl-C during submit stays pending here too and raises
        # KeyboardInterrupt once unblocked (ignoring it lost it, and the session ran on).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            futures = {pool.submit(_run_in_worker, j, config, out_dir, command): j for j in ordered}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        pending = set(futures)
        while pending:
            _drain(events, on_epoch)
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    records[futures[fut]] = fut.result()  # re-raises a worker's error
                except Stopped:  # a worker alone was interrupted: stop as for Ctrl-C
                    raise KeyboardInterrupt from None
                except BrokenProcessPool:
                    raise UserError(
                        "A worker process died unexpectedly (killed, or out of memory?). "
                        "Finished epochs are checkpointed: rerun the same command with "
                        "--resume, with fewer --jobs if memory is short."
                    ) from None
        _drain(events, on_epoch)
    except BaseException:
        _stop_pool(pool, stop, futures)
        _drain(events, on_epoch)
        raise
    pool.shutdown(wait=True)
    return [records[j] for j in ordered]


def _stop_pool(pool: ProcessPoolExecutor, stop: Any, futures: dict[Future[RunRecord], Job]) -> None:
    """Stop every worker: cancel queued runs, interrupt running ones, wait, then terminate."""
    # A second Ctrl-C must not break the clean-up halfway.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop.set()
        for fut in futures:
            fut.cancel()
        processes = list((pool._processes or {}).values())
        for proc in processes:
            # Training workers stop their run cleanly; the others (still importing torch or
            # loading the data, or idle) end at once. Also when only this process got the
            # interrupt (kill -INT pid) or a run failed.
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGTERM)
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for proc in processes:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in processes:
            if proc.is_alive():  # pragma: no cover - a worker stuck in native code
                proc.kill()
                proc.join(2.0)
    finally:
        signal.signal(signal.SIGINT, previous)


def _drain(events: Any, on_epoch: Any) -> None:
    while True:
        try:
            ev: EpochEvent = events.get_nowait()
        except (queue.Empty, OSError, ValueError, EOFError, pickle.UnpicklingError):
            return  # empty, or cut off by a worker that was stopped
        if on_epoch is not None:
            on_epoch(ev)
