"""Small generated views of result files that no single result file holds as text.

Each view is a pure function of committed result files returning Markdown; the pages
embed them as ``<!-- generated:view:NAME -->`` blocks (see sync_readme.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "results" / "mnist"
LM_V2 = ROOT / "results" / "lm-v2"


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``8 min 01 s`` or ``12.3 s`` (as results.md writes durations)."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def complete_session(folder: Path = MNIST) -> dict[str, Any] | None:
    """The last reproduce session that trained the whole experiment in one go.

    A session that resumed (``--resume`` in its command, or marked ``resumed``/not
    ``complete`` by the runner) timed only part of the work, so it is not a
    reproduction's wall time.
    """
    sessions = _load(folder / "sessions.json") or []
    full = [
        s
        for s in sessions
        if isinstance(s, dict)
        and "--resume" not in str(s.get("command", "")).split()
        and not s.get("resumed", False)
        and s.get("complete", True)
        and s.get("runs")
    ]
    return full[-1] if full else None


def reproduce_time(folder: Path = MNIST) -> str:
    """One sentence: how long ``make reproduce`` took, on which machine."""
    session = complete_session(folder)
    if session is None:
        return "_No complete reproduce session is recorded in `results/mnist/sessions.json`._\n"
    env = session.get("environment", {})
    summary = _load(folder / "summary.json") or {}
    variants = summary.get("variants") or []
    shape = ""
    if variants:
        seeds = {v.get("runs") for v in variants}
        epochs = {v.get("epochs") for v in variants}
        if len(seeds) == 1 and len(epochs) == 1:
            shape = f" ({len(variants)} variants x {seeds.pop()} seeds x {epochs.pop()} epochs)"
    day = str(session.get("started_at", ""))[:10]
    return (
        f"`make reproduce` took **{format_duration(float(session['wall_seconds']))}** of wall "
        f"time for {session['runs']} runs{shape} on a {env.get('cpu_count')}-core machine "
        f"({env.get('processor')}, {session.get('workers')} worker processes, torch "
        f"{env.get('torch')}), measured {day} (`results/mnist/sessions.json`).\n"
    )


# The ``torchkron plan`` runs that docs/frontier.md shows, output and all.
PLAN_EXAMPLES = (("784", "625", "--factors", "4"), ("13", "16"))


def plan_examples() -> str:
    """The output of each ``PLAN_EXAMPLES`` command, run in-process, as a console block."""
    import contextlib
    import io
    import sys

    sys.path.insert(0, str(ROOT / "src"))
    from torchkron.experiments.cli import main

    lines = ["```console"]
    for args in PLAN_EXAMPLES:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["plan", *args])
        if status != 0:
            raise RuntimeError(f"torchkron plan {' '.join(args)} exited {status}")
        lines += [
            f"$ torchkron plan {' '.join(args)}",
            *out.getvalue().rstrip("\n").split("\n"),
            "",
        ]
    lines[-1] = "```"
    return "\n".join(lines) + "\n"


#: The README's GPT table: its columns (structure families) and rows (replaced linears).
_LM_COLUMNS = (("kron", "Kronecker"), ("lowrank", "low-rank"), ("monarch", "Monarch"),
               ("narrow", "narrower dense"))  # fmt: skip
_LM_ROWS = (("mlp", "b4", "MLP"), ("mlp", "b8", "MLP"), ("attn", "b4", "attention"))


def _lm_cell(r: dict[str, Any] | None) -> str:
    if r is None or not r.get("val_losses"):
        return "—"
    std = f" ± {r['val_std']:.3f}" if r.get("val_std") is not None else ""
    n = len(r["val_losses"])
    return f"{r['val_mean']:.3f}{std}" + ("" if n == 3 else f" ({n} seed{'s' if n > 1 else ''})")


#: The README's GPT findings from study v2, by question prefix (each with its v1 gap).
LM_V2_FINDINGS = (
    "MLP at 3.9%: Kronecker vs dense",
    "MLP at 3.9%: Kronecker vs narrower",
    "MLP at 3.9%: Kronecker vs Monarch",
    "MLP at 7.8%: Kronecker vs dense",
    "Kronecker MLP (R=4) vs dense n_embd",
    "Kronecker in attention",
    "equal compute",
    "Kronecker MLP (R=4): factors with vs without",
    "low-rank MLP (r=4): factors with vs without",
)


def _gap(c: dict[str, Any]) -> str:
    if not c.get("measured"):
        return "not measured"
    se = f", SE {c['se']:.3f}" if c.get("se") is not None else ""
    return f"{c['gap']:+.3f}{se}, {c['verdict']}"


def lm_v2_headline(folder: Path = LM_V2) -> str:
    """The README's view of the GPT study: study v2 (dense parameters at dense's rate,
    factors at their structure-aware rate) with the first study's number beside each
    cell, the reference models and the headline findings; measured numbers only."""
    summary = _load(folder / "summary.json")
    rows = [r for r in summary["rows"] if r.get("val_losses")]
    v1 = {r["config"]: r for r in summary["first_study_rows"] if r.get("val_losses")}
    m = summary["machine"]
    lines = [
        "Validation loss (nats/char, whole split, mean ± std over 3 seeds unless marked); "
        "study v2, with the first study (one rate per model) in brackets; "
        f"{m['processor']}, {m['cpu_count']} cores, torch {m['torch']}; "
        f"{summary['runs']} + {summary['first_study_runs']} runs.",
        "",
        "| replaced linears, weights kept | " + " | ".join(c for _, c in _LM_COLUMNS) + " |",
        "|---|" + "---|" * len(_LM_COLUMNS),
    ]
    for group, budget, label in _LM_ROWS:
        found = {r["family"]: r for r in rows if (r["group"], r["budget"]) == (group, budget)}
        if not found:
            continue
        budget_label = {"b4": "3.9%", "b8": "7.8%"}[budget] if group == "mlp" else "R=4"
        cells = []
        for family, _ in _LM_COLUMNS:
            r = found.get(family)
            old = v1.get(r["config"]) if r else None
            cells.append(_lm_cell(r) + (f" ({old['val_mean']:.3f})" if old else ""))
        lines.append(f"| {label}, {budget_label} | " + " | ".join(cells) + " |")
    refs = [r for r in rows if r["group"] in ("none", "model") or r["budget"] == "flops"]
    lines += [
        "",
        "References: "
        + "; ".join(f"{r['config']} ({r['parameters']:,} params) {_lm_cell(r)}" for r in refs)
        + ".",
        "",
    ]
    for prefix in LM_V2_FINDINGS:
        for f in summary["findings"]:
            if f["question"].startswith(prefix) and f["v2"].get("measured"):
                old = f" (v1: {_gap(f['v1'])})" if f["v1"].get("measured") else ""
                lines.append(f"- {f['question']}: {_gap(f['v2'])}{old}")
    return "\n".join(lines) + "\n"
