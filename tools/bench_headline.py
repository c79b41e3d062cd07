"""Condense benchmark result files into the headline tables the docs show.

    python tools/bench_headline.py benchmarks/results/bench-cpu.json \
        benchmarks/results/bench-cuda-nvidia-h200.json > benchmarks/results/headline.md

One row per (device, dtype, shape) of the training step and the forward pass: dense,
the fastest non-torchkron contender, KronLinear, and KronLinear's speed-up over each.
``speed_summary`` is the README's one table: the float32 training step on each machine.
Pure functions of the JSON files (``make readme`` runs them through sync_readme.py).
Smoke runs (``bench --quick``, files ending in ``-quick.json``) are never shown.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OTHERS = ("materialize", "pyfastkron", "tltorch")
# The README's speed table: the reference CPU run (the 2-core development machine) and
# the reference GPU run, both full suites. Other bench files appear in docs/speed.md.
SUMMARY_FILES = ("bench-cpu.json", "bench-cuda-nvidia-h200.json")


def is_smoke(path: Path, doc: dict[str, Any] | None = None) -> bool:
    """A ``bench --quick`` run: tiny shapes, not a result."""
    quick = bool(doc and doc.get("config", {}).get("quick"))
    return quick or path.stem.endswith("-quick")


def result_files(folder: Path = RESULTS) -> list[Path]:
    """The full-suite ``bench-*.json`` files of ``folder``, CPU first, then by name."""
    files = [p for p in sorted(folder.glob("bench-*.json")) if not is_smoke(p)]
    return sorted(files, key=lambda p: (p.stem != "bench-cpu", p.name))


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def _where(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    device, name = env.get("device"), env.get("device_name")
    return f"{name} ({device}), {env.get('threads')} threads, torch {env.get('torch')}"


Cells = dict[tuple[str, str, str], dict[str, Any]]


def _table(doc: dict[str, Any]) -> Cells:
    """``{(shape, dtype, mode): {contender: median seconds}}``."""
    table: Cells = {}
    for r in doc["results"]:
        if r.get("status") == "ok":
            table.setdefault((r["shape"], r["dtype"], r["mode"]), {})[r["contender"]] = r[
                "median_s"
            ]
    return table


def headline(doc: dict[str, Any]) -> list[str]:
    lines = [
        f"**{_where(doc)}**",
        "",
        "| shape | dtype | mode | nn.Linear | best other | KronLinear "
        "| vs nn.Linear | vs best other |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for (shape, dtype, mode), t in _table(doc).items():
        others = {k: v for k, v in t.items() if k in OTHERS}
        best_name = min(others, key=lambda k: others[k]) if others else None
        best = others.get(best_name) if best_name else None
        kron, dense = t.get("KronLinear"), t.get("dense")
        best_cell = f"{best_name} {_fmt(best)}" if best_name else "-"
        lines.append(
            f"| {shape} | {dtype} | {mode} | {_fmt(dense)} | {best_cell} | {_fmt(kron)} | "
            f"{_ratio(dense, kron)} | {_ratio(best, kron)} |"
        )
    return lines


def headline_text(paths: Iterable[Path]) -> str:
    """The whole ``headline.md`` for these bench files (smoke runs left out)."""
    out = ["# Benchmark headline", ""]
    for path in paths:
        doc = json.loads(Path(path).read_text())
        if is_smoke(Path(path), doc):
            continue
        out += headline(doc)
        out.append("")
    return "\n".join(out)


def _shape_label(shape: dict[str, Any]) -> str:
    factors = " (x) ".join(f"{o}x{i}" for o, i in shape["factors"])
    rank = f", rank {shape['rank']}" if shape.get("rank", 1) != 1 else ""
    size = f"{shape['in_features']} -> {shape['out_features']}"
    return f"{size}, {factors}{rank}, batch {shape['batch']}"


def speed_summary(paths: Sequence[Path]) -> str:
    """One float32 training-step row per shape: nn.Linear vs KronLinear on each machine.

    Columns per machine: nn.Linear, KronLinear, KronLinear's speed-up (peak memory is in
    the full tables of docs/speed.md).
    """
    docs = [json.loads(p.read_text()) for p in paths if p.exists()]
    docs = [d for p, d in zip(paths, docs, strict=False) if not is_smoke(p, d)]
    if not docs:
        return "_No benchmark results found._\n"
    shapes = {s["name"]: s for s in docs[0]["shapes"]}
    times = [_table(d) for d in docs]
    labels = ["CPU" if d["environment"].get("device") == "cpu" else "GPU" for d in docs]
    head = ["layer"]
    for label in labels:
        head += [f"{label} nn.Linear", f"{label} KronLinear", f"{label} speed-up"]
    machines = "; ".join(
        f"{label}: {d['environment'].get('device_name')}, {d['environment'].get('threads')} "
        f"threads, torch {d['environment'].get('torch')}"
        for label, d in zip(labels, docs, strict=True)
    )
    lines = [
        "Training step (forward + backward into the input and every parameter), float32, "
        f"median of `torch.utils.benchmark` rounds. {machines}.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for name, shape in shapes.items():
        row = [_shape_label(shape)]
        for t in times:
            cell = t.get((name, "float32", "train"), {})
            dense, kron = cell.get("dense"), cell.get("KronLinear")
            row += [_fmt(dense), _fmt(kron), _ratio(dense, kron)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "`-`: nn.Linear not run (its weight would take "
        + ", ".join(
            f"{s['in_features'] * s['out_features'] * 4 / 2**30:.0f} GiB"
            for s in shapes.values()
            if not s.get("dense", True)
        )
        + "). Speed-up > 1: KronLinear faster.",
        "",
    ]
    for label, t in zip(labels, times, strict=True):
        cells = {n: t.get((n, "float32", "train"), {}) for n in shapes}
        ran = [n for n, c in cells.items() if "dense" in c and "KronLinear" in c]
        wins = [n for n in ran if cells[n]["dense"] > cells[n]["KronLinear"]]
        which = (
            ": " + "; ".join(_shape_label(shapes[n]) for n in wins)
            if 0 < len(wins) <= 2 and len(wins) < len(ran)  # more: the table says which
            else ""
        )
        lines.append(
            f"- {label}: KronLinear's training step is faster than nn.Linear at {len(wins)} of "
            f"the {len(ran)} shapes both ran{which}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    sys.stdout.write(headline_text(Path(a) for a in argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
