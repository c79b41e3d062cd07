"""Correctness of every kron_linear implementation on CUDA against torch.kron (float64).

python benchmarks/gpu_check.py      # needs CUDA; prints one line per case, exits 1 on a mismatch
"""

from __future__ import annotations

import functools
import sys

import torch

from torchkron.functional import IMPLS, kron_linear


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device")
        return 1
    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    cases = [
        ([(25, 28), (25, 28)], 1),
        ([(5, 25), (2, 25)], 3),
        ([(2, 3), (3, 4), (4, 2)], 2),
        ([(8, 8)] * 4, 2),
        ([(7, 1), (1, 9)], 1),
        ([(6, 5)], 2),
    ]
    bad = 0
    for shapes, rank in cases:
        fs = [torch.randn(rank, o, n, generator=g, dtype=torch.float64) for o, n in shapes]
        w = sum(functools.reduce(torch.kron, [f[r] for f in fs]) for r in range(rank))
        x = torch.randn(3, 5, w.shape[1], generator=g, dtype=torch.float64)
        ref = x @ w.T
        for impl in IMPLS:
            if impl == "fastkron":
                continue
            facs = [f.to(dev).requires_grad_() for f in fs]
            xd = x.to(dev).requires_grad_()
            y = kron_linear(xd, facs, impl=impl)
            err = float((y.cpu() - ref).abs().max())
            y.sum().backward()
            ok = err < 1e-9 and all(f.grad is not None for f in facs) and xd.grad is not None
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {impl:8} {shapes} R={rank} max err {err:.2e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
