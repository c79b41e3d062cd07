"""The report steps that ``torchkron sweep`` and ``torchkron compress`` share."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchkron.experiments.common.progress import Progress
    from torchkron.experiments.mnist.report import SummaryFiles

__all__ = ["finish_report", "rewrite_report"]

#: ``write_frontier`` / ``write_compress_report``: ``(out_dir, *, plots) -> SummaryFiles``.
WriteReport = Callable[..., "SummaryFiles"]
#: ``frontier_text`` / ``compress_text``: the summary as the lines printed at the end.
SummaryText = Callable[[Mapping[str, Any]], str]


def rewrite_report(out_dir: Path, write: WriteReport, text: SummaryText, *, plots: bool) -> int:
    """``--report-only``: rewrite the report from ``OUT/runs`` alone and print it."""
    paths = write(out_dir, plots=plots)
    print(text(paths.summary_data))
    print(paths.wrote())
    return 0


def finish_report(
    progress: Progress,
    start: float,
    name: str,
    write: WriteReport,
    text: SummaryText,
    *,
    out_dir: Path,
    plots: bool,
) -> Path:
    """After a session's runs (begun at ``perf_counter`` ``start``): log the time, write the
    report (``name`` for the log) and log its summary; returns the markdown's path."""
    from torchkron.experiments.common.progress import format_duration

    progress.message(
        f"all runs done in {format_duration(time.perf_counter() - start)}; writing the {name}"
    )
    paths = write(out_dir, plots=plots)
    progress.message(text(paths.summary_data))
    return paths.markdown
