"""Profile one variant's MNIST training step (where a reproduction epoch's time goes).

    python benchmarks/profile_step.py original one-kron-mat > benchmarks/results/profile-steps.txt

Runs 300 steps at batch 64 with one thread (as each reproduction worker does) under
``torch.profiler`` and prints the operators by self CPU time, then the share of the step
spent in matmuls, in the optimizer and elsewhere.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from torchkron.experiments.mnist.optim import FlatAdadelta
from torchkron.experiments.mnist.variants import build_mlp, get_variant

STEPS = 300


def profile_variant(name: str) -> None:
    torch.manual_seed(0)
    model = build_mlp(get_variant(name))
    opt = FlatAdadelta(model.parameters())
    x_all, y_all = torch.randn(60_000, 784), torch.randint(0, 10, (60_000,))
    g = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, 60_000, (64,), generator=g)
        x, y = torch.index_select(x_all, 0, idx), torch.index_select(y_all, 0, idx)
        opt.zero_grad()
        F.nll_loss(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()

    for _ in range(50):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(STEPS):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(
        e.self_cpu_time_total
        for e in events
        if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
    )
    optim = next((e.cpu_time_total for e in events if e.key.startswith("Optimizer.step")), 0.0)
    print(f"## {name}: {total / STEPS:.0f} us of operator time per step (profiled, 1 thread)")
    print(
        f"matmuls {100 * matmul / total:.0f}%, optimizer step {100 * optim / total:.0f}%, "
        f"everything else {100 * (total - matmul - optim) / total:.0f}%"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    for name in argv or ["original", "one-kron-mat", "dense-h1"]:
        profile_variant(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
