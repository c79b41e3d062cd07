"""Summary -> ``results.md``: the seed's table with seeds, spread, compression and timing.

Pure text from the summary, with no timestamp, so regenerating from the same runs gives
identical bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.files import atomic_write_text

__all__ = [
    "RESULTS_FILE",
    "format_duration",
    "results_markdown",
    "verdict",
    "write_results_md",
]

RESULTS_FILE = "results.md"

Summary = Mapping[str, Any]
Variant = Mapping[str, Any]


# --- number formatting ---------------------------------------------------------------


def _pm(stats: Mapping[str, float], digits: int) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _compression(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}x"


def _seconds(value: float) -> str:
    """Seconds with two significant decimals below 10 s, one above."""
    return f"{value:.2f}" if value < 10 else f"{value:,.1f}"


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``12.3 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def verdict(holds: bool | None) -> str:
    """``holds`` / ``does not hold`` / ``not tested``."""
    return {True: "holds", False: "does not hold", None: "not tested"}[holds]


def _cell(text: str) -> str:
    """Markdown table cell: a pipe would end the cell."""
    return text.replace("|", "\\|")


def _values(items: Sequence[Any]) -> str:
    return ", ".join(str(i) for i in items) if items else "unknown"


# --- sections ------------------------------------------------------------------------


def _seeds_line(variants: Sequence[Variant]) -> str:
    """``3 seeds (0, 1, 2) x 10 epochs``, or ranges when variants differ."""
    seeds = sorted({s for v in variants for s in v["seeds"]})
    counts = sorted({len(v["seeds"]) for v in variants})
    epochs = sorted({v["epochs"] for v in variants})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    e = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"
    return f"{n} seed(s) ({_values(seeds)}) x {e} epoch(s)"


def _setup_line(summary: Summary) -> str:
    env = summary["environment"]
    shas = [str(s)[:12] for s in env.get("git_sha", [])]
    return (
        f"{_seeds_line(summary['variants'])} per variant, {summary['runs']} runs; "
        f"machine: {_values(env.get('processor', []))}; torch {_values(env.get('torch', []))}; "
        f"git {_values(shas)}."
    )


def _description(v: Variant) -> str:
    """The description, naming the matched variant when it does not already."""
    text = str(v["description"])
    if v.get("matches") and str(v["matches"]) not in text:
        text += f" (equal-weight baseline for {v['matches']})"
    return text


def _table(summary: Summary) -> list[str]:
    reference = summary.get("compression_reference") or "original"
    lines = [
        "| variant | weights | description | test accuracy % (mean ± std) "
        f"| test loss (mean ± std) | compression vs {reference} | s/epoch |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    # Seed variants (and sweeps) first, then the dense baselines that match them.
    baselines = [v for v in summary["variants"] if v.get("matches")]
    others = [v for v in summary["variants"] if not v.get("matches")]
    for v in others + baselines:
        cells = [
            f"`{v['name']}`",
            f"{v['weights']:,}",
            _cell(_description(v)),
            _pm(v["test_accuracy"], 2),
            _pm(v["test_loss"], 4),
            _compression(v["compression"]),
            _seconds(v["seconds_per_epoch"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _findings(summary: Summary) -> list[str]:
    lines = ["## Findings", ""]
    for i, f in enumerate(summary["findings"], 1):
        lines.append(f"{i}. **{verdict(f['holds'])}**: {f['claim']} {f['evidence']}")
    return lines


def _warnings(summary: Summary) -> list[str]:
    if not summary.get("warnings"):
        return []
    return ["## Warnings", "", *[f"- {w}" for w in summary["warnings"]], ""]


def _where(session: Mapping[str, Any]) -> str:
    env = session.get("environment", {})
    cpu, cores, torch_version = (env.get(k, "?") for k in ("processor", "cpu_count", "torch"))
    return (
        f"{session.get('runs', '?')} runs, {session.get('workers', '?')} worker process(es); "
        f"{cpu}, {cores} CPUs, torch {torch_version}"
    )


def _sessions(summary: Summary) -> list[str]:
    """Wall time of one complete reproduction: a single session (one machine, one folder)
    that trained every run from start to end; never a sum over sessions."""
    sessions = summary.get("sessions") or []
    if not sessions:
        return []
    index = summary.get("reproduction_session")
    if isinstance(index, int) and 0 <= index < len(sessions):
        s = sessions[index]
        return [
            "",
            f"Wall time of one complete reproduction: "
            f"{format_duration(float(s['wall_seconds']))} in one session on one machine "
            f"({_where(s)}), command `{s['command']}`.",
        ]
    last = sessions[-1]
    return [
        "",
        f"No single session trained every run here from start to end (the runs come from "
        f"{len(sessions)} recorded session(s) or were resumed), so the wall time of a complete "
        f"reproduction is not known from these files. The last session took "
        f"{format_duration(float(last['wall_seconds']))} ({_where(last)}), command "
        f"`{last['command']}`.",
    ]


def results_markdown(summary: Summary) -> str:
    """``results.md`` for ``summary``: setup line, table, findings, warnings, wall time."""
    from torchkron.experiments.mnist.against import against_markdown, data_title

    wall = float(summary["wall_seconds"])
    title = data_title(summary) if summary["variants"] else "MNIST"
    against = summary.get("against")
    lines = [
        f"# torchkron: Kronecker-factored MLPs on {title} (784 -> 625 -> 10)",
        "",
        _setup_line(summary),
        "",
        *_table(summary),
        "",
        "Test accuracy and loss at the final epoch; std is the sample std over seeds. "
        "Weights exclude biases.",
        "",
        *_findings(summary),
        "",
        *(against_markdown(against, verdict) if against else []),
        *_warnings(summary),
        f"Training time: {format_duration(wall)} ({wall:,.0f} s summed over "
        f"{summary['runs']} runs).",
        *_sessions(summary),
    ]
    return "\n".join(lines) + "\n"


def write_results_md(out_dir: Path, summary: Summary) -> Path:
    """Write ``out_dir/results.md`` atomically; return its path."""
    path = out_dir / RESULTS_FILE
    atomic_write_text(path, results_markdown(summary))
    return path
