"""``torchkron report DIR``: regenerate every result from ``DIR/runs/*.json`` alone.

Writes ``summary.json``, ``results.md`` and (optionally) ``accuracy.png``/``loss.png``
into ``DIR``. Nothing here trains or reads anything but the run files.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.runs import load_complete_runs
from torchkron.experiments.mnist.summary import save_summary, summarize
from torchkron.experiments.mnist.tables import format_duration, verdict, write_results_md

__all__ = [
    "ReportPaths",
    "SummaryFiles",
    "load_sessions",
    "report_text",
    "reproduction_session",
    "write_report",
]


@dataclass(frozen=True)
class ReportPaths:
    """The files a report wrote."""

    summary: Path
    results: Path
    plots: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SummaryFiles:
    """What a sweep or compress report wrote, and the summary it wrote."""

    summary: Path
    markdown: Path
    plot: Path | None
    summary_data: dict[str, Any]

    def wrote(self) -> str:
        """The line that names the files written."""
        return f"wrote {self.summary}, {self.markdown}" + (f" and {self.plot}" if self.plot else "")


def write_report(out_dir: Path, *, plots: bool = True, baseline: Path | None = None) -> ReportPaths:
    """Summarise the complete runs in ``out_dir/runs`` into ``out_dir``; return the paths.

    With ``baseline`` (another reproduce folder, e.g. plain MNIST), the summary and
    ``results.md`` gain the comparison of :mod:`~torchkron.experiments.mnist.against`,
    computed from the baseline's run files. ``out_dir/filters.npz``, where present, is
    drawn as ``filters.png`` (:mod:`~torchkron.experiments.mnist.filters`).
    """
    records = load_complete_runs(out_dir, "reproduce")
    summary = summarize(records)
    summary["sessions"] = load_sessions(out_dir)
    summary["reproduction_session"] = reproduction_session(summary["sessions"], records)
    if baseline is not None:
        from torchkron.experiments.mnist.against import against

        base = summarize(load_complete_runs(baseline, "reproduce"))
        summary["against"] = against(summary, base, baseline.as_posix())
    summary_path = save_summary(out_dir, summary)
    results_path = write_results_md(out_dir, summary)
    plot_paths: tuple[Path, ...] = ()
    if plots:
        # Imported here: matplotlib is only needed when plotting.
        from torchkron.experiments.mnist.plots import plot_curves

        plot_paths = tuple(plot_curves(summary, out_dir))
        from torchkron.experiments.mnist.filters import FILTERS_FILE, draw_filters

        if (out_dir / FILTERS_FILE).is_file():
            plot_paths += (draw_filters(out_dir / FILTERS_FILE),)
    return ReportPaths(summary_path, results_path, plot_paths)


def load_sessions(out_dir: Path) -> list[dict[str, Any]]:
    """The wall-clock records ``reproduce`` keeps in ``sessions.json`` (empty if none)."""
    path = out_dir / "sessions.json"
    if not path.exists():
        return []
    try:
        sessions = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not valid JSON ({exc}); delete it (it only holds timings)."
        ) from None
    return [dict(s) for s in sessions] if isinstance(sessions, list) else []


def _time(text: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def reproduction_session(
    sessions: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]
) -> int | None:
    """The index of the last session that trained every run from start to end, or None.

    Such a session's wall time is that of one complete reproduction on one machine: every
    run started and finished within it. A run resumed from an earlier session started
    before it, so sessions that only finished part of the work do not count.
    """
    spans = [(_time(r.get("started_at")), _time(r.get("finished_at"))) for r in records]
    if not records or any(a is None or b is None for a, b in spans):
        return None
    for i in range(len(sessions) - 1, -1, -1):
        start, end = _time(sessions[i].get("started_at")), _time(sessions[i].get("finished_at"))
        if start is None or end is None or "wall_seconds" not in sessions[i]:
            continue
        if all(start <= a and b <= end for a, b in spans if a is not None and b is not None):
            return i
    return None


def _row(cells: list[str], widths: list[int]) -> str:
    # First column left-aligned (names), the numbers right-aligned.
    pairs = zip(cells[1:], widths[1:], strict=True)
    parts = [cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in pairs)]
    return "  ".join(parts).rstrip()


def report_text(summary: Mapping[str, Any]) -> str:
    """A short console table: accuracy, loss, compression and speed, then the findings."""
    header = ["variant", "weights", "seeds", "test acc %", "test loss", "compr.", "s/epoch"]
    rows = [
        [
            v["name"],
            f"{v['weights']:,}",
            str(len(v["seeds"])),
            f"{v['test_accuracy']['mean']:.2f} ± {v['test_accuracy']['std']:.2f}",
            f"{v['test_loss']['mean']:.4f}",
            "-" if v["compression"] is None else f"{v['compression']:,.1f}x",
            f"{v['seconds_per_epoch']:.2f}",
        ]
        for v in summary["variants"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), *(_row(r, widths) for r in rows), ""]
    lines += [f"[{_verdict(f)}] {f['claim']}" for f in summary["findings"]]
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    lines.append(
        f"{summary['runs']} runs, {format_duration(float(summary['wall_seconds']))} of training."
    )
    return "\n".join(lines)


def _verdict(finding: Mapping[str, Any]) -> str:
    """``holds``..., with ``seed noise not measured (n = 1)`` when it rests on single runs."""
    text = verdict(finding["holds"])
    if finding.get("seed_noise"):
        text += f", seed noise {finding['seed_noise']}"
    return text
