"""Dense-to-Kronecker conversion time: full SVD against the randomised (fast) path.

``nearest_kronecker`` on a weight whose Van Loan-Pitsianis rearrangement is 2048 x 1152
(issue 9's example: ``shapes=[(32, 64), (32, 36)]``, a 1024 x 2304 weight), at a few
ranks, with ``svd="full"`` and ``svd="randomized"`` (what ``svd="auto"`` picks there).
Medians of ``torch.utils.benchmark`` blocked autorange, both measured in the same run;
the relative errors of both paths are printed beside the times. Two weights: Gaussian
(flat spectrum, the randomised path's worst case) and one with a decaying spectrum, as
trained weights have.

    .venv/bin/python benchmarks/convert.py [--ranks 1 4 16] [--min-run-time 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess

import torch
from torch.utils import benchmark

from torchkron import nearest_kronecker

SHAPES = [(32, 64), (32, 36)]  # rearranged (32*64) x (32*36) = 2048 x 1152


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.1f} at start"
    )


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(1024, 2304, generator=g, dtype=torch.float64)
    # Rearranged singular values 0.97**i: a decaying spectrum.
    u = torch.linalg.qr(torch.randn(2048, 1152, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(1152, 1152, generator=g, dtype=torch.float64)).Q
    r = (u * 0.97 ** torch.arange(1152, dtype=torch.float64)) @ v.T
    decaying = r.reshape(32, 64, 32, 36).permute(0, 2, 1, 3).reshape(1024, 2304)
    return {"gaussian": gaussian.float(), "decaying": decaying.float()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--min-run-time", type=float, default=2.0)
    args = parser.parse_args()
    print(f"Machine: {_machine()}")
    print("| weight | rank | full SVD (s) | randomised (s) | speed-up | error full | error fast |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, w in _weights().items():
        for rank in args.ranks:
            times = {}
            errors = {}
            for method in ("full", "randomized"):
                timer = benchmark.Timer(
                    stmt="nearest_kronecker(w, shapes, rank, svd=method)",
                    globals={
                        "nearest_kronecker": nearest_kronecker,
                        "w": w,
                        "shapes": SHAPES,
                        "rank": rank,
                        "method": method,
                    },
                )
                times[method] = timer.blocked_autorange(min_run_time=args.min_run_time).median
                errors[method] = nearest_kronecker(w, SHAPES, rank, svd=method)[1]
            print(
                f"| {name} | {rank} | {times['full']:.3f} | {times['randomized']:.3f} | "
                f"{times['full'] / times['randomized']:.1f}x | {errors['full']:.6f} | "
                f"{errors['randomized']:.6f} |",
                flush=True,
            )
    print(f"Machine at the end: load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
