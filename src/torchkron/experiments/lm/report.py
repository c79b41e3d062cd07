"""The LM study's report: table, learning-rate sweep, frontier plots, findings.

Everything here is a pure function of the run files in ``DIR/runs`` (and of the study's
config list, to mark runs that are missing): ``summarize`` builds a JSON-able summary,
``report_markdown`` renders it, ``write_report`` writes ``summary.json``, ``results.md``,
``frontier_params.png`` and ``frontier_time.png``. Missing or unfinished runs are listed,
never silently dropped, so a partial study still reports what it has.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_json, atomic_write_text
from torchkron.experiments.common.runs import RUNS_DIR, RunRecord
from torchkron.experiments.common.runs import load_run as _load_run
from torchkron.experiments.lm.describe import (
    describe_study,
    recipe,
    recipe_groups,
    recipe_label,
    study_facts,
)
from torchkron.experiments.lm.trainer import final_score

__all__ = [
    "NANOGPT_ANCHOR",
    "compare",
    "load_lm_runs",
    "report_markdown",
    "summarize",
    "write_report",
]

#: nanoGPT's README: shakespeare_char on a laptop CPU with this recipe, val loss 1.88.
NANOGPT_ANCHOR = 1.88
SEEDS = 3
#: Two means differ "beyond seed noise" when their gap exceeds this many standard errors
#: of the difference (Welch), with at least two seeds on each side.
SE_FACTOR = 2.0


def load_lm_runs(out_dir: Path) -> list[RunRecord]:
    """Every LM run record of ``out_dir/runs`` (complete or not), sorted by file name."""
    runs_dir = out_dir / RUNS_DIR
    if not runs_dir.is_dir():
        return []
    records = [_load_run(p) for p in sorted(runs_dir.glob("*.json"))]
    return [r for r in records if r.get("kind") == "lm"]


def _mean_std(xs: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def _group_weights(r: RunRecord, group: str) -> int:
    by = r["weights_by_role"]
    if group == "mlp":
        return int(by["mlp.fc"] + by["mlp.proj"])
    if group == "attn":
        return int(by["attn.qkv"] + by["attn.proj"])
    return int(sum(by.values()))


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``mean(a) - mean(b)`` and whether it is beyond seed noise.

    Criterion: ``|gap| > SE_FACTOR * sqrt(var_a / n_a + var_b / n_b)`` with ``n >= 2``
    seeds on both sides (sample variances).
    """
    gap = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return {"gap": gap, "se": None, "verdict": "too few seeds"}
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    beyond = abs(gap) > SE_FACTOR * se
    verdict = ("lower" if gap < 0 else "higher") if beyond else "within noise"
    return {"gap": gap, "se": se, "verdict": verdict}


def _expected() -> tuple[list[tuple[str, int]], list[dict[str, Any]]]:
    from torchkron.experiments.lm.schedule import (
        DEFAULT_LRS,
        LR_FAMILY,
        REPRESENTATIVES,
        study_configs,
        sweep_name,
    )

    configs = study_configs()
    sweep = [
        (sweep_name(REPRESENTATIVES[f], lr), 0)
        for f in dict.fromkeys(LR_FAMILY.get(c.family, c.family) for c in configs)
        for lr in DEFAULT_LRS
    ]
    rows = [
        {
            "config": c.name,
            "family": c.family,
            "group": c.group,
            "budget": c.budget,
            "tier": c.priority // 10,
            "description": c.description,
            "seeds_planned": min(SEEDS, c.max_seeds) if c.max_seeds else SEEDS,
        }
        for c in configs
    ]
    return sweep, rows


