"""Training-step time of the study's configs, measured side by side in one process.

Run times recorded by a study depend on what else the machine was doing while each run
trained; this benchmark times one AdamW training step (forward, backward, clip, step) of
every config round-robin, so that load changes hit all configs alike, and reports the
median per config and its ratio to dense.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchkron.experiments.common.environment import environment, now_iso
from torchkron.experiments.lm.gpt import GPT, GPTSpec

__all__ = ["bench_markdown", "bench_steps"]


def bench_steps(
    specs: dict[str, GPTSpec],
    *,
    batch_size: int = 12,
    rounds: int = 15,
    warmup: int = 3,
    threads: int = 1,
) -> dict[str, Any]:
    """Median seconds per training step of each spec (round-robin, ``rounds`` each)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {n: GPT(s) for n, s in specs.items()}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-3) for n, m in models.items()}
    data = {
        n: torch.randint(s.vocab_size, (batch_size, s.block_size + 1)) for n, s in specs.items()
    }
    times: dict[str, list[float]] = {n: [] for n in specs}
    for i in range(warmup + rounds):
        for n, model in models.items():
            x, y = data[n][:, :-1], data[n][:, 1:]
            t0 = time.perf_counter()
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opts[n].zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[n].step()
            if i >= warmup:
                times[n].append(time.perf_counter() - t0)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    base = med.get("dense")
    return {
        "measured_at": now_iso(),
        "environment": environment(),
        "batch_size": batch_size,
        "rounds": rounds,
        "rows": [
            {
                "config": n,
                "step_seconds": med[n],
                "ratio_vs_dense": (med[n] / base) if base else None,
                "iqr": statistics.quantiles(times[n], n=4)[2]
                - statistics.quantiles(times[n], n=4)[0],
            }
            for n in specs
        ],
    }


def bench_markdown(result: dict[str, Any], note: str = "") -> str:
    env = result["environment"]
    lines = [
        "# Training-step time (round-robin benchmark)",
        "",
        f"{env['processor']}, {env['cpu_count']} cores, {env['threads']} thread, torch "
        f"{env['torch']}, batch {result['batch_size']} x block 64, median of "
        f"{result['rounds']} steps per config, configs interleaved. {note}".rstrip(),
        "",
        "| config | s/step (median) | IQR | vs dense |",
        "|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        ratio = f"{r['ratio_vs_dense']:.2f}x" if r["ratio_vs_dense"] else "—"
        lines.append(f"| {r['config']} | {r['step_seconds']:.4f} | {r['iqr']:.4f} | {ratio} |")
    return "\n".join(lines) + "\n"


def study_specs(names: Sequence[str] = ()) -> dict[str, GPTSpec]:
    from torchkron.experiments.lm.schedule import study_configs

    configs = study_configs()
    return {c.name: c.spec for c in configs if not names or c.name in names}
