"""The founding experiment: every variant x seed, its report and the comparison (``torchkron
reproduce``), or one run (``torchkron train``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torchkron.experiments.common.environment import environment, now_iso
from torchkron.experiments.common.files import atomic_write_json
from torchkron.experiments.common.progress import format_duration
from torchkron.experiments.common.runs import RunRecord
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.runner import Job, RunOptions, open_session, run_jobs, track
from torchkron.experiments.mnist.variants import MLPSpec, get_variant, reproduction_variants

__all__ = [
    "DEFAULT_OUT",
    "LOG_FILE",
    "Reproduction",
    "reproduce",
    "resolve_variants",
    "train_one",
]


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


#: Where ``torchkron reproduce`` trains by default: an untracked folder, so a fresh clone's
#: reproduction never touches the committed reference in ``results/mnist``.
DEFAULT_OUT = Path("runs") / "mnist"
#: The session's log in the output folder: the command, then a line per epoch.
LOG_FILE = "reproduce.log"


@dataclass(frozen=True)
class Reproduction:
    """What ``reproduce`` wrote, and the texts to show at the end."""

    results: Path
    report: str
    comparison: Path | None = None
    comparison_text: str | None = None
    plots: tuple[Path, ...] = ()


def reproduce(
    *,
    variants: Sequence[str] | None,
    seeds: int,
    config: TrainConfig,
    options: RunOptions,
    reference: Path | None = None,
) -> Reproduction:
    """Train every variant x seed, write the report and compare it with ``reference``."""
    specs = resolve_variants(variants)
    jobs = [Job(spec, seed) for spec in specs for seed in range(seeds)]
    with open_session(jobs, options, LOG_FILE, dataset=config.dataset) as (progress, mnist):
        # A piped session prints a line per finished run only (minutes apart): say where
        # the line per epoch goes, so that it can be followed from the start.
        log = options.out_dir / LOG_FILE
        progress.message(f"per-epoch progress: {log} (follow it with `tail -f {log}`)")
        done = track(progress, jobs, options.out_dir, config.epochs)
        progress.message(
            f"data: {mnist.source} ({mnist.train_images.shape[0]} train, "
            f"{mnist.test_images.shape[0]} test); {len(specs)} variants x {seeds} seeds x "
            f"{config.epochs} epochs into {options.out_dir}; {done} epoch(s) already done; "
            f"{options.workers} worker(s)"
        )
        start, started_at = time.perf_counter(), now_iso()
        run_jobs(jobs, config, options, mnist, progress=progress)
        wall = time.perf_counter() - start
        _record_wall_time(options, started_at, wall, len(jobs))
        progress.message(f"all runs done in {format_duration(wall)}; writing the report")
        from torchkron.experiments.mnist.report import report_text, write_report

        paths = write_report(options.out_dir, plots=options.plots)
        text = report_text(_load_summary(paths.summary))
        progress.log(text)
        result = Reproduction(paths.results, text, plots=paths.plots)
        if reference is not None and not _same_folder(reference, options.out_dir):
            from torchkron.experiments.mnist.compare import write_comparison

            path, comparison = write_comparison(options.out_dir, reference)
            progress.log(comparison)
            result = replace(result, comparison=path, comparison_text=comparison)
        return result


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _load_summary(path: Path) -> dict[str, object]:
    import json

    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def _record_wall_time(options: RunOptions, started_at: str, wall: float, runs: int) -> None:
    """Keep the wall time of each reproduce session.

    The report shows a session's time as that of a complete reproduction only when the
    session trained every run from start to end (see ``report.reproduction_session``).
    """
    path = options.out_dir / "sessions.json"
    import json

    sessions: list[dict[str, object]] = []
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, list):
                sessions = [s for s in loaded if isinstance(s, dict)]
        except (OSError, ValueError):
            sessions = []
    sessions.append(
        {
            "command": options.command,
            "out": str(options.out_dir),
            "started_at": started_at,
            "finished_at": now_iso(),
            "wall_seconds": round(wall, 2),
            "workers": options.workers,
            "runs": runs,
            "environment": environment(options.out_dir),
        }
    )
    atomic_write_json(path, sessions)


def train_one(*, variant: str, seed: int, config: TrainConfig, options: RunOptions) -> RunRecord:
    """One run of one variant (``torchkron train``), in this process."""
    job = Job(get_variant(variant), seed)
    with open_session([job], options, "train.log", dataset=config.dataset) as (progress, mnist):
        track(progress, [job], options.out_dir, config.epochs)
        (record,) = run_jobs([job], config, replace(options, workers=1), mnist, progress=progress)
        return record