def summarize(records: Sequence[RunRecord]) -> dict[str, Any]:
    """The study's numbers from its run records (see the module docstring)."""
    sweep_expected, config_rows = _expected()
    complete = [r for r in records if r.get("complete") and r.get("final")]
    main = [r for r in complete if r.get("extra", {}).get("phase") != "lr-sweep"]
    sweeps = [r for r in complete if r.get("extra", {}).get("phase") == "lr-sweep"]
    unfinished = sorted(
        f"{r['variant']} seed {r['seed']} (iter {(r['history']['iter'] or [0])[-1]}"
        f"/{r['config']['iters']})"
        for r in records
        if not r.get("complete")
    )
    by_config: dict[str, list[RunRecord]] = {}
    for r in main:
        by_config.setdefault(r["variant"], []).append(r)
    known = {row["config"] for row in config_rows}
    rows: list[dict[str, Any]] = []
    described: list[tuple[str, dict[str, Any], int]] = []
    for row in config_rows + [
        {"config": n, "family": rs[0]["family"], "group": "custom", "budget": "", "tier": 9,
         "description": rs[0]["description"], "seeds_planned": len(rs)}
        for n, rs in by_config.items()
        if n not in known
    ]:  # fmt: skip
        # Seeds are pooled within one recipe only: a run of this config trained with
        # other settings gets a row of its own, labelled by what differs.
        groups = recipe_groups(by_config.get(row["config"], [])) or [[]]
        for i, group in enumerate(groups):
            out = dict(row)
            if i:
                label = recipe_label(recipe(group[0]), recipe(groups[0][0]))
                out.update(recipe=label, tier=9, seeds_planned=len(group))
            out.update(_numbers(sorted(group, key=lambda r: r["seed"])))
            if group:
                name = out["config"] + (f" [{out['recipe']}]" if i else "")
                described.append((name, recipe(group[0]), len(group)))
            rows.append(out)
    sweep_rows = []
    have = {(r["variant"], r["seed"]) for r in sweeps}
    for r in sorted(sweeps, key=lambda r: (r["family"], r["config"]["lr"])):
        sweep_rows.append(
            {
                "family": r["family"],
                "config": r.get("extra", {}).get("base_config", r["variant"]),
                "lr": float(r["config"]["lr"]),
                "iters": int(r["config"]["iters"]),
                "val_loss": final_score(r),
            }
        )
    best: dict[str, float] = {}
    for fam in dict.fromkeys(s["family"] for s in sweep_rows):
        mine = [s for s in sweep_rows if s["family"] == fam and s["val_loss"] is not None]
        if mine:
            best[fam] = min(mine, key=lambda s: s["val_loss"])["lr"]
    missing_main = [
        f"{row['config']} seed {s}"
        for row in rows
        if row["tier"] < 9 and "recipe" not in row
        for s in range(row["seeds_planned"])
        if s not in row["seeds_done"]
    ]
    env = records[0]["environment"] if records else {}
    return {
        "rows": rows,
        "sweep": sweep_rows,
        "best_lr": best,
        "missing_sweep": [f"{n} seed {s}" for n, s in sweep_expected if (n, s) not in have],
        "missing_main": missing_main,
        "unfinished": unfinished,
        "findings": _findings(rows),
        "diverged": [
            f"{r['variant']} seed {r['seed']} ({r['diverged'].get('reason')})"
            for r in complete
            if r.get("diverged")
        ],
        "study": study_facts(described, sweeps, records),
        "machine": {
            k: env.get(k) for k in ("processor", "cpu_count", "threads", "torch", "platform")
        },
        "git_shas": sorted({str(r["environment"].get("git_sha")) for r in records}),
        "runs": len(records),
        "complete_runs": len(complete),
    }


