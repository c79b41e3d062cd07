"""The second GPT study's report (``torchkron lm report results/lm-v2``).

A pure function of two folders of run files: the second study's (structure-aware rates,
:mod:`torchkron.experiments.lm.schedule_v2`) and the first study's (one rate per model,
``results/lm``), which is shown beside it as a labelled section. It writes
``summary.json``, ``results.md`` (tables per budget, the base-rate sweep, the confound
table, every finding with its criterion, for both studies) and ``headline.md`` (the short
block README.md and docs/lm.md include). Missing runs are listed, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.files import atomic_write_json, atomic_write_text
from torchkron.experiments.common.runs import RunRecord
from torchkron.experiments.lm.describe import recipe_groups
from torchkron.experiments.lm.gpt import GPTSpec
from torchkron.experiments.lm.report import (
    SE_FACTOR,
    SEEDS,
    _fmt_cmp,
    _numbers,
    compare,
    load_lm_runs,
    summarize,
    write_report,
)
from torchkron.experiments.lm.schedule_v2 import NO_MULTIPLIER, study_configs_v2
from torchkron.experiments.lm.trainer import final_score

__all__ = ["report_v2_markdown", "summarize_v2", "write_any_report", "write_report_v2"]

#: The tables of the report: (title, configs), each compared with ``dense``.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "MLP linears at 3.9% of their dense weights",
        ("dense", "kron-mlp-k2-r4", "lowrank-mlp-r4", "monarch-mlp-b32", "narrow-mlp-h20"),
    ),
    (
        "MLP linears at 7.8% of their dense weights",
        ("dense", "kron-mlp-k2-r8", "lowrank-mlp-r8", "monarch-mlp-b16", "narrow-mlp-h40"),
    ),
    ("Kronecker in attention, the whole model narrower", ("dense", "kron-attn-k2-r4",
                                                          "dense-e64", "dense-e96")),
    ("Ablation at 3.9%: the factors without their multipliers", ("dense", "kron-mlp-k2-r4",
     "kron-mlp-k2-r4-nomult", "lowrank-mlp-r4", "lowrank-mlp-r4-nomult")),
)  # fmt: skip
#: Findings: (question, config a, config b); "WIDE" is the equal-compute config.
QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("MLP at 3.9%: Kronecker vs dense", "kron-mlp-k2-r4", "dense"),
    ("MLP at 3.9%: Kronecker vs low-rank", "kron-mlp-k2-r4", "lowrank-mlp-r4"),
    ("MLP at 3.9%: Kronecker vs Monarch", "kron-mlp-k2-r4", "monarch-mlp-b32"),
    ("MLP at 3.9%: Kronecker vs narrower dense MLP", "kron-mlp-k2-r4", "narrow-mlp-h20"),
    ("MLP at 7.8%: Kronecker vs dense", "kron-mlp-k2-r8", "dense"),
    ("MLP at 7.8%: Kronecker vs low-rank", "kron-mlp-k2-r8", "lowrank-mlp-r8"),
    ("MLP at 7.8%: Kronecker vs Monarch", "kron-mlp-k2-r8", "monarch-mlp-b16"),
    ("MLP at 7.8%: Kronecker vs narrower dense MLP", "kron-mlp-k2-r8", "narrow-mlp-h40"),
    ("Kronecker MLP (R=4) vs dense n_embd 64 (fewer parameters)", "kron-mlp-k2-r4", "dense-e64"),
    ("Kronecker MLP (R=4) vs dense n_embd 96 (more parameters)", "kron-mlp-k2-r4", "dense-e96"),
    ("Kronecker in attention (R=4) vs dense", "kron-attn-k2-r4", "dense"),
    ("equal compute: Kronecker MLP (R=4), widened to dense's FLOPs, vs dense", "WIDE", "dense"),
    ("Kronecker MLP (R=4): factors with vs without multipliers", "kron-mlp-k2-r4",
     "kron-mlp-k2-r4-nomult"),
    ("low-rank MLP (r=4): factors with vs without multipliers", "lowrank-mlp-r4",
     "lowrank-mlp-r4-nomult"),
)  # fmt: skip


def _base_spec(records: Sequence[RunRecord]) -> GPTSpec:
    """The reference model the study's configs were built from: the dense run's spec."""
    for r in records:
        if r.get("variant") == "dense" and isinstance(r.get("spec"), dict):
            return GPTSpec.from_dict(r["spec"])
    return GPTSpec()


def _rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per config of the second study (its most common recipe), then any other
    config found in the run files."""
    main = [
        r
        for r in records
        if r.get("complete") and r.get("final") and r.get("extra", {}).get("phase") == "main"
    ]
    by: dict[str, list[RunRecord]] = {}
    for r in main:
        by.setdefault(r["variant"], []).append(r)
    planned = study_configs_v2(_base_spec(records))
    meta = [
        {"config": c.name, "family": c.family, "group": c.group, "budget": c.budget,
         "description": c.description}
        for c in planned
    ] + [
        {"config": n, "family": rs[0]["family"], "group": "custom", "budget": "",
         "description": rs[0]["description"]}
        for n, rs in by.items()
        if n not in {c.name for c in planned}
    ]  # fmt: skip
    rows = []
    for m in meta:
        runs = (recipe_groups(by.get(m["config"], [])) or [[]])[0]
        row = {**m, "seeds_planned": SEEDS, **_numbers(sorted(runs, key=lambda r: r["seed"]))}
        if runs:
            row["dense_lr"] = float(runs[0]["config"].get("dense_lr") or row["lr"])
            row["n_head"] = int(runs[0]["spec"]["n_head"])
        rows.append(row)
    return rows


