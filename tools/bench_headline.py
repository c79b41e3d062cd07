"""Condense benchmark result files into the headline table the README shows.

    python tools/bench_headline.py benchmarks/results/bench-cpu.json \
        benchmarks/results/bench-cuda-nvidia-h200.json > benchmarks/results/headline.md

One row per (device, dtype, shape) of the training step and the forward pass: dense,
the fastest non-torchkron contender, KronLinear, and KronLinear's speed-up over each.
A pure function of the JSON files (``make readme`` runs it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OTHERS = ("materialize", "pyfastkron", "tltorch")


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def headline(doc: dict[str, Any]) -> list[str]:
    env = doc["environment"]
    device, name = env.get("device"), env.get("device_name")
    where = f"{name} ({device}), {env.get('threads')} threads, torch {env.get('torch')}"
    lines = [
        f"**{where}**",
        "",
        "| shape | dtype | mode | nn.Linear | best other | KronLinear "
        "| vs nn.Linear | vs best other |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    table: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in doc["results"]:
        if r.get("status") == "ok":
            table.setdefault((r["shape"], r["dtype"], r["mode"]), {})[r["contender"]] = r[
                "median_s"
            ]
    for (shape, dtype, mode), t in table.items():
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


def main(argv: list[str]) -> int:
    out = ["# Benchmark headline", ""]
    for path in argv:
        out += headline(json.loads(Path(path).read_text()))
        out.append("")
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
