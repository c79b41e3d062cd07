"""Correctness of every kron_linear implementation, and the Triton kernels, against torch.kron.

Forward output and every gradient (input, each factor, bias) against the float64
reference ``x @ (sum_r kron(F_1[r], ...)).T + b`` differentiated by autograd. float64
cases must agree to 1e-9 relative; the Triton kernels are also checked in float32 and, at
tensor-core sizes, in bfloat16 and float16 (tolerances below).

    python benchmarks/gpu_check.py --out DIR              # CUDA
    python benchmarks/gpu_check.py --device cpu --out DIR  # dry run (TRITON_INTERPRET=1
                                                           # adds the kernels, slowly)

Prints one line per case, writes ``gpu-check-<device>.json``, exits 1 on any mismatch or
error (every case runs in its own try/except, so one failure does not hide the rest).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchkron.functional import IMPLS, kron_linear

# Relative tolerance (max abs error / max abs reference) per dtype.
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
CASES: list[tuple[list[tuple[int, int]], int, tuple[int, ...]]] = [
    ([(25, 28), (25, 28)], 1, (3, 5)),
    ([(5, 25), (2, 25)], 3, (7,)),
    ([(3, 4), (5, 6)], 2, (4,)),
    ([(2, 3), (3, 4), (4, 2)], 2, (6,)),
    ([(8, 8)] * 4, 2, (5,)),
    ([(7, 1), (1, 9)], 1, (3,)),
    ([(6, 5)], 2, (4,)),
    ([(64, 64), (64, 64)], 2, (33,)),
    ([(64, 32), (48, 24)], 1, (19,)),
    ([(2, 66), (70, 3)], 2, (4,)),
    ([(130, 100), (20, 140)], 1, (3,)),  # several tiles in every dimension
]
QUICK_CASES = CASES[:4]
HALF_CASES: list[tuple[list[tuple[int, int]], int, tuple[int, ...]]] = [
    ([(64, 64), (64, 64)], 1, (1024,)),
    ([(64, 64), (64, 64)], 4, (512,)),
    ([(64, 32), (48, 24)], 2, (256,)),
    ([(25, 28), (25, 28)], 1, (64,)),
]


def _weight(factors: list[Tensor]) -> Tensor:
    rank = factors[0].shape[0]
    return torch.stack(
        [functools.reduce(torch.kron, [f[r] for f in factors]) for r in range(rank)]
    ).sum(0)


def _device_slug(device: torch.device) -> str:
    """``cpu`` or ``cuda-<card>`` (e.g. ``cuda-nvidia-h200``), as gpu_bench names files."""
    if device.type != "cuda":
        return device.type
    text = "".join(c.lower() if c.isalnum() else " " for c in torch.cuda.get_device_name(device))
    return "cuda-" + "-".join(text.split())


def _triton_fn() -> Any:
    from torchkron.functional.impls.triton import kron_linear_triton

    return kron_linear_triton


def check(
    shapes: list[tuple[int, int]],
    rank: int,
    lead: tuple[int, ...],
    name: str,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    fs = [torch.randn(rank, o, n, generator=g, dtype=torch.float64) for o, n in shapes]
    n_in = 1
    n_out = 1
    for o, n in shapes:
        n_in, n_out = n_in * n, n_out * o
    x = torch.randn(*lead, n_in, generator=g, dtype=torch.float64)
    b = torch.randn(n_out, generator=g, dtype=torch.float64)
    # Reference in float64 on the device (fast), from the same values rounded to dtype.
    ref = [t.to(dtype).to(device, torch.float64).requires_grad_() for t in [x, *fs, b]]
    y_ref = ref[0] @ _weight(ref[1:-1]).T + ref[-1]
    gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64).to(dtype)
    want = torch.autograd.grad(y_ref, ref, gy.to(device, torch.float64))
    ins = [t.detach().to(dtype).requires_grad_() for t in ref]
    if name == "triton-direct":
        y = _triton_fn()(ins[0], ins[1:-1], ins[-1])
    else:
        y = kron_linear(ins[0], ins[1:-1], ins[-1], impl=name)
    got = torch.autograd.grad(y, ins, gy.to(device))
    errs = {}
    for label, a, w in [("out", y, y_ref), *zip(["dx", *(f"dF{i}" for i in range(len(fs))), "db"],
                                                  got, want, strict=True)]:  # fmt: skip
        errs[label] = float((a.detach().double() - w.detach()).abs().max()) / max(
            float(w.detach().abs().max()), 1e-30
        )
    return errs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="the first few cases only")
    parser.add_argument("--budget", type=float, default=1e9, help="seconds; then skip the rest")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; use --device cpu for a dry run")
        return 2
    from torchkron.functional.impls import triton as _triton

    triton_ok = _triton.is_available() and (device.type == "cuda" or _triton._interpreting())
    # kron_linear(impl="triton") takes CUDA tensors only; on the CPU (a dry run in
    # Triton's interpreter) the kernels are checked directly ("triton-direct").
    dispatch_ok = triton_ok and device.type == "cuda"
    impls = [i for i in IMPLS if i != "fastkron" and (i != "triton" or dispatch_ok)]
    try:
        import pyfastkron  # noqa: F401

        impls.append("fastkron")
    except Exception:
        pass
    print(f"gpu_check on {device}: impls {impls}; triton kernels usable: {triton_ok}", flush=True)
    cases = QUICK_CASES if args.quick else CASES
    plan: list[tuple[Any, ...]] = [(s, r, lead, n, torch.float64) for s, r, lead in cases
                                   for n in impls]  # fmt: skip
    if triton_ok:
        # Each new (sizes, dtype) compiles a forward and a backward kernel (seconds each),
        # so under --budget the most telling cases go first: float64 at the benchmark's
        # factor sizes, bfloat16 at tensor-core sizes, float32, float16, then the rest.
        two = [c for c in cases if len(c[0]) == 2]
        key = [c for c in two if c[0] in ([(64, 64), (64, 64)], [(64, 32), (48, 24)],
                                          [(25, 28), (25, 28)], [(2, 66), (70, 3)])]  # fmt: skip
        half = HALF_CASES if device.type == "cuda" else [([(5, 6), (7, 3)], 2, (4,))]
        triton_plan = [
            *[(c, torch.float64) for c in key],
            *[(c, torch.bfloat16) for c in half[:3]],
            *[(c, torch.float32) for c in two[:3]],
            *[(c, torch.float16) for c in half[:1]],
            *[(c, torch.float64) for c in two if c not in key],
        ]
        plan += [(s, r, lead, "triton-direct", dt) for (s, r, lead), dt in triton_plan]
    results = []
    bad = 0
    t0 = time.monotonic()
    for shapes, rank, lead, name, dtype in plan:
        dname = str(dtype).removeprefix("torch.")
        rec: dict[str, Any] = {"shapes": shapes, "rank": rank, "lead": list(lead),
                               "impl": name, "dtype": dname}  # fmt: skip
        if name in ("triton", "triton-direct") and len(shapes) != 2:
            rec["status"] = "n/a (two factors only)"
            results.append(rec)
            continue
        if name == "fastkron" and dtype not in (torch.float32, torch.float64):
            continue
        if time.monotonic() - t0 > args.budget:
            rec["status"] = "not run (time budget)"
            results.append(rec)
            continue
        try:
            errs = check(shapes, rank, lead, name, dtype, device)
            worst = max(errs.values())
            ok = worst < TOL[dtype]
            rec.update(status="ok" if ok else "MISMATCH", rel_err=errs, worst=worst)
        except Exception as exc:
            ok = False
            rec.update(status="ERROR", reason=f"{type(exc).__name__}: {exc}"[:500])
        bad += not ok
        results.append(rec)
        detail = f"worst rel err {rec['worst']:.1e}" if "worst" in rec else rec.get("reason")
        print(f"{'ok ' if ok else 'BAD'} {name:14} {rec['dtype']:8} {shapes} R={rank} {detail}",
              flush=True)  # fmt: skip
    summary = f"{len([r for r in results if r.get('status') == 'ok'])} passed, {bad} failed"
    print(f"gpu_check: {summary} in {time.monotonic() - t0:.0f} s", flush=True)
    if args.out is not None:
        env: dict[str, Any] = {"torch": str(torch.__version__), "device": str(device)}
        if device.type == "cuda":
            env["device_name"] = torch.cuda.get_device_name(device)
            env["cuda"] = torch.version.cuda
        try:
            import triton

            env["triton"] = str(triton.__version__)
        except Exception as exc:
            env["triton"] = f"not importable ({type(exc).__name__})"
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"gpu-check-{_device_slug(device)}.json"
        doc = {"environment": env, "tolerances": {str(k).removeprefix("torch."): v
               for k, v in TOL.items()}, "summary": summary, "results": results}  # fmt: skip
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