def _sweep(records: Sequence[RunRecord]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows = [
        {
            "family": r["family"],
            "config": r.get("extra", {}).get("base_config", r["variant"]),
            "lr": float(r["config"]["lr"]),
            "dense_lr": float(r["config"].get("dense_lr") or r["config"]["lr"]),
            "iters": int(r["config"]["iters"]),
            "val_loss": final_score(r),
        }
        for r in records
        if r.get("complete") and r.get("extra", {}).get("phase") == "lr-sweep"
    ]
    rows.sort(key=lambda s: (s["family"], s["lr"]))
    best: dict[str, float] = {}
    for fam in dict.fromkeys(s["family"] for s in rows):
        mine = [s for s in rows if s["family"] == fam and s["val_loss"] is not None]
        if mine:
            best[fam] = min(mine, key=lambda s: s["val_loss"])["lr"]
    return rows, best


def _get(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for r in rows:
        if r["config"] == name and r.get("val_losses"):
            return r
    return None


def _cmp(rows: Sequence[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """``a`` vs ``b`` in one study: means, gap, standard error, verdict (or why not)."""
    ra, rb = _get(rows, a), _get(rows, b)
    if ra is None or rb is None:
        missing = ", ".join(n for n, r in ((a, ra), (b, rb)) if r is None)
        return {"measured": False, "text": f"not measured (no finished run: {missing})"}
    text, c = _fmt_cmp(ra, rb)
    return {"measured": True, "text": text, **c}


def _wide(rows: Sequence[dict[str, Any]]) -> str:
    for r in rows:
        if r["budget"] == "flops":
            return str(r["config"])
    return "kron-mlp-k2-r4-e160"


def confound(v1: Sequence[dict[str, Any]], v2: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each config with structured layers: its gap to dense in each study, and the
    share of the first study's gap that the second removed, ``(gap1 - gap2) / gap1``
    (the part the one-rate setup, not the structure, explained; negative: the gap grew).
    Where the ablation ran (:data:`NO_MULTIPLIER`), also its gap (``gap_nomult``) and the
    share the dense rate alone removed (``explained_rate``): the confound proper."""
    ablation = {name.removesuffix("-nomult"): name for name in NO_MULTIPLIER.values()}
    out = []
    for r2 in v2:
        name = r2["config"]
        if r2["family"] not in ("kron", "lowrank", "monarch") or name == _wide(v2):
            continue
        g1, g2 = _cmp(v1, name, "dense"), _cmp(v2, name, "dense")
        row: dict[str, Any] = {"config": name, "gap_v1": g1.get("gap"), "gap_v2": g2.get("gap")}
        if g1.get("gap") is not None and g2.get("gap") is not None and g1["gap"] > 0:
            row["explained"] = (g1["gap"] - g2["gap"]) / g1["gap"]
        if name in ablation:
            g0 = _cmp(v2, ablation[name], "dense").get("gap")
            row["gap_nomult"] = g0
            if g0 is not None and g1.get("gap") is not None and g1["gap"] > 0:
                row["explained_rate"] = (g1["gap"] - g0) / g1["gap"]
        change = _cross(v1, v2, name)
        row["change"] = change.get("gap")
        row["change_verdict"] = change.get("verdict", "not measured")
        out.append(row)
    return out


def _cross(v1: Sequence[dict[str, Any]], v2: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """The same config, second study minus first."""
    a, b = _get(v2, name), _get(v1, name)
    if a is None or b is None:
        return {}
    return compare(a["val_losses"], b["val_losses"])


def summarize_v2(records: Sequence[RunRecord], first: Sequence[RunRecord]) -> dict[str, Any]:
    """The second study's numbers beside the first's (see the module docstring)."""
    rows = _rows(records)
    v1 = [r for r in summarize(first)["rows"] if "recipe" not in r]
    sweep, best = _sweep(records)
    wide = _wide(rows)
    findings = []
    for question, a, b in QUESTIONS:
        a = wide if a == "WIDE" else a
        findings.append({"question": question, "v2": _cmp(rows, a, b), "v1": _cmp(v1, a, b)})
    have = {(r["variant"], r["seed"]) for r in records if r.get("complete")}
    missing = [
        f"{row['config']} seed {s}"
        for row in rows
        if row["group"] != "custom"
        for s in range(SEEDS)
        if (row["config"], s) not in have
    ]
    env = records[0]["environment"] if records else {}
    return {
        "rows": rows,
        "first_study_rows": v1,
        "sweep": sweep,
        "best_lr": best,
        "dense_lr": sorted({row["dense_lr"] for row in rows if "dense_lr" in row}),
        "confound": confound(v1, rows),
        "findings": findings,
        "missing": missing,
        "unfinished": sorted(
            f"{r['variant']} seed {r['seed']}" for r in records if not r.get("complete")
        ),
        "diverged": sorted(
            f"{r['variant']} seed {r['seed']}" for r in records if r.get("diverged")
        ),
        "machine": {k: env.get(k) for k in ("processor", "cpu_count", "threads", "torch")},
        "git_shas": sorted({str(r["environment"].get("git_sha")) for r in records}),
        "runs": len(records),
        "first_study_runs": len(first),
    }


def _loss(r: dict[str, Any] | None) -> str:
    if r is None or not r.get("val_losses"):
        return "—"
    std = f" ± {r['val_std']:.3f}" if r.get("val_std") is not None else ""
    return f"{r['val_mean']:.3f}{std} (n={len(r['val_losses'])})"


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def _signed(x: Any) -> str:
    return "—" if x is None else f"{x:+.3f}"


def _table(summary: dict[str, Any], names: Sequence[str]) -> list[str]:
    rows, v1 = summary["rows"], summary["first_study_rows"]
    lines = [
        "| config | structure | base lr | params | FLOPs/token | v2 val loss | v1 val loss "
        "(lr) | v2 gap to dense | v1 gap to dense |",
        "|---|---|---|---:|---:|---|---|---:|---:|",
    ]
    for name in names:
        r2 = next((r for r in rows if r["config"] == name), None)
        r1 = _get(v1, name)
        if r2 is None:
            continue
        if "parameters" not in r2:
            lines.append(f"| {name} | {r2['description']} | | | | not run yet | {_loss(r1)} | | |")
            continue
        g2 = _cmp(rows, name, "dense").get("gap") if name != "dense" else None
        g1 = _cmp(v1, name, "dense").get("gap") if name != "dense" else None
        v1_lr = f" ({r1['lr']:g})" if r1 else ""
        lines.append(
            f"| {name} | {r2['description']} | {r2['lr']:g} | {r2['parameters']:,} | "
            f"{r2['flops_per_token'] / 1e6:.2f}M | {_loss(r2)} | {_loss(r1)}{v1_lr} | "
            f"{_signed(g2)} | {_signed(g1)} |"
        )
    return lines


def _criterion() -> str:
    return (
        f"Criterion (both studies): a gap between two configs' mean validation losses is "
        f"beyond seed noise when it exceeds {SE_FACTOR:g} standard errors of the difference "
        "(sqrt(s_a^2/n_a + s_b^2/n_b)), with at least 2 seeds each; 'lower' means the first "
        "config is better."
    )


def report_v2_markdown(summary: dict[str, Any]) -> str:
    """``results.md`` of the second study."""
    m = summary["machine"]
    dense_lr = ", ".join(f"{x:g}" for x in summary["dense_lr"]) or "—"
    wide = next((r for r in summary["rows"] if r["budget"] == "flops"), None)
    dense = _get(summary["rows"], "dense")
    lines = [
        "# The GPT study again: structure-aware learning rates (study v2)",
        "",
        "Generated by `torchkron lm report` from the run files in `runs/` and, for the "
        "first study, in its own folder. In the first study every parameter of a model "
        "trained at its structure family's best rate, so the dense attention, embeddings "
        "and norms of a Kronecker-MLP model trained at Kronecker's rate, not dense's. Here "
        f"every non-structured parameter trains at the dense rate ({dense_lr}, the first "
        "study's best dense rate, recorded in each run's config as `dense_lr`), and each "
        "factor of a structured layer at its family's swept base rate times its "
        "`torchkron.lr_multipliers` multiplier (docs/training.md). Everything else is the "
        "first study's recipe (nanoGPT shakespeare_char, 2000 steps, weight decay on every "
        "matrix and the embedding).",
        "",
        f"Machine: {m.get('processor')}, {m.get('cpu_count')} cores, {m.get('threads')} "
        f"thread(s) per run, torch {m.get('torch')}. Runs: {summary['runs']} run files "
        f"(first study: {summary['first_study_runs']}).",
        "",
    ]
    if wide is not None and "flops_per_token" in wide and dense is not None:
        ratio = wide["flops_per_token"] / dense["flops_per_token"]
        lines += [
            f"Equal compute: the Kronecker-MLP model (R=4) widened to n_embd "
            f"{wide['n_embd']} with {wide['n_head']} heads (dense: {dense['n_embd']}, "
            f"{dense['n_head']} heads; the head size kept) costs "
            f"{wide['flops_per_token']:,} forward FLOPs per token, {ratio:.3f}x dense's "
            f"{dense['flops_per_token']:,}: the width, in steps of one head, whose FLOPs "
            "are closest to dense's (training FLOPs are 3x forward for both).",
            "",
        ]
    lines += ["## Study v2 (structure-aware rates)", ""]
    for title, names in SECTIONS:
        lines += [f"### {title}", "", *_table(summary, names), ""]
    lines += ["### Equal compute", "", *_table(summary, ("dense", _wide(summary["rows"]))), ""]
    lines += ["### Base-rate sweep (seed 0)", ""]
    if summary["sweep"]:
        lines += ["| family | config | base lr | dense lr | iters | val loss | |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for s in summary["sweep"]:
            best = "best" if summary["best_lr"].get(s["family"]) == s["lr"] else ""
            loss = "diverged" if s["val_loss"] is None else f"{s['val_loss']:.3f}"
            lines.append(
                f"| {s['family']} | {s['config']} | {s['lr']:g} | {s['dense_lr']:g} | "
                f"{s['iters']} | {loss} | {best} |"
            )
    else:
        lines.append("No sweep run finished yet.")
    lines += [
        "",
        "### How much of each gap the confound explained",
        "",
        "Gap = the config's mean validation loss minus dense's, in each study; explained = "
        "(v1 gap - v2 gap) / v1 gap, the share of the first study's gap that training the "
        "dense parameters at dense's rate (and the factors at their multipliers) removed; "
        "change = the config's v2 mean minus its v1 mean, with the criterion below. The "
        "ablation (tier 4) splits the two parts of that change: gap without multipliers = "
        "the same model with every dense parameter at dense's rate but the factors at one "
        "swept rate, no multipliers; explained by the dense rate alone = (v1 gap - that "
        "gap) / v1 gap, the confound proper; the rest is the multipliers'.",
        "",
        "| config | v1 gap | v2 gap | explained | gap without multipliers | explained by the "
        "dense rate alone | change v2 - v1 | change verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in summary["confound"]:
        lines.append(
            f"| {c['config']} | {_signed(c['gap_v1'])} | {_signed(c['gap_v2'])} | "
            f"{_pct(c.get('explained'))} | {_signed(c.get('gap_nomult'))} | "
            f"{_pct(c.get('explained_rate'))} | {_signed(c['change'])} | "
            f"{c['change_verdict']} |"
        )
    lines += ["", "### Findings, each in both studies", "", _criterion(), ""]
    for f in summary["findings"]:
        lines.append(f"- **{f['question']}**: v2: {f['v2']['text']}; v1: {f['v1']['text']}")
    lines += ["", "## Study v1 (one rate per model), from its run files", ""]
    lines += _v1_table(summary["first_study_rows"])
    lines += ["", "## Not (yet) measured", ""]
    miss = summary["missing"]
    lines.append(f"Missing runs ({len(miss)}): " + (", ".join(miss) if miss else "none") + ".")
    if summary["unfinished"]:
        lines.append(f"Unfinished (interrupted) runs: {', '.join(summary['unfinished'])}.")
    if summary["diverged"]:
        lines.append(f"Diverged runs: {', '.join(summary['diverged'])}.")
    lines.append(f"Code: git {', '.join(summary['git_shas']) or '—'}.")
    return "\n".join(lines) + "\n"


def _v1_table(v1: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| config | structure | lr (every parameter) | val loss |", "|---|---|---|---|"]
    for r in v1:
        if r.get("val_losses"):
            lines.append(f"| {r['config']} | {r['description']} | {r['lr']:g} | {_loss(r)} |")
    return lines


def headline_markdown(summary: dict[str, Any]) -> str:
    """``headline.md``: the block README.md and docs/lm.md include (generated)."""
    lines = [
        "# GPT study v2 headline",
        "",
        "Generated by `torchkron lm report results/lm-v2` (run files of both studies). "
        "Validation loss, nats/char, mean ± std over seeds; v1 = one rate per model, "
        "v2 = dense parameters at dense's rate, factors at their structure-aware rate.",
        "",
        "| config | v2 | v1 | gap to dense v2 | gap to dense v1 | confound explained |",
        "|---|---|---|---:|---:|---:|",
    ]
    conf = {c["config"]: c for c in summary["confound"]}
    for r in summary["rows"]:
        if r["group"] == "custom":
            continue
        r1 = _get(summary["first_study_rows"], r["config"])
        c = conf.get(r["config"], {})
        g2 = _cmp(summary["rows"], r["config"], "dense").get("gap")
        g1 = _cmp(summary["first_study_rows"], r["config"], "dense").get("gap")
        if r["config"] == "dense":
            g1 = g2 = None
        lines.append(
            f"| {r['config']} | {_loss(r)} | {_loss(r1)} | {_signed(g2)} | {_signed(g1)} | "
            f"{_pct(c.get('explained'))} |"
        )
    lines += ["", _criterion(), ""]
    for f in summary["findings"]:
        lines.append(f"- {f['question']}: v2 {_short(f['v2'])}; v1 {_short(f['v1'])}")
    return "\n".join(lines) + "\n"


def _short(c: dict[str, Any]) -> str:
    if not c.get("measured"):
        return "not measured"
    se = f", SE {c['se']:.3f}" if c.get("se") is not None else ""
    return f"gap {c['gap']:+.3f}{se}, {c['verdict']}"


def write_report_v2(out_dir: Path, first: Path) -> list[Path]:
    """Write ``summary.json``, ``results.md`` and ``headline.md`` of the second study."""
    summary = summarize_v2(load_lm_runs(out_dir), load_lm_runs(first))
    paths = [out_dir / "summary.json", out_dir / "results.md", out_dir / "headline.md"]
    atomic_write_json(paths[0], summary)
    atomic_write_text(paths[1], report_v2_markdown(summary))
    atomic_write_text(paths[2], headline_markdown(summary))
    return paths


def write_any_report(out_dir: Path, *, plots: bool = True, first: Path | None = None) -> list[Path]:
    """The report a folder's run files call for: the second study's (run files with
    ``extra.study == "v2"``; the first study read from ``first``, default ``results/lm``)
    or the first study's (:func:`torchkron.experiments.lm.report.write_report`)."""
    if any(r.get("extra", {}).get("study") == "v2" for r in load_lm_runs(out_dir)):
        return write_report_v2(out_dir, first if first is not None else Path("results/lm"))
    return write_report(out_dir, plots=plots)
