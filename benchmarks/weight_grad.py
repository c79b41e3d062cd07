"""Where the two layouts of a batched step's weight gradient cross over.

    python benchmarks/weight_grad.py [--threads N] [--out benchmarks/results/weight-grad-cpu.md]

A contraction step applied to P row blocks has the weight gradient ``sum_p g[p] @ s[p].T``
(``g``: (P, m, Q), ``s``: (P, k, Q)). Two ways to compute it:

- ``partial``: batched products (P, m, k), then their sum; writes and re-reads P*m*k numbers;
- ``one_gemm``: both operands copied to a (., P*Q) layout, then one GEMM; moves P*Q*(m+k).

``torchkron.functional._autograd._weight_grad`` picks ``one_gemm`` when m*k > ratio * Q*(m+k); this
script times both at the steps of the benchmark shapes (rank 1, 4, 16 at 768->3072; the CPU
goal shapes) and prints, per shape, the faster one and what the rule picks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.utils.benchmark as tb

from torchkron.experiments.common.environment import cpu_name
from torchkron.functional import _plan

# (label, out factors, in factors, rank, batch): the benchmark shapes with two factors.
SHAPES = [
    ("784-625 b64", (25, 25), (28, 28), 1, 64),
    ("784-625 r4 b64", (25, 25), (28, 28), 4, 64),
    ("1024 b256", (32, 32), (32, 32), 1, 256),
    ("4096 b1024", (64, 64), (64, 64), 1, 1024),
    ("4096 r4 b1024", (64, 64), (64, 64), 4, 1024),
    ("768-3072 r1 b1024", (64, 48), (32, 24), 1, 1024),
    ("768-3072 r4 b1024", (64, 48), (32, 24), 4, 1024),
    ("768-3072 r16 b1024", (64, 48), (32, 24), 16, 1024),
    ("768-3072 r4 b8192", (64, 48), (32, 24), 4, 8192),
]


def batched_steps() -> list[tuple[str, int, int, int, int]]:
    """(label, P, m, k, Q) of every batched step (post > 1) the chain runs at SHAPES."""
    out = []
    for label, outs, ins, rank, batch in SHAPES:
        for st in _plan.chain_plan_cached(outs, ins, rank).steps:
            if st.post > 1:
                out.append((label, batch * st.pre, st.m, st.k, st.post))
    return out


def partial(g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.bmm(g, s.transpose(1, 2)).sum(0)


def one_gemm(g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    p, m, q = g.shape
    k = s.shape[1]
    return g.transpose(0, 1).reshape(m, p * q) @ s.transpose(0, 1).reshape(k, p * q).t()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--min-run-time", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [
        "# Weight gradient of a batched step: partial products vs one GEMM",
        "",
        f"Machine: {cpu_name()}.",
        "",
        f"`python benchmarks/weight_grad.py --threads {args.threads}`; torch {torch.__version__}, "
        f"{args.threads} thread(s); medians over {args.rounds} interleaved rounds of "
        f"`blocked_autorange(min_run_time={args.min_run_time})`; rule: one GEMM when "
        f"m*k > {_plan.ONE_GEMM_RATIO} * Q*(m+k).",
        "",
        "| step | P | m | k | Q | partial | one GEMM | faster | rule picks | rule's loss |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for label, p, m, k, q in batched_steps():
        g, s = torch.randn(p, m, q), torch.randn(p, k, q)
        torch.testing.assert_close(partial(g, s), one_gemm(g, s), rtol=1e-3, atol=1e-2)
        times: dict[str, list[float]] = {"partial": [], "one_gemm": []}
        for _ in range(args.rounds):
            for name, fn in (("partial", partial), ("one_gemm", one_gemm)):
                timer = tb.Timer("fn(g, s)", globals={"fn": fn, "g": g, "s": s})
                times[name].append(timer.blocked_autorange(min_run_time=args.min_run_time).median)
        med = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
        faster = min(med, key=lambda n: med[n])
        picked = "one_gemm" if _plan.one_gemm(p, m, k, q) else "partial"
        loss = med[picked] / med[faster]
        lines.append(
            f"| {label} | {p} | {m} | {k} | {q} | {med['partial'] * 1e3:.3f} ms | "
            f"{med['one_gemm'] * 1e3:.3f} ms | {faster} | {picked} | {loss:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
