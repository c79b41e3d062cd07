"""Time the MNIST harness: one training step and one evaluation pass of every variant.

    python benchmarks/harness.py [--threads 1] [--out benchmarks/results]

Each variant's training step (batch 64: gather, forward, loss, backward, the flat
Adadelta step, exactly as ``torchkron.experiments.mnist.trainer`` runs it) and its evaluation
pass over 10,000 test images (batch 1000) are timed with ``torch.utils.benchmark``
(medians). ``steps/epoch x step + eval`` predicts the seconds per epoch; the file also
reports the seconds per epoch and the wall time the last full reproduction recorded
(``results/mnist/summary.json``), measured the same way the README quotes them.
Random inputs stand in for MNIST: the time does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tbench

from torchkron.experiments.common.environment import environment
from torchkron.experiments.mnist.optim import FlatAdadelta
from torchkron.experiments.mnist.trainer import evaluate
from torchkron.experiments.mnist.variants import build_mlp, reproduction_variants

TRAIN, TEST, BATCH, TEST_BATCH = 60_000, 10_000, 64, 1000


def time_variant(name: str, min_run_time: float) -> dict[str, Any]:
    spec = next(s for s in reproduction_variants() if s.name == name)
    torch.manual_seed(0)
    model = build_mlp(spec)
    opt = FlatAdadelta(model.parameters())
    x_all, y_all = torch.randn(TRAIN, 784), torch.randint(0, 10, (TRAIN,))
    test_x, test_y = torch.randn(TEST, 784), torch.randint(0, 10, (TEST,))
    order = torch.randperm(TRAIN)
    pos = [0]

    def step() -> None:
        i = pos[0] = (pos[0] + BATCH) % (TRAIN - BATCH)
        idx = order[i : i + BATCH]
        x, y = torch.index_select(x_all, 0, idx), torch.index_select(y_all, 0, idx)
        opt.zero_grad()
        F.nll_loss(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()

    step_s = tbench.Timer("step()", globals={"step": step}).blocked_autorange(
        min_run_time=min_run_time
    )
    model.eval()
    eval_s = tbench.Timer(
        "ev(model, x, y, b)",
        globals={"ev": evaluate, "model": model, "x": test_x, "y": test_y, "b": TEST_BATCH},
    ).blocked_autorange(min_run_time=min_run_time)
    steps = math.ceil(TRAIN / BATCH)
    return {
        "variant": name,
        "weights": spec.weights(),
        "train_step_s": step_s.median,
        "eval_s": eval_s.median,
        "predicted_epoch_s": steps * step_s.median + eval_s.median,
    }


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        "# MNIST harness timing",
        "",
        f"- {env['processor']}, {doc['threads']} thread(s) per run, torch {env['torch']}, "
        f"git {env['git_sha']}",
        "- step: one training step at batch 64 (gather, forward, loss, backward, optimizer); "
        "eval: the 10,000 test images at batch 1000; predicted epoch = 938 steps + eval",
        "",
        "| variant | weights | step | eval | predicted s/epoch | measured s/epoch (reproduction) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    measured = doc.get("reproduction", {}).get("seconds_per_epoch", {})
    for r in doc["results"]:
        m = measured.get(r["variant"])
        lines.append(
            f"| `{r['variant']}` | {r['weights']:,} | {r['train_step_s'] * 1e6:.0f} us | "
            f"{r['eval_s'] * 1e3:.1f} ms | {r['predicted_epoch_s']:.2f} | "
            f"{'-' if m is None else f'{m:.2f}'} |"
        )
    total = sum(r["predicted_epoch_s"] for r in doc["results"])
    lines += [
        "",
        f"One epoch of every variant: {total:.1f} s predicted on one core, so the default "
        f"reproduction (35 epochs x 3 seeds) needs {total * 105 / 60:.1f} CPU-minutes, "
        f"{total * 105 / 60 / doc['workers']:.1f} minutes on {doc['workers']} cores at best.",
    ]
    wall = doc.get("reproduction", {}).get("wall_seconds")
    if wall:
        lines.append(
            f"The last full reproduction recorded {wall / 60:.1f} minutes of wall time "
            f"({doc['reproduction']['command']})."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--workers", type=int, default=2, help="cores the reproduction spreads runs over"
    )
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--results", type=Path, default=Path("results/mnist"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in reproduction_variants():
        rows.append(time_variant(spec.name, args.min_run_time))
        print(rows[-1], flush=True)
    doc: dict[str, Any] = {
        "schema": 1,
        "environment": environment(device=torch.device("cpu"), threads=args.threads),
        "threads": args.threads,
        "workers": args.workers,
        "results": rows,
    }
    summary = args.results / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
        sessions = data.get("sessions") or []
        doc["reproduction"] = {
            "seconds_per_epoch": {v["name"]: v["seconds_per_epoch"] for v in data["variants"]},
            "wall_seconds": sessions[-1]["wall_seconds"] if sessions else None,
            "command": sessions[-1]["command"] if sessions else None,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "harness-cpu.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "harness-cpu.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
