"""Compile the Triton kernels for a CUDA target without a GPU; report registers and spills.

Triton's interpreter (the CPU tests) runs the kernels' arithmetic but not the compiler:
type errors that only the compiler sees (e.g. a name typed differently in two branches)
and register spills show up only here. The launches of ``torchkron.functional.impls.triton`` are
recorded instead of run, given the specialisations a real launch gets (integer
arguments equal to 1 become constants, pointers and multiples of 16 are marked
16-divisible), compiled with the ``ptxas`` shipped in the triton wheel, and the cubin's
resource usage read with its ``cuobjdump``.

    python benchmarks/gpu_compile_check.py                # sm_90 (H100/H200), all cases
    python benchmarks/gpu_compile_check.py --arch 80 --dtype bfloat16

Needs triton (not TRITON_INTERPRET=1); prints one line per kernel, exits 1 on a failure
or a spill.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

_PTR = {
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.float32: "*fp32",
    torch.float64: "*fp64",
}
CASES: list[tuple[tuple[tuple[int, int], tuple[int, int]], int]] = [
    (((64, 64), (64, 64)), 1),
    (((64, 64), (64, 64)), 4),
    (((25, 28), (25, 28)), 1),
    (((64, 32), (48, 24)), 1),
    (((32, 32), (32, 32)), 1),
    (((256, 256), (256, 256)), 1),
]


def _record(
    shapes: tuple[tuple[int, int], tuple[int, int]], rank: int, dtype: torch.dtype
) -> list[Any]:
    """The (kernel, args, kwargs) of one forward and one full backward launch."""
    from torchkron.functional.impls import _triton_kernels
    from torchkron.functional.impls import triton as _triton

    calls: list[Any] = []

    class _Rec:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def __getitem__(self, grid: Any) -> Any:
            return lambda *args, **kw: calls.append((self.fn, args, kw))

    class _Kernels:
        forward_kernel = _Rec(_triton_kernels.forward_kernel)
        backward_kernel = _Rec(_triton_kernels.backward_kernel)

    (o1, n1), (o2, n2) = shapes
    real = _triton._kernels
    _triton._kernels = lambda: _Kernels  # type: ignore[assignment]
    try:
        a, b = torch.randn(rank, o1, n1, dtype=dtype), torch.randn(rank, o2, n2, dtype=dtype)
        x = torch.randn(64, n1 * n2, dtype=dtype)
        _triton._launch_forward(x, a, b, torch.randn(o1 * o2, dtype=dtype))
        g = torch.randn(64, o1 * o2, dtype=dtype)
        _triton._launch_backward(g, x, a, b, (True, True, True, True))
    finally:
        _triton._kernels = real  # type: ignore[assignment]
    return calls


def _source(fn: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    from triton.compiler import ASTSource

    options = {k: kw[k] for k in ("num_warps", "num_stages") if k in kw}
    sig: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    positional = list(args)
    for i, p in enumerate(fn.params):
        name = p.name
        if name in kw:
            sig[name], constexprs[name] = "constexpr", kw[name]
            continue
        v = positional.pop(0)
        if isinstance(v, torch.Tensor):
            sig[name] = _PTR[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            if v == 1:  # what the launcher does with an integer argument equal to 1
                sig[name], constexprs[name] = "constexpr", 1
                continue
            sig[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise TypeError(f"{name}: cannot type {v!r}")
    return ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs), options


def _resources(cubin: bytes) -> dict[str, int]:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True
        )
    usage: dict[str, int] = {}
    for line in out.stdout.splitlines():
        if "REG:" in line:
            for part in line.split("Resource usage:")[-1].split():
                key, _, val = part.partition(":")
                if val.isdigit():
                    usage[key] = int(val)
    return usage


def compile_case(
    shapes: tuple[tuple[int, int], tuple[int, int]], rank: int, dtype: torch.dtype, arch: int = 90
) -> list[dict[str, Any]]:
    """Compile the forward and backward launches of one case; their resource usage."""
    import triton
    from triton.backends.compiler import GPUTarget

    rows = []
    for fn, args, kw in _record(shapes, rank, dtype):
        src, options = _source(fn, args, kw)
        t0 = time.monotonic()
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        usage = _resources(kernel.asm["cubin"])
        rows.append({"kernel": fn.__name__, "seconds": time.monotonic() - t0, **options, **usage})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", default="bfloat16,float16,float32,float64")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("gpu_compile_check: unset TRITON_INTERPRET (the interpreter compiles nothing)")
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    bad = 0
    for dname in args.dtype.split(","):
        dtype = getattr(torch, dname)
        for shapes, rank in CASES:
            try:
                for r in compile_case(shapes, rank, dtype, args.arch):
                    spill = r.get("STACK", 0) > 0 or r.get("LOCAL", 0) > 0
                    bad += spill
                    flag = "SPILL" if spill else "ok   "
                    print(f"{flag} {r['kernel']:16} {dname:8} {shapes} R={rank} "
                          f"warps={r.get('num_warps')} stages={r.get('num_stages')} "
                          f"REG={r.get('REG')} STACK={r.get('STACK')} {r['seconds']:.1f} s",
                          flush=True)  # fmt: skip
            except Exception as exc:
                bad += 1
                print(f"FAIL  {dname} {shapes} R={rank}: {type(exc).__name__}: {exc}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
