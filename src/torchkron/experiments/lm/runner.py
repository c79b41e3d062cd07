"""Running a study's LM jobs: in process or in ``--jobs`` worker processes, in priority
order, with jobs that wait for their family's learning-rate sweep, and progress lines
with an ETA."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.progress import format_duration
from torchkron.experiments.common.runs import RunRecord, load_run
from torchkron.experiments.common.workers import exit_with_parent
from torchkron.experiments.data.text import TextData, load_text
from torchkron.experiments.lm.schedule import PlannedJob, StudyPlan, extension_job
from torchkron.experiments.lm.trainer import EvalEvent, LMJob, LMPaths, final_score, train_lm

__all__ = ["LMProgress", "best_lr", "next_sweep_lr", "run_plan"]


class LMProgress:
    """One line per evaluation, with an ETA weighted by each job's cost (FLOPs x steps).

    Lines go to ``stream`` (when a terminal, or ``force``) and always to ``log_path``.
    """

    def __init__(
        self,
        *,
        quiet: bool = False,
        log_path: Path | None = None,
        stream: TextIO | None = None,
        force: bool = False,
    ) -> None:
        import sys

        self.stream = stream if stream is not None else sys.stderr
        self.show = not quiet and (force or self.stream.isatty())
        self.log_path = log_path
        self.start = time.perf_counter()
        self.total = 0.0
        self.done = 0.0
        self.timed = 0.0
        self._per_step: dict[tuple[str, int], float] = {}
        self._at: dict[tuple[str, int], int] = {}

    def expect(self, job: LMJob, done_iters: int) -> None:
        per = job.cost() / job.config.iters
        key = (job.name, job.seed)
        self._per_step[key] = per
        self._at[key] = done_iters
        self.total += job.cost()
        self.done += per * done_iters

    def message(self, text: str) -> None:
        self._emit(text)

    def eval(self, ev: EvalEvent) -> None:
        key = (ev.name, ev.seed)
        per = self._per_step.get(key, 0.0)
        steps = ev.it - self._at.get(key, ev.resumed_from)
        self._at[key] = ev.it
        self.done += per * steps
        self.timed += per * steps
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.timed * max(0.0, self.total - self.done) if self.timed else 0.0
        pct = 100.0 * self.done / max(self.total, 1e-9)
        self._emit(
            f"[{pct:5.1f}%] {ev.name} seed {ev.seed} iter {ev.it}/{ev.iters}  "
            f"train {ev.train_loss:.4f}  val {ev.val_loss:.4f}  {ev.tokens_per_s:,.0f} tok/s  "
            f"elapsed {format_duration(elapsed)}  ETA {format_duration(eta)}"
        )

    def _emit(self, line: str) -> None:
        if self.show:
            print(line, file=self.stream, flush=True)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as f:
                f.write(line + "\n")


def iters_done(paths: LMPaths) -> int:
    if not paths.record.exists():
        return 0
    try:
        its = load_run(paths.record)["history"]["iter"]
        return int(its[-1]) if its else 0
    except (UserError, KeyError, IndexError, TypeError):
        return 0


def best_lr(records: Sequence[RunRecord]) -> float | None:
    """The learning rate of the complete record with the lowest final validation loss
    (the full split when scored, else the fixed batches); diverged runs never win."""
    scored = [
        (score, r) for r in records if r.get("complete") and (score := final_score(r)) is not None
    ]
    if not scored:
        return None
    return float(min(scored, key=lambda sr: sr[0])[1]["config"]["lr"])


def next_sweep_lr(records: Sequence[RunRecord], tried: Sequence[float]) -> float | None:
    """The rate to try next when the best of ``records`` is at an end of ``tried`` (half
    the lowest, or twice the highest), else None. Failed and diverged runs count as tried
    and worse, so a diverging rate past the end closes the grid."""
    best = best_lr(records)
    if best is None or len(tried) < 2:
        return None
    if best <= min(tried):
        return best / 2
    if best >= max(tried):
        return best * 2
    return None


_WORKER: dict[str, Any] = {}


def _init_worker(events: Any, data_dir: Path | None, check_md5: bool) -> None:
    exit_with_parent()
    _WORKER["events"] = events
    _WORKER["data"] = load_text(data_dir, download=False, check_md5=check_md5)


def _run_in_worker(job: LMJob, out_dir: Path, command: str) -> RunRecord:
    paths = LMPaths.under(out_dir, job.name, job.seed)
    return train_lm(job, _WORKER["data"], paths, command=command, on_eval=_WORKER["events"].put)


def run_plan(
    plan: StudyPlan,
    data: TextData,
    *,
    out_dir: Path,
    command: str,
    workers: int,
    progress: LMProgress,
    check_md5: bool = True,
) -> list[RunRecord]:
    """Train the sweep then the main jobs (finished ones are read back), in plan order.

    A main job waits until every sweep run of its family has finished; it then trains
    at the best of their learning rates. With ``workers > 1`` each worker process loads
    the text once from ``data.source``.
    """
    sweep_names: dict[str, list[LMJob]] = {}
    for j in plan.sweep:
        sweep_names.setdefault(j.family, []).append(j)
    sweep_records: dict[tuple[str, int], RunRecord] = {}
    lrs: dict[str, float] = {}
    extended: dict[str, int] = {}
    new_sweeps: list[LMJob] = []

    def resolve(p: PlannedJob) -> LMJob | None:
        fam = p.lr_family
        if fam is None or fam not in sweep_names:
            return p.job
        if fam not in lrs:
            mine = sweep_names[fam]
            if not all((j.name, j.seed) in sweep_records for j in mine):
                return None
            done = [sweep_records[(j.name, j.seed)] for j in mine]
            nxt = next_sweep_lr(done, [j.config.lr for j in mine])
            if nxt is not None and extended.get(fam, 0) < plan.extend:
                extended[fam] = extended.get(fam, 0) + 1
                ext = extension_job(mine, nxt)
                mine.append(ext)
                progress.expect(ext, iters_done(LMPaths.under(out_dir, ext.name, ext.seed)))
                progress.message(
                    f"family {fam}: best rate at the end of its grid; sweeping {nxt:g} too"
                )
                new_sweeps.append(ext)
                return None
            lr = best_lr(done)
            if lr is None:
                raise UserError(
                    f"No learning-rate sweep run of family {fam} finished with a finite loss "
                    "(each failed or diverged; see the lines above); sweep lower rates with "
                    "--lrs, then rerun with --resume."
                )
            lrs[fam] = lr
            progress.message(f"family {fam}: best learning rate {lr:g} (from its sweep)")
        return replace(p.job, config=p.job.config.with_(lr=lrs[fam]))

    for j in plan.sweep:
        progress.expect(j, iters_done(LMPaths.under(out_dir, j.name, j.seed)))
    for p in plan.main:
        progress.expect(p.job, iters_done(LMPaths.under(out_dir, p.job.name, p.job.seed)))

    pending: list[LMJob | PlannedJob] = [*plan.sweep, *plan.main]
    records: list[RunRecord] = []

    def take() -> LMJob | None:
        while True:
            for i, item in enumerate(pending):
                job = item if isinstance(item, LMJob) else resolve(item)
                if new_sweeps:
                    break
                if job is not None:
                    del pending[i]
                    return job
            if not new_sweeps:
                return None
            pending[:0] = new_sweeps  # a grid extension runs before every waiting job
            new_sweeps.clear()

    def finished(job: LMJob, record: RunRecord) -> None:
        records.append(record)
        if record.get("diverged"):
            progress.message(f"DIVERGED {job.key}: {record['diverged'].get('reason')}")
        if dict(job.extra).get("phase") == "lr-sweep":
            sweep_records[(job.name, job.seed)] = record

    def failed(job: LMJob, exc: Exception) -> None:
        progress.message(f"FAILED {job.key}: {exc}")
        if dict(job.extra).get("phase") == "lr-sweep":
            sweep_records[(job.name, job.seed)] = {"complete": False}

    if workers <= 1:
        while pending:
            job = take()
            if job is None:  # pragma: no cover - sweeps come first, so cannot happen
                raise UserError("The study plan has jobs waiting for a sweep that is not in it.")
            paths = LMPaths.under(out_dir, job.name, job.seed)
            try:
                record = train_lm(job, data, paths, command=command, on_eval=progress.eval)
            except UserError as exc:
                failed(job, exc)
                continue
            finished(job, record)
        return records

    ctx = mp.get_context("spawn")
    events: Any = ctx.Queue()
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(events, data.source, check_md5),
    ) as pool:
        running: dict[Future[RunRecord], LMJob] = {}
        while pending or running:
            while len(running) < workers:
                job = take()
                if job is None:
                    break
                running[pool.submit(_run_in_worker, job, out_dir, command)] = job
            if not running:  # pragma: no cover - as above
                raise UserError("The study plan has jobs waiting for a sweep that is not in it.")
            _drain(events, progress.eval)
            done, _ = wait(set(running), timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                job = running.pop(fut)
                try:
                    record = fut.result()
                except UserError as exc:  # one bad run must not stop an unattended study
                    failed(job, exc)
                    continue
                finished(job, record)
        _drain(events, progress.eval)
    return records


def _drain(events: Any, on_eval: Callable[[EvalEvent], None]) -> None:
    while True:
        try:
            ev: EvalEvent = events.get_nowait()
        except queue.Empty:
            return
        on_eval(ev)
