"""The result files of a suite: their names, JSON and markdown."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from torchkron.experiments.bench.format import fmt_bytes, fmt_time
from torchkron.experiments.bench.shapes import GRAPH_MODES, MODES
from torchkron.experiments.common.environment import device_name

__all__ = ["default_out", "markdown", "result_stem", "write_results"]


def _slug(text: str) -> str:
    out = "".join(ch.lower() if ch.isalnum() else "-" for ch in text)
    return "-".join(p for p in out.split("-") if p)


def result_stem(device: torch.device, quick: bool, tag: str | None = None) -> str:
    """``bench-cpu`` or ``bench-cuda-<card>``, with ``-quick`` / ``-<tag>`` suffixes."""
    if device.type == "cpu":
        stem = "bench-cpu"
    else:
        stem = f"bench-{device.type}-{_slug(device_name(device))}"
    if tag:
        stem += f"-{_slug(tag)}"
    return stem + ("-quick" if quick else "")


def markdown(doc: dict[str, Any]) -> str:
    """Human-readable tables of a suite's JSON document."""
    env = doc["environment"]
    cfg = doc["config"]
    title = f"# torchkron benchmark: {env['device']} ({env['device_name']})"
    if doc["config"].get("tag"):
        title += f", {doc['config']['tag']}"
    lines = [
        title,
        "",
        f"- device: {env['device']} ({env['device_name']}), {env['threads']} threads, "
        f"{env['cpu_count']} CPUs",
        f"- torch {env['torch']}, python {env['python']}, git {env['git_sha']}",
        f"- pyfastkron {env.get('pyfastkron')}, tensorly-torch {env.get('tltorch')}",
        f"- {doc['started_at']} .. {doc['finished_at']}; medians of {cfg['rounds']} "
        f"interleaved rounds of {_timer_text(cfg)}",
        *(
            [
                "- `*_graph` modes: the same step captured once as a CUDA graph and replayed "
                "(no Python or launch overhead)"
            ]
            if cfg.get("graphs")
            else []
        ),
        *(
            [f"- time budget {cfg['budget_s']:g} s: pairs not reached are listed as skipped"]
            if cfg.get("budget_s") is not None
            else []
        ),
        *([f"- note: {doc['note']}"] if doc.get("note") else []),
        *(
            [
                "- impl='auto' cost model constants: "
                + ", ".join(f"{k} {v:.3g}" for k, v in cal.items() if k != "file")
                + (f" (calibrated: `{cal['file']}`)" if cal.get("file") else " (defaults)")
            ]
            if (cal := doc.get("calibration"))
            else []
        ),
        "- `xdense`: nn.Linear's time / this time; `xbest`: fastest contender's time / this "
        "time (1.00 = fastest); GFLOP/s against each formulation's own FLOP count "
        f"({cfg['train_flops']} for train).",
        "",
    ]
    if doc.get("goals"):
        lines += ["## Goals", "", "| goal | shape | dtype | mode | value | met |"]
        lines.append("|---|---|---|---|---|---|")
        for g in doc["goals"]:
            value = g["value"]
            shown = fmt_bytes(value) if "memory" in g["goal"] else f"{value:.2f}"
            if "best" in g:
                shown += f" (best: {g['best']})"
            if "pick" in g:
                shown += f" (auto: {g['pick']})"
            lines.append(
                f"| {g['goal']} | {g['shape']} | {g['dtype']} | {g.get('mode', 'train')} | "
                f"{shown} | {'yes' if g['met'] else '**no**'} |"
            )
        lines.append("")
    shapes = {s["name"]: s for s in doc["shapes"]}
    for dtype in cfg["dtypes"]:
        for mode in MODES + GRAPH_MODES:
            rows = [r for r in doc["results"] if r["dtype"] == dtype and r["mode"] == mode]
            if not rows:
                continue
            lines += [
                f"## {dtype}, {mode}",
                "",
                "| shape | contender | time | xdense | xbest | GFLOP/s | notes |",
                "|---|---|---:|---:|---:|---:|---|",
            ]
            for name in shapes:
                for r in (r for r in rows if r["shape"] == name):
                    if r["status"] != "ok":
                        lines.append(
                            f"| {name} | {r['contender']} | {r['status']} | | | | {r['reason']} |"
                        )
                        continue
                    notes = [r.get("note") or ""]
                    if "auto_impl" in r:
                        notes.append(f"auto: {r['auto_impl']}")
                    if "peak_step_bytes" in r:
                        peak = r["peak_step_bytes"] + r["resident_bytes"]
                        notes.append(f"peak memory {fmt_bytes(peak)}")
                    dense = f"{r['ratio_vs_dense']:.2f}" if r.get("ratio_vs_dense") else "-"
                    lines.append(
                        f"| {name} | {r['contender']} | {fmt_time(r['median_s'])} | {dense} | "
                        f"{r['ratio_vs_best']:.2f} | {r['gflops_per_s']:.1f} | "
                        f"{'; '.join(n for n in notes if n)} |"
                    )
            lines.append("")
    if doc.get("skipped_dtypes"):
        lines += ["## Skipped dtypes", ""]
        lines += [f"- {d}: {why}" for d, why in doc["skipped_dtypes"].items()]
        lines.append("")
    lines += ["## Shapes", ""]
    for s in doc["shapes"]:
        lines.append(
            f"- `{s['name']}`: {s['in_features']}->{s['out_features']}, factors "
            f"{' (x) '.join(f'{o}x{n}' for o, n in s['factors'])}, R={s['rank']}, batch "
            f"{s['batch']}; FLOPs/row dense {s['dense_flops_per_row']:,}, Kronecker "
            f"{s['kron_flops_per_row']:,}; {s['kron_parameters']:,} factor weights"
        )
    return "\n".join(lines) + "\n"


def _timer_text(cfg: dict[str, Any]) -> str:
    """How the suite timed (files without ``timer`` used blocked_autorange)."""
    if cfg.get("timer") == "events":
        return (
            f"blocks of back-to-back calls between two CUDA events "
            f"(about {cfg['min_run_time_s']} s per measurement)"
        )
    return f"`blocked_autorange(min_run_time={cfg['min_run_time_s']})`"


def write_results(doc: dict[str, Any], out: Path, stem: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    for path, text in ((json_path, json.dumps(doc, indent=2) + "\n"), (md_path, markdown(doc))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return json_path, md_path


def default_out() -> Path:
    """Where results go without ``--out``: a scratch folder, never the committed results."""
    return Path(tempfile.gettempdir()) / "torchkron-bench"
