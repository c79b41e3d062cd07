"""The report of ``torchkron lm compress``: a pure function of the run files.

``DIR/results.md`` (table, findings with their criterion) and ``DIR/compress.png`` (loss
against parameters, an arrow from each student's loss right after conversion to its loss
after distillation), from ``DIR/runs/*.json`` and the from-scratch GPT studies' run files.

Runs are grouped by their distillation recipe (optimizer and rates, iterations,
temperature...): the study's table holds the recipe with the most finished runs; every
other recipe (the first round's one AdamW rate, a rate sweep) gets its own labelled rows
and is never averaged with it. The from-scratch reference is the first study of
``scratch`` that has runs (``results/lm-v2``, the second GPT study with structure-aware
rates, before ``results/lm``, the first with one rate).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.files import atomic_write_text
from torchkron.experiments.common.runs import load_runs
from torchkron.experiments.lm.compress import FAMILY, METHODS
from torchkron.experiments.lm.distill import FIRST_ROUND, read_record, saved_config
from torchkron.experiments.lm.schedule import format_lr

__all__ = [
    "DEFAULT_SCRATCH",
    "compress_findings",
    "compress_rows",
    "recipe_label",
    "split_by_recipe",
    "write_compress_report",
]

#: The from-scratch config of the GPT study matching each budget's Kronecker student.
SCRATCH = {"3.9": "kron-mlp-k2-r4", "7.8": "kron-mlp-k2-r8"}
NARROW_SCRATCH = "dense-e64"  # the whole-model-narrower dense model of the first study
#: The from-scratch config of each student family at each budget (same weights).
FAMILY_SCRATCH = {
    "3.9": {
        "kron": "kron-mlp-k2-r4",
        "lowrank": "lowrank-mlp-r4",
        "monarch": "monarch-mlp-b32",
        "narrow": "narrow-mlp-h20",
        "narrow-model": NARROW_SCRATCH,
    },
    "7.8": {
        "kron": "kron-mlp-k2-r8",
        "lowrank": "lowrank-mlp-r8",
        "monarch": "monarch-mlp-b16",
        "narrow": "narrow-mlp-h40",
        "narrow-model": NARROW_SCRATCH,
    },
}
#: From-scratch studies, fairest first: the second GPT study (structure-aware rates),
#: then the first (one rate for every parameter).
DEFAULT_SCRATCH = (Path("results/lm-v2"), Path("results/lm"))


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


def _recipe_key(record: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(saved_config(record).recipe().items()))


def _rates(record: dict[str, Any]) -> tuple[bool, float, float, int]:
    c = saved_config(record)
    return c.optimizer != "one-rate", c.lr, c.dense_lr, c.iters


def recipe_label(record: dict[str, Any]) -> str:
    """The optimizer and rates a run was distilled with, in words."""
    c = saved_config(record)
    if c.optimizer == "one-rate":
        first = " (first round)" if c.lr == FIRST_ROUND["lr"] else ""
        text = f"one rate: every parameter at {format_lr(c.lr)}{first}"
    else:
        text = (
            f"structure-aware: factors at {format_lr(c.lr)} x multiplier, other parameters "
            f"at {format_lr(c.dense_lr)}"
        )
    return f"{text}; {c.iters} iterations"


def split_by_recipe(
    records: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """``(the study's records, [other recipes' records...])``: the study's recipe is the
    one with the most runs (ties: the most recently finished); the others in the order
    of their settings (one-rate first, then by rate)."""
    groups: dict[tuple[tuple[str, Any], ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_recipe_key(r), []).append(r)
    if not groups:
        return [], []
    ordered = sorted(
        groups.values(),
        key=lambda g: (len(g), max(str(r.get("finished_at") or "") for r in g)),
        reverse=True,
    )
    return ordered[0], sorted(ordered[1:], key=lambda g: _rates(g[0]))


def _scratch(scratch_dir: Path | None) -> dict[str, list[float]]:
    if scratch_dir is None or not (scratch_dir / "runs").is_dir():
        return {}
    out: dict[str, list[float]] = {}
    for r in load_runs(scratch_dir / "runs"):
        final = r.get("final") or {}
        if r.get("complete") and "val_loss_full" in final:
            out.setdefault(r["variant"], []).append(float(final["val_loss_full"]))
    return out


def _studies(scratch: Sequence[Path]) -> list[tuple[str, dict[str, list[float]]]]:
    """``(folder name, {config: losses})`` of each from-scratch study that has runs."""
    found = [(d.name, _scratch(d)) for d in scratch]
    return [(name, runs) for name, runs in found if runs]


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


def compress_findings(
    rows: Sequence[dict[str, Any]], scratch: dict[str, list[float]], study: str = "GPT study"
) -> list[str]:
    """Findings, each with its numbers and verdict (criterion in the report); ``scratch``
    is the reference from-scratch study's ``{config: losses}``, named ``study``."""
    lines = []
    for budget in sorted({r["budget"] for r in rows}):
        mine = {r["method"]: r for r in rows if r["budget"] == budget}
        for method, row in mine.items():
            ref = FAMILY_SCRATCH.get(budget, {}).get(FAMILY[method])
            if ref in scratch:
                lines.append(
                    _compare(
                        f"{budget}%: {method} distilled vs {ref} from scratch ({study})",
                        row["distilled_values"],
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
        if not done:
            continue
        best = done[0]
        order = ", ".join(f"{r['method']} {r['distilled'][0]:.3f}" for r in done)
        lines.append(f"- **{budget}%: who wins after distillation**: {best['method']} ({order})")
        same = {c for c in FAMILY_SCRATCH.get(budget, {}).values() if c != NARROW_SCRATCH}
        trained = sorted((statistics.fmean(scratch[c]), c) for c in same if c in scratch)
        if trained:
            lines.append(
                _compare(
                    f"{budget}%: best distilled student vs the best model trained from "
                    f"scratch at this MLP budget ({study})",
                    best["distilled_values"],
                    scratch[trained[0][1]],
                    best["method"],
                    trained[0][1],
                )
            )
        best_kron = min(
            (r for r in done if r["method"].startswith("kron")),
            key=lambda r: r["distilled"][0],
            default=None,
        )
        if best_kron is None:
            continue
        for other in done:
            if other["method"].startswith("kron"):
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
        if NARROW_SCRATCH in scratch:
            lines.append(
                _compare(
                    f"{budget}%: stretch: best Kronecker student vs the narrower dense "
                    f"model trained from scratch ({study})",
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


def _scratch_cell(runs: dict[str, list[float]], budget: str, method: str) -> str:
    config = FAMILY_SCRATCH.get(budget, {}).get(FAMILY[method])
    return _pm(_stats(runs[config])) if config in runs else ""


def _other_recipes(
    groups: Sequence[Sequence[dict[str, Any]]], study: Sequence[dict[str, Any]]
) -> list[str]:
    """The labelled rows of every recipe but the study's, with the study recipe's loss on
    the same seeds beside them (never averaged together)."""
    if not groups:
        return []
    lines = [
        "## Other recipes (each on its own, never averaged with the table above)",
        "",
        "The first round distilled every student with one AdamW rate for every parameter; "
        "the rate sweep chose the study's rates (seed 0). 'Study recipe' is the table "
        "above's loss on the same seeds.",
        "",
        "| recipe | budget | method | loss converted | loss distilled | seeds | "
        "study recipe, same seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {(r["budget"], r["method"], r["seed"]): r for r in study}
    for group in groups:
        label = recipe_label(group[0])
        for row in compress_rows(group):
            mine = [
                r for r in group if (r["budget"], r["method"]) == (row["budget"], row["method"])
            ]
            pair = [base.get((row["budget"], row["method"], r["seed"])) for r in mine]
            same = [p["metrics"]["val_loss_distilled"] for p in pair if p is not None]
            ref = _pm(_stats(same)) if len(same) == len(mine) else "n/a"
            lines.append(
                f"| {label} | {row['budget']}% | {row['method']} | {_pm(row['converted'])} | "
                f"{_pm(row['distilled'])} | {row['distilled'][2]} | {ref} |"
            )
    return [*lines, ""]


def write_compress_report(
    out: Path,
    *,
    scratch: Sequence[Path] | Path | None = DEFAULT_SCRATCH,
    plots: bool = True,
) -> list[Path]:
    """Write ``out/results.md`` (and ``out/compress.png``) from the run files."""
    dirs = [scratch] if isinstance(scratch, Path) else list(scratch or [])
    studies = _studies(dirs)
    study_name, ref = studies[0] if studies else ("GPT study", {})
    records, others = split_by_recipe(_complete(out))
    rows = compress_rows(records)
    teacher = records[0]["teacher"] if records else {}
    cfg = records[0]["config"] if records else {}
    recipe = recipe_label(records[0]) if records else "?"
    scratch_cols = "".join(f" scratch {name} |" for name, _ in studies)
    lines = [
        "# Compressing a trained GPT: conversion, then distillation",
        "",
        "Generated by `torchkron lm compress-report` from the run files in `runs/` alone "
        f"(and the from-scratch studies' runs). Teacher: the GPT study's dense config "
        f"(validation loss {_fmt(teacher.get('val_loss_full'))}). Every student is the "
        "teacher with its MLP linears replaced, then distilled for "
        f"{cfg.get('iters', '?')} iterations (KL to the teacher at temperature "
        f"{cfg.get('temperature', '?')}, hidden-state MSE weight {cfg.get('hidden_mse', '?')}; "
        f"AdamW, {recipe}). Loss = cross-entropy on the whole validation split.",
        "",
        f"Runs: {len(records)} complete with this recipe, "
        f"{sum(len(g) for g in others)} with other recipes (listed apart below).",
        "",
        "| budget | method | structure | MLP weights | params | output error | "
        f"loss converted | loss distilled | seeds |{scratch_cols}",
        "|---|---|---|---:|---:|---:|---|---|---|" + "---|" * len(studies),
    ]
    for r in rows:
        cells = "".join(
            f" {_scratch_cell(runs, r['budget'], r['method'])} |" for _, runs in studies
        )
        lines.append(
            f"| {r['budget']}% | {r['method']} | {r['structure']} | {r['mlp_weights']:,} | "
            f"{r['parameters']:,} | {_fmt(r['output_error'])} | {_pm(r['converted'])} | "
            f"{_pm(r['distilled'])} | {r['distilled'][2]} |{cells}"
        )
    lines += [
        "",
        "Output error: mean over the MLP layers of the relative output error "
        "`||(W - W_hat) C^1/2|| / ||W C^1/2||` on the calibration inputs. 'scratch STUDY': "
        "the same structure at the same MLP weights trained from scratch for 2000 "
        "iterations in that GPT study (mean ± std over its seeds; narrow-model: the dense "
        f"{NARROW_SCRATCH}; pruned has none); lm-v2 trains with structure-aware rates, "
        "lm with one rate.",
        "",
        "## Findings",
        "",
        "Criterion: a gap between two means counts as beyond seed noise when it exceeds 2 "
        "standard errors of the difference (sqrt(s_a^2/n_a + s_b^2/n_b)), with at least 2 "
        "seeds each; 'lower' means the first is better. From-scratch reference: "
        f"{study_name}.",
        "",
        *compress_findings(rows, ref, study_name),
        "",
        *_other_recipes(others, records),
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
    # The axis fits the distilled losses (who wins is read there); the converted ones
    # (3-7 nats) are far above it, so each arrow comes in from the top of the plot.
    ax.set_ylabel("validation loss after distillation (arrows from the converted loss, above)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
