"""The report of ``torchkron lm compress``: a pure function of the run files.

``DIR/results.md`` (table, findings with their criterion) and ``DIR/compress.png`` (loss
against parameters, an arrow from each student's loss right after conversion to its loss
after distillation), from ``DIR/runs/*.json`` and the from-scratch GPT study's run files.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.files import atomic_write_text
from torchkron.experiments.common.runs import load_runs
from torchkron.experiments.lm.compress import METHODS
from torchkron.experiments.lm.distill import read_record

__all__ = ["compress_findings", "compress_rows", "write_compress_report"]

#: The from-scratch config of the GPT study matching each budget's Kronecker student.
SCRATCH = {"3.9": "kron-mlp-k2-r4", "7.8": "kron-mlp-k2-r8"}
NARROW_SCRATCH = "dense-e64"  # the whole-model-narrower dense model of the first study


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    n = len(values)
    mean = statistics.fmean(values) if n else math.nan
    std = statistics.stdev(values) if n > 1 else 0.0
    return mean, std, n


def _complete(out: Path) -> list[dict[str, Any]]:
    runs = out / "runs"
    if not runs.is_dir():
        return []
    records = [read_record(p) for p in sorted(runs.glob("*.json"))]
    return [r for r in records if r.get("complete")]


def compress_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (budget, method) with means, stds and counts."""
    rows = []
    for budget in sorted({r["budget"] for r in records}):
        for method in METHODS:
            mine = [r for r in records if r["budget"] == budget and r["method"] == method]
            if not mine:
                continue
            conv = _stats([r["metrics"]["val_loss_converted"] for r in mine])
            dist = _stats([r["metrics"]["val_loss_distilled"] for r in mine])
            rows.append(
                {
                    "budget": budget,
                    "method": method,
                    "structure": mine[0]["structure"],
                    "parameters": mine[0]["parameters"],
                    "mlp_weights": mine[0]["mlp_weights"],
                    "converted": conv,
                    "distilled": dist,
                    "distilled_values": [r["metrics"]["val_loss_distilled"] for r in mine],
                    "output_error": _mean_output_error(mine[0]),
                }
            )
    return rows


def _mean_output_error(record: dict[str, Any]) -> float | None:
    errs = [
        layer["output_error"]
        for layer in record.get("conversion", {}).get("layers", [])
        if "output_error" in layer
    ]
    return statistics.fmean(errs) if errs else None


def _scratch(scratch_dir: Path | None) -> dict[str, list[float]]:
    if scratch_dir is None or not (scratch_dir / "runs").is_dir():
        return {}
    out: dict[str, list[float]] = {}
    for r in load_runs(scratch_dir / "runs"):
        final = r.get("final") or {}
        if r.get("complete") and "val_loss_full" in final:
            out.setdefault(r["variant"], []).append(float(final["val_loss_full"]))
    return out


def _compare(label: str, a: Sequence[float], b: Sequence[float], na: str, nb: str) -> str:
    ma, sa, ka = _stats(a)
    mb, sb, kb = _stats(b)
    if ka < 2 or kb < 2:
        return (
            f"- **{label}**: {na} {ma:.3f} (n = {ka}) vs {nb} {mb:.3f} (n = {kb}): "
            f"gap {ma - mb:+.3f}; fewer than 2 seeds on a side, no verdict yet"
        )
    se = math.sqrt(sa**2 / ka + sb**2 / kb)
    gap = ma - mb
    verdict = "within noise" if abs(gap) <= 2 * se else ("lower" if gap < 0 else "higher")
    return (
        f"- **{label}**: {na} {ma:.3f} vs {nb} {mb:.3f}: gap {gap:+.3f}, SE {se:.3f} "
        f"(n = {ka} vs {kb}) -> {verdict}"
    )