def _numbers(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """A table row's numbers from its runs (one config, one recipe): losses over the runs
    with a finite loss, the diverged ones named apart."""
    out: dict[str, Any] = {"seeds_done": [r["seed"] for r in runs]}
    ok = [r for r in runs if final_score(r) is not None]
    diverged = [r["seed"] for r in runs if r.get("diverged")]
    if diverged:
        out["seeds_diverged"] = diverged
    if not runs:
        return out
    r0 = runs[0]
    timed = ok or runs
    out.update(
        lr=float(r0["config"]["lr"]),
        attn_weights=_group_weights(r0, "attn"),
        mlp_weights=_group_weights(r0, "mlp"),
        block_weights=int(r0["block_weights"]),
        parameters=int(r0["parameters"]),
        flops_per_token=int(r0["flops_per_token"]),
        step_seconds=statistics.median(float(r["final"]["step_seconds"]) for r in timed),
        train_seconds=statistics.median(float(r["final"]["train_seconds"]) for r in timed),
        tokens_per_s=statistics.median(float(r["final"]["tokens_per_s"]) for r in timed),
        n_embd=int(r0["spec"]["n_embd"]),
    )
    if ok:
        losses = [float(final_score(r)) for r in ok]  # type: ignore[arg-type]
        mean, std = _mean_std(losses)
        out.update(
            val_losses=losses,
            val_mean=mean,
            val_std=std,
            val_fixed_mean=statistics.fmean(float(r["final"]["val_loss"]) for r in ok),
        )
    # Keys in the order the summary has always had them.
    order = ("seeds_done", "lr", "attn_weights", "mlp_weights", "block_weights", "parameters",
             "flops_per_token", "step_seconds", "train_seconds", "tokens_per_s", "val_losses",
             "val_mean", "val_std", "val_fixed_mean", "n_embd")  # fmt: skip
    return {k: out[k] for k in (*order, "seeds_diverged") if k in out}


def _row(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The row of config ``name`` (its main recipe) when it has a finite loss."""
    for r in rows:
        if r["config"] == name and r.get("val_losses") and "recipe" not in r:
            return r
    return None


def _absent(rows: Sequence[dict[str, Any]], name: str) -> str:
    """Why config ``name`` has no loss to compare: every run diverged, or none ran."""
    for r in rows:
        if r["config"] == name and "recipe" not in r and r.get("seeds_diverged"):
            return f"{name}: every run diverged"
    return f"{name} missing"


def _fmt_cmp(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    c = compare(a["val_losses"], b["val_losses"])
    se = f", SE {c['se']:.3f}" if c["se"] is not None else ""
    n = f"n = {len(a['val_losses'])} vs {len(b['val_losses'])}"
    text = (
        f"{a['config']} {a['val_mean']:.3f} vs {b['config']} {b['val_mean']:.3f}: "
        f"gap {c['gap']:+.3f}{se} ({n}) -> {c['verdict']}"
    )
    return text, c


def _findings(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each finding: a question, the numbers, a verdict; with missing data said so."""
    out: list[dict[str, Any]] = []

    def add(question: str, a: str, b: str) -> None:
        ra, rb = _row(rows, a), _row(rows, b)
        if ra is None or rb is None:
            absent = ", ".join(_absent(rows, n) for n, r in ((a, ra), (b, rb)) if r is None)
            out.append({"question": question, "text": f"not measured yet ({absent})"})
            return
        text, c = _fmt_cmp(ra, rb)
        out.append({"question": question, "text": text, **c})

    for name in ("dense-recipe", "dense"):
        dense = _row(rows, name)
        if dense is None:
            continue
        gap = dense["val_mean"] - NANOGPT_ANCHOR
        out.append(
            {
                "question": f"{name} (lr {dense['lr']:g}) vs nanoGPT's 1.88 anchor",
                "text": f"{name} {dense['val_mean']:.3f} (full validation split; fixed batches "
                f"{dense['val_fixed_mean']:.3f}; n = {len(dense['val_losses'])}), "
                f"{gap:+.3f} vs 1.88",
                "gap": gap,
            }
        )
    for budget, kron, low, mon, narrow in (
        ("3.9%", "kron-mlp-k2-r4", "lowrank-mlp-r4", "monarch-mlp-b32", "narrow-mlp-h20"),
        ("7.8%", "kron-mlp-k2-r8", "lowrank-mlp-r8", "monarch-mlp-b16", "narrow-mlp-h40"),
    ):
        for base, what in ((low, "low-rank"), (mon, "Monarch"), (narrow, "narrower dense MLP")):
            add(f"MLP at {budget}: Kronecker vs {what}", kron, base)
        add(f"MLP at {budget}: Kronecker vs dense", kron, "dense")
    add(
        "whole model: Kronecker everywhere (R=4) vs dense n_embd 64", "kron-both-k2-r4", "dense-e64"
    )
    add("Kronecker MLP (R=4) vs dense n_embd 96 (more parameters)", "kron-mlp-k2-r4", "dense-e96")
    add("Kronecker MLP (R=4) vs dense n_embd 64 (fewer parameters)", "kron-mlp-k2-r4", "dense-e64")
    add("Kronecker in attention (R=4) vs dense", "kron-attn-k2-r4", "dense")
    add("Kronecker attention R=4 vs low-rank attention r=4", "kron-attn-k2-r4", "lowrank-attn-r4")
    add("Kronecker attention R=4 vs Monarch attention b=32", "kron-attn-k2-r4", "monarch-attn-b32")
    for lo, hi in (("r1", "r2"), ("r2", "r4"), ("r4", "r8"), ("r8", "r16"), ("r16", "r32")):
        add(
            f"Kronecker MLP rank {hi[1:]} vs rank {lo[1:]}",
            f"kron-mlp-k2-{hi}",
            f"kron-mlp-k2-{lo}",
        )
    add(
        "3 factors R=5 vs 2 factors R=1 (640 weights per layer each)",
        "kron-mlp-k3-r5",
        "kron-mlp-k2-r1",
    )
    out += _matched_compute(rows)
    return out


def _matched_compute(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Kronecker config against the best dense model (narrower MLP or narrower
    model, at dense's rate) that costs no more forward FLOPs per token."""
    out: list[dict[str, Any]] = []
    rows = [r for r in rows if "recipe" not in r]  # each config's main recipe
    dense = [
        r
        for r in rows
        if r.get("val_losses")
        and r["family"] in ("dense", "narrow")
        and r["config"] != "dense-recipe"
    ]
    for k in rows:
        if not (k.get("val_losses") and k["family"] == "kron"):
            continue
        cheaper = [d for d in dense if d["flops_per_token"] <= k["flops_per_token"]]
        question = (
            f"matched compute: {k['config']} ({k['flops_per_token'] / 1e6:.2f}M FLOPs/token) "
            "vs the best dense model with no more FLOPs"
        )
        if not cheaper:
            out.append({"question": question, "text": "no dense model that cheap was run"})
            continue
        best = min(cheaper, key=lambda d: d["val_mean"])
        text, c = _fmt_cmp(k, best)
        out.append(
            {
                "question": question,
                "text": f"{text}; {best['config']} "
                f"{best['flops_per_token'] / 1e6:.2f}M FLOPs/token",
                **c,
            }
        )
    return out


def _f(x: Any, spec: str, none: str = "—") -> str:
    return none if x is None else format(x, spec)


def report_markdown(summary: dict[str, Any]) -> str:
    """``results.md``: what was measured, the table, the sweep, the findings, what's missing."""
    bench: dict[str, float] = summary.get("step_bench") or {}
    m = summary["machine"]
    study = summary["study"]
    recipe_text, side_by_side, sessions_text = describe_study(study)
    biases = "none in this recipe" if study["biases"] == [False] else "not counted"
    lines = [
        "# Kronecker layers in a character-level GPT (Tiny Shakespeare)",
        "",
        f"Generated by `torchkron lm report` from the run files in `runs/` alone. {recipe_text}",
        "",
        f"Machine: {m.get('processor')}, {m.get('cpu_count')} cores, "
        f"{m.get('threads')} thread(s) per run, {side_by_side}, torch {m.get('torch')}; "
        f"{sessions_text}",
        f"Runs: {summary['complete_runs']} complete of {summary['runs']} run files.",
        "",
        "## Table",
        "",
        f"Weights = stored weights of the block linears (biases: {biases}); "
        "params = every trainable number (embedding tied to the head). FLOPs = forward "
        "FLOPs per token (matmuls as executed, attention over the full context, head; a "
        "training step costs about 3x that for every structure). "
        "Step = median training seconds per step over seeds, as each run measured it under its "
        "session's load; bench = `torchkron lm bench`'s step time with every config timed side "
        "by side in one process ([step_bench.md](step_bench.md)), the one to compare.",
        "",
        "| config | structure | lr | attn weights | MLP weights | params | FLOPs/token | "
        "step (s) | bench (s) | val loss (mean ± std) | seeds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in summary["rows"]:
        name = r["config"] + (f" [{r['recipe']}]" if "recipe" in r else "")
        if not r["seeds_done"]:
            lines.append(
                f"| {name} | {r['description']} | | | | | | | not run yet | "
                f"0/{r['seeds_planned']} |"
            )
            continue
        diverged = r.get("seeds_diverged", [])
        seeds = f"{len(r.get('val_losses', []))}/{r['seeds_planned']}"
        if diverged:
            seeds += f" ({len(diverged)} diverged)"
        loss = "diverged"
        if r.get("val_losses"):
            std = f" ± {r['val_std']:.3f}" if r["val_std"] is not None else ""
            loss = f"{r['val_mean']:.3f}{std}"
        bench_s = _f(bench.get(r["config"]), ".3f") if "recipe" not in r else "—"
        lines.append(
            f"| {name} | {r['description']} | {r['lr']:g} | {r['attn_weights']:,} | "
            f"{r['mlp_weights']:,} | {r['parameters']:,} | {r['flops_per_token'] / 1e6:.2f}M | "
            f"{r['step_seconds']:.3f} | {bench_s} | {loss} | {seeds} |"
        )
    if any("recipe" in r for r in summary["rows"]):
        lines += [
            "",
            "A config whose runs were trained with different recipes has a row per recipe; "
            "[...] names the settings where a row differs from the config's first row. Only "
            "the first row enters the findings.",
        ]
    if summary["diverged"]:
        lines += [
            "",
            f"Diverged runs, excluded from the means ({len(summary['diverged'])}): "
            + "; ".join(summary["diverged"])
            + ".",
        ]
    heading = "## Learning-rate sweep"
    if study["sweep_iters"]:
        seeds = ", ".join(str(i) for i in study["sweep_seeds"])
        word = "seed" if len(study["sweep_seeds"]) == 1 else "seeds"
        its = " or ".join(str(i) for i in study["sweep_iters"])
        heading += f" ({word} {seeds}, {its} iterations)"
    lines += ["", heading, ""]
    if summary["sweep"]:
        lines += [
            "A family whose best rate is at an end of the grid is swept again at half "
            "(or twice) that rate, up to twice (`--lr-extend`).",
            "",
        ]
        lines += ["| family | config | lr | val loss | |", "|---|---|---|---|---|"]
        for s in summary["sweep"]:
            mark = "best" if summary["best_lr"].get(s["family"]) == s["lr"] else ""
            loss = "diverged" if s["val_loss"] is None else f"{s['val_loss']:.3f}"
            lines.append(f"| {s['family']} | {s['config']} | {s['lr']:g} | {loss} | {mark} |")
        edges = []
        for fam, lr in summary["best_lr"].items():
            rates = [s["lr"] for s in summary["sweep"] if s["family"] == fam]
            if len(rates) > 1 and lr == max(rates):
                edges.append(f"{fam} (highest rate: a higher one might be better still)")
            elif len(rates) > 1 and lr == min(rates):
                edges.append(f"{fam} (lowest rate: a lower one might be better still)")
        if edges:
            lines += ["", f"Best at an end of the grid: {'; '.join(edges)}."]
    else:
        lines.append("No sweep run finished yet.")
    lines += [
        "",
        "## Findings",
        "",
        f"Criterion: a gap between two configs' mean validation losses counts as beyond seed "
        f"noise when it exceeds {SE_FACTOR:g} standard errors of the difference "
        "(sqrt(s_a^2/n_a + s_b^2/n_b)), with at least 2 seeds each; 'lower' means the "
        "first config is better.",
        "",
    ]
    for f in summary["findings"]:
        lines.append(f"- **{f['question']}**: {f['text']}")
    lines += [
        "",
        "![validation loss vs parameters](frontier_params.png)",
        "![validation loss vs training time](frontier_time.png)",
        "",
        "## Not (yet) measured",
        "",
    ]
    miss = summary["missing_sweep"] + summary["missing_main"]
    lines.append(f"Missing runs ({len(miss)}): " + (", ".join(miss) if miss else "none") + ".")
    if summary["unfinished"]:
        lines.append(f"Unfinished (interrupted) runs: {', '.join(summary['unfinished'])}.")
    lines.append(f"Code: git {', '.join(summary['git_shas'])}.")
    return "\n".join(lines) + "\n"


def _plot(summary: dict[str, Any], x_key: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"dense": "s", "narrow": "D", "kron": "o", "lowrank": "^", "monarch": "v"}
    for fam in dict.fromkeys(r["family"] for r in summary["rows"]):
        rows = [r for r in summary["rows"] if r["family"] == fam and r.get("val_losses")]
        if not rows:
            continue
        xs = [r[x_key] for r in rows]
        ys = [r["val_mean"] for r in rows]
        es = [r["val_std"] or 0.0 for r in rows]
        ax.errorbar(xs, ys, yerr=es, fmt=markers.get(fam, "x"), label=fam, capsize=3)
        for r in rows:
            ax.annotate(r["config"], (r[x_key], r["val_mean"]), fontsize=6, alpha=0.8,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.axhline(NANOGPT_ANCHOR, color="grey", ls=":", lw=1, label="nanoGPT 1.88")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss (nats/char, full split)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def load_step_bench(out_dir: Path) -> dict[str, float]:
    """Seconds per step by config from ``OUT/step_bench.json`` (``lm bench``), if any."""
    path = out_dir / "step_bench.json"
    if not path.exists():
        return {}
    try:
        rows = json.loads(path.read_text())["rows"]
        return {str(r["config"]): float(r["step_seconds"]) for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path} is not a step benchmark file ({exc}); rerun `torchkron lm bench` or delete it."
        ) from exc


def write_report(out_dir: Path, *, plots: bool = True) -> list[Path]:
    """Write ``summary.json``, ``results.md`` and (with ``plots``) the two frontier PNGs."""
    summary = summarize(load_lm_runs(out_dir))
    summary["step_bench"] = load_step_bench(out_dir)
    paths = [out_dir / "summary.json", out_dir / "results.md"]
    atomic_write_json(paths[0], summary)
    atomic_write_text(paths[1], report_markdown(summary))
    if plots and any(r.get("val_losses") for r in summary["rows"]):
        p1, p2 = out_dir / "frontier_params.png", out_dir / "frontier_time.png"
        _plot(summary, "parameters", "trainable parameters (log)", p1)
        _plot(summary, "train_seconds", "training time, s (median over seeds, log)", p2)
        paths += [p1, p2]
    return paths


def summary_text(summary: dict[str, Any]) -> str:
    return json.dumps(summary["findings"], indent=2)