def compress_findings(rows: Sequence[dict[str, Any]], scratch: dict[str, list[float]]) -> list[str]:
    """Findings, each with its numbers and verdict (criterion in the report)."""
    lines = []
    for budget in sorted({r["budget"] for r in rows}):
        mine = {r["method"]: r for r in rows if r["budget"] == budget}
        ref = SCRATCH.get(budget)
        for method in ("kron-plain", "kron-act", "kron-act-perm"):
            if method in mine and ref in scratch:
                lines.append(
                    _compare(
                        f"{budget}%: {method} distilled vs Kronecker from scratch",
                        mine[method]["distilled_values"],
                        scratch[ref],
                        method,
                        ref,
                    )
                )
        if "kron-act" in mine and "kron-plain" in mine:
            a, p = mine["kron-act"], mine["kron-plain"]
            lines.append(
                f"- **{budget}%: activation-aware vs plain Kronecker right after conversion**: "
                f"{a['converted'][0]:.3f} vs {p['converted'][0]:.3f} (mean layer output "
                f"error {_fmt(a['output_error'])} vs {_fmt(p['output_error'])})"
            )
        if "kron-act-perm" in mine and "kron-act" in mine:
            lines.append(
                _compare(
                    f"{budget}%: permutation pays (kron-act-perm vs kron-act, distilled)",
                    mine["kron-act-perm"]["distilled_values"],
                    mine["kron-act"]["distilled_values"],
                    "kron-act-perm",
                    "kron-act",
                )
            )
        done = sorted(mine.values(), key=lambda r: r["distilled"][0])
        if done:
            best = done[0]
            order = ", ".join(f"{r['method']} {r['distilled'][0]:.3f}" for r in done)
            lines.append(
                f"- **{budget}%: who wins after distillation**: {best['method']} ({order})"
            )
            best_kron = min(
                (r for r in done if r["method"].startswith("kron")),
                key=lambda r: r["distilled"][0],
                default=None,
            )
            for other in done:
                if best_kron is None or other["method"].startswith("kron"):
                    continue
                lines.append(
                    _compare(
                        f"{budget}%: best Kronecker student vs {other['method']}",
                        best_kron["distilled_values"],
                        other["distilled_values"],
                        best_kron["method"],
                        other["method"],
                    )
                )
            if best_kron is not None and NARROW_SCRATCH in scratch:
                lines.append(
                    _compare(
                        f"{budget}%: stretch: best Kronecker student vs the narrower dense "
                        f"model trained from scratch",
                        best_kron["distilled_values"],
                        scratch[NARROW_SCRATCH],
                        best_kron["method"],
                        NARROW_SCRATCH,
                    )
                )
    return lines


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pm(stats: tuple[float, float, int]) -> str:
    mean, std, n = stats
    return f"{mean:.3f}" if n < 2 else f"{mean:.3f} ± {std:.3f}"


def write_compress_report(
    out: Path, *, scratch: Path | None = None, plots: bool = True
) -> list[Path]:
    """Write ``out/results.md`` (and ``out/compress.png``) from the run files."""
    records = _complete(out)
    rows = compress_rows(records)
    ref = _scratch(scratch)
    teacher = records[0]["teacher"] if records else {}
    cfg = records[0]["config"] if records else {}
    lines = [
        "# Compressing a trained GPT: conversion, then distillation",
        "",
        "Generated by `torchkron lm compress-report` from the run files in `runs/` alone "
        f"(and the from-scratch study's runs). Teacher: the GPT study's dense config "
        f"(validation loss {_fmt(teacher.get('val_loss_full'))}). Every student is the "
        "teacher with its MLP linears replaced, then distilled for "
        f"{cfg.get('iters', '?')} iterations (KL to the teacher at temperature "
        f"{cfg.get('temperature', '?')}, hidden-state MSE weight {cfg.get('hidden_mse', '?')}, "
        f"lr {cfg.get('lr', '?')}). Loss = cross-entropy on the whole validation split.",
        "",
        f"Runs: {len(records)} complete.",
        "",
        "| budget | method | structure | MLP weights | params | output error | "
        "loss converted | loss distilled | seeds |",
        "|---|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['budget']}% | {r['method']} | {r['structure']} | {r['mlp_weights']:,} | "
            f"{r['parameters']:,} | {_fmt(r['output_error'])} | {_pm(r['converted'])} | "
            f"{_pm(r['distilled'])} | {r['distilled'][2]} |"
        )
    for budget, name in SCRATCH.items():
        if name in ref:
            lines.append(
                f"| {budget}% | from scratch ({name}, GPT study) | | | | | | "
                f"{_pm(_stats(ref[name]))} | {len(ref[name])} |"
            )
    lines += [
        "",
        "Output error: mean over the MLP layers of the relative output error "
        "`||(W - W_hat) C^1/2|| / ||W C^1/2||` on the calibration inputs.",
        "",
        "## Findings",
        "",
        "Criterion: a gap between two means counts as beyond seed noise when it exceeds 2 "
        "standard errors of the difference (sqrt(s_a^2/n_a + s_b^2/n_b)), with at least 2 "
        "seeds each; 'lower' means the first is better.",
        "",
        *compress_findings(rows, ref),
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.md"]
    atomic_write_text(written[0], "\n".join(lines))
    if plots and rows:
        written.append(_plot(rows, ref, out / "compress.png"))
    return written


def _plot(rows: Sequence[dict[str, Any]], ref: dict[str, list[float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.get_cmap("tab10")
    for i, method in enumerate(METHODS):
        mine = [r for r in rows if r["method"] == method]
        for j, r in enumerate(mine):
            x, y0, y1 = r["parameters"], r["converted"][0], r["distilled"][0]
            shown = min(y0, 4.5)
            ax.annotate(
                "",
                xy=(x, y1),
                xytext=(x, shown),
                arrowprops={"arrowstyle": "->", "color": colors(i), "alpha": 0.6},
            )
            ax.scatter([x], [y1], color=colors(i), label=method if j == 0 else None, zorder=3)
    for name, values in ref.items():
        if name in (*SCRATCH.values(), NARROW_SCRATCH, "dense"):
            ax.axhline(statistics.fmean(values), ls=":", color="grey", lw=0.8)
            ax.text(
                ax.get_xlim()[0],
                statistics.fmean(values),
                f" {name} (scratch)",
                fontsize=7,
                va="bottom",
                color="grey",
            )
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation loss (arrow: converted -> distilled; converted capped at 4.5)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
