"""GPU benchmark: nn.Linear vs materialise-then-GEMM vs kron_linear impls vs the Triton kernels.

Forward (no grad) and training step (forward + backward into the input, the factors and
the bias), bfloat16 and float32, eager and replayed as a CUDA graph, at the suite's shapes
plus 8,192 and 16,384 rows. Times are medians of ``--reps`` timed runs of ``n`` calls each
between two CUDA events (``n`` sized so one run takes about ``--target`` seconds), after
warm-up; on the CPU (``--device cpu``, a dry run of the script itself) ``perf_counter``.

    python benchmarks/gpu_bench.py --out DIR                     # CUDA, every shape
    python benchmarks/gpu_bench.py --device cpu --quick --out DIR  # dry run, seconds

Writes ``gpu-bench-<device>.json`` and ``.md`` into ``--out`` after every shape, so a run
cut short still leaves its results; ``--budget`` seconds bound the whole run (shapes not
reached are recorded as skipped). Every contender runs in its own try/except.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkron import KronLinear
from torchkron.functional import IMPLS, kron_linear, kron_weight

SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    factors: tuple[tuple[int, int], ...]  # (out_i, in_i)
    batch: int
    rank: int = 1
    dense: bool = True  # False: W too large; no dense or materialise contender

    @property
    def in_features(self) -> int:
        return math.prod(n for _, n in self.factors)

    @property
    def out_features(self) -> int:
        return math.prod(o for o, _ in self.factors)

    def describe(self) -> str:
        facs = " (x) ".join(f"{o}x{n}" for o, n in self.factors)
        rank = f", R={self.rank}" if self.rank > 1 else ""
        return f"{self.in_features}->{self.out_features} [{facs}{rank}] rows {self.batch}"


F64 = ((64, 64), (64, 64))
F32 = ((32, 32), (32, 32))
F25 = ((25, 28), (25, 28))
BERT = ((64, 32), (48, 24))  # 768 -> 3072, the BERT/GPT MLP shape of issue 11
# Order = priority under the time budget: the goal shape first.
SHAPES: tuple[Shape, ...] = (
    Shape("4096-b16384", F64, 16384),
    Shape("4096-b8192", F64, 8192),
    Shape("4096-b1024", F64, 1024),
    Shape("4096-r4-b16384", F64, 16384, rank=4),
    Shape("768-3072-b16384", BERT, 16384),
    Shape("768-3072-r4-b16384", BERT, 16384, rank=4),
    Shape("1024-b16384", F32, 16384),
    Shape("784-625-b64", F25, 64),
    Shape("784-625-b1000", F25, 1000),
    Shape("784-625-r4-b64", F25, 64, rank=4),
    Shape("1024-b256", F32, 256),
    Shape("4096-r4-b1024", F64, 1024, rank=4),
    Shape("4096-3f-b1024", ((16, 16),) * 3, 1024),
    Shape("4096-4f-b1024", ((8, 8),) * 4, 1024),
    Shape("768-3072-b8192", BERT, 8192),
    Shape("1024-b8192", F32, 8192),
    Shape("4096-r4-b8192", F64, 8192, rank=4),
    Shape("65536-b64", ((256, 256), (256, 256)), 64, dense=False),
)
QUICK_SHAPES: tuple[Shape, ...] = (
    Shape("quick-2f", ((4, 6), (5, 3)), 8),
    Shape("quick-2f-r2", ((6, 4), (3, 5)), 8, rank=2),
    Shape("quick-3f", ((2, 3), (3, 2), (2, 2)), 4),
    Shape("quick-nodense", ((8, 8), (8, 8)), 4, dense=False),
)
CONTENDERS = ("dense", "materialize", "bmm", "fused", "KronLinear", "triton")
# The goals of issue 11 (bfloat16 training step).
GOAL_SHAPE, GOAL_SPEEDUP, GOAL_SLACK = "4096-b16384", 3.0, 1.10


class Skip(Exception):
    """A contender that cannot run here (reason in the message)."""


# --------------------------------------------------------------------------------------
# Contenders: modules whose parameters all receive gradients in the training step.


class _Factored(nn.Module):
    def __init__(self, factors: list[Tensor], bias: Tensor, how: str) -> None:
        super().__init__()
        self.factors = nn.ParameterList(nn.Parameter(f.clone()) for f in factors)
        self.bias = nn.Parameter(bias.clone())
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        fs = list(self.factors)
        if self.how == "materialize":  # what LoKr layers do: build W, then one GEMM
            return F.linear(x, kron_weight(fs), self.bias)
        if self.how == "triton":
            from torchkron.functional.impls.triton import kron_linear_triton

            return kron_linear_triton(x, fs, self.bias)
        return kron_linear(x, fs, self.bias, impl=self.how)


def _factors(shape: Shape, dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    # W gets nn.Linear's variance, so outputs stay O(1) in bfloat16.
    std = (1.0 / (3.0 * shape.in_features * shape.rank)) ** (1.0 / (2 * len(shape.factors)))
    return [
        (torch.randn(shape.rank, o, n, generator=g) * std).to(device, dtype)
        for o, n in shape.factors
    ]


def build(name: str, shape: Shape, dtype: torch.dtype, device: torch.device) -> nn.Module:
    factors = _factors(shape, dtype, device)
    bias = torch.randn(shape.out_features, generator=torch.Generator().manual_seed(1))
    bias = (bias * 0.1).to(device, dtype)
    if name in ("dense", "materialize") and not shape.dense:
        raise Skip("the dense W would not fit")
    if name == "dense":
        lin = nn.Linear(shape.in_features, shape.out_features, device=device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(kron_weight(factors))
            lin.bias.copy_(bias)
        return lin
    if name == "KronLinear":
        layer = KronLinear(
            shape.in_features,
            shape.out_features,
            shapes=list(shape.factors),
            rank=shape.rank,
            device=device,
            dtype=dtype,
        )
        with torch.no_grad():
            for p, f in zip(layer.factors, factors, strict=True):
                p.copy_(f)
            if layer.bias is not None:
                layer.bias.copy_(bias)
        return layer
    if name == "triton":
        from torchkron.functional.impls import triton as _triton

        if not _triton.is_available():
            raise Skip("triton is not installed or sees no CUDA device")
        reason = _triton.kernel_unsupported_reason(
            torch.empty(0, device=device, dtype=dtype), factors, bias
        )
        if reason is not None:
            raise Skip(reason)
        return _Factored(factors, bias, "triton")
    if name.startswith("torchkron:"):
        impl = name.split(":", 1)[1]
        if impl not in IMPLS:
            raise Skip(f"impl {impl!r} is not in this torchkron's IMPLS")
        return _Factored(factors, bias, impl)
    if name in ("materialize", "bmm", "fused", "permute"):
        return _Factored(factors, bias, name)
    raise ValueError(f"unknown contender {name!r}")


def contender_names() -> list[str]:
    names = list(CONTENDERS)
    if "triton" in IMPLS:  # kron_linear(impl="triton"), once functional dispatches to it
        names.append("torchkron:triton")
    return names


# --------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], Any], device: torch.device, target: float, reps: int
) -> tuple[float, int]:
    """Median seconds per call over ``reps`` runs of ``n`` calls; returns (median, n)."""
    for _ in range(2):  # warm-up (Triton compiles on the first call)
        fn()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run(n: int) -> float:
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n
    else:

        def run(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n

    one = run(1)
    n = max(1, min(2000, int(target / max(one, 1e-7))))
    return statistics.median(run(n) for _ in range(reps)), n


def step_fn(module: nn.Module, x: Tensor, grad: Tensor, train: bool) -> Callable[[], Any]:
    params = list(module.parameters())
    if not train:

        def forward() -> Any:
            with torch.no_grad():
                return module(x)

        return forward

    def train_step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        module(x).backward(grad)

    return train_step


def graphed(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` captured as a CUDA graph (after warm-up on a side stream); its replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def peak_step_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


# --------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class Config:
    device: torch.device
    dtypes: list[torch.dtype]
    shapes: list[Shape]
    contenders: list[str]
    target: float
    reps: int
    graphs: bool
    deadline: float  # time.monotonic() after which remaining work is skipped


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def bench_shape(
    shape: Shape, dtype: torch.dtype, cfg: Config, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    dev = cfg.device
    base = {
        "shape": shape.name,
        "describe": shape.describe(),
        "dtype": str(dtype).removeprefix("torch."),
        "rows": shape.batch,
        "rank": shape.rank,
    }
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(shape.batch, shape.in_features, generator=g).to(dev, dtype)
    grad = torch.randn(shape.batch, shape.out_features, generator=g).to(dev, dtype)
    x_train = x0.clone().requires_grad_()
    reference: Tensor | None = None
    executions = ["eager", *(["graph"] if cfg.graphs and dev.type == "cuda" else [])]
    for name in cfg.contenders:
        row0 = {**base, "contender": name}
        if time.monotonic() > cfg.deadline:
            for mode in ("forward", "train"):
                for how in executions:
                    rows.append({**row0, "mode": mode, "execution": how, "status": "skipped",
                                 "reason": "time budget"})  # fmt: skip
            continue
        try:
            module = build(name, shape, dtype, dev)
            with torch.no_grad():
                out = module(x0).float()
            if reference is None:
                reference = out
            rel = float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
        except Skip as exc:
            for mode in ("forward", "train"):
                for how in executions:
                    rows.append({**row0, "mode": mode, "execution": how, "status": "skipped",
                                 "reason": str(exc)})  # fmt: skip
            log(f"  {shape.name:>18} {base['dtype']:>8} {name:>16} skipped: {exc}")
            continue
        except Exception as exc:
            for mode in ("forward", "train"):
                for how in executions:
                    rows.append({**row0, "mode": mode, "execution": how, "status": "error",
                                 "reason": _err(exc)})  # fmt: skip
            log(f"  {shape.name:>18} {base['dtype']:>8} {name:>16} ERROR {_err(exc)}")
            continue
        for mode in ("forward", "train"):
            train = mode == "train"
            fn = step_fn(module, x_train if train else x0, grad, train)
            for how in executions:
                row = {**row0, "mode": mode, "execution": how, "rel_err_vs_first": rel}
                try:
                    if time.monotonic() > cfg.deadline:
                        raise Skip("time budget")
                    timed = graphed(fn, dev) if how == "graph" else fn
                    seconds, n = median_seconds(timed, dev, cfg.target, cfg.reps)
                    row.update(status="ok", seconds=seconds, calls_per_run=n)
                    if how == "eager" and train:
                        row["peak_step_bytes"] = peak_step_bytes(fn, dev)
                    log(f"  {shape.name:>18} {base['dtype']:>8} {name:>16} {mode:>7} {how:>5} "
                        f"{seconds * 1e6:10.1f} us")  # fmt: skip
                except Skip as exc:
                    row.update(status="skipped", reason=str(exc))
                except Exception as exc:
                    row.update(status="error", reason=_err(exc))
                    log(f"  {shape.name:>18} {base['dtype']:>8} {name:>16} {mode:>7} {how:>5} "
                        f"ERROR {_err(exc)}")  # fmt: skip
                rows.append(row)
        del module
    return rows


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import triton

        env["triton"] = str(triton.__version__)
    except Exception as exc:
        env["triton"] = f"not importable ({type(exc).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            allow_tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
        )
    else:
        env["device_name"] = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        from torchkron.experiments.common.environment import git_sha

        env["git_sha"] = git_sha()
    return env


def device_slug(device: torch.device) -> str:
    """``cpu`` or ``cuda-<card>`` (e.g. ``cuda-nvidia-h200``): the result files' suffix."""
    if device.type != "cuda":
        return device.type
    text = "".join(c.lower() if c.isalnum() else " " for c in torch.cuda.get_device_name(device))
    return "cuda-" + "-".join(text.split())


# --------------------------------------------------------------------------------------
# Report


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.2f} ms" if v >= 1e-2 else f"{v * 1e6:.1f} us"


def _table(results: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, float]]:
    t: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for r in results:
        key = (r["dtype"], r["mode"], r["execution"], r["shape"])
        if r.get("status") == "ok":
            t.setdefault(key, {})[r["contender"]] = r["seconds"]
        else:
            t.setdefault(key, {})
    return t


def goals(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 11's GPU goals, per execution (eager, graph), bfloat16 training step."""
    out: list[dict[str, Any]] = []
    table = _table(results)
    kron_family = [c for c in contender_names() if c not in ("dense", "materialize")]
    for (dtype, mode, how, shape), t in table.items():
        if dtype != "bfloat16" or mode != "train" or not t:
            continue
        best_k = (
            min((t[c], c) for c in kron_family if c in t)
            if any(c in t for c in kron_family)
            else None
        )
        if shape == GOAL_SHAPE and "dense" in t and best_k is not None:
            value = t["dense"] / best_k[0]
            out.append({"goal": f">= {GOAL_SPEEDUP:g}x nn.Linear", "shape": shape,
                        "execution": how, "value": value, "by": best_k[1],
                        "met": value >= GOAL_SPEEDUP})  # fmt: skip
        base = [t[c] for c in ("dense", "materialize") if c in t]
        for c in ("KronLinear", "triton"):
            if base and c in t:
                ratio = t[c] / min(base)
                out.append({"goal": "<= 1.10x the faster of nn.Linear and materialise",
                            "shape": shape, "execution": how, "value": ratio, "by": c,
                            "met": ratio <= GOAL_SLACK})  # fmt: skip
    return out


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    names = doc["config"]["contenders"]
    cpu = str(env.get("device", "")).startswith("cpu")
    clock = "perf_counter: a CPU dry run, not a GPU measurement" if cpu else "CUDA events"
    lines = [
        "# GPU benchmark: nn.Linear, materialise-then-GEMM, kron_linear, Triton",
        "",
        f"- device: **{env.get('device_name')}** ({env.get('device')}); torch {env.get('torch')}, "
        f"CUDA {env.get('cuda')}, triton {env.get('triton')}; git {env.get('git_sha')}",
        f"- {env.get('started')} .. {doc.get('finished')}; TF32 matmul: "
        f"{env.get('allow_tf32_matmul')}",
        f"- medians of timed runs ({clock}, warm); `graph`: the same step captured once as a "
        "CUDA graph and replayed; train = forward + backward into input, factors, bias",
        "- `xdense` = nn.Linear time / fastest factored contender's time (> 1: factored faster)",
        "",
    ]
    if doc.get("goals"):
        lines += ["## Goals (bfloat16 training step)", "", "| goal | shape | execution | value "
                  "| by | met |", "|---|---|---|---:|---|---|"]  # fmt: skip
        for g in doc["goals"]:
            lines.append(f"| {g['goal']} | {g['shape']} | {g['execution']} | {g['value']:.2f} "
                         f"| {g['by']} | {'yes' if g['met'] else '**no**'} |")  # fmt: skip
        lines.append("")
    table = _table(doc["results"])
    kron_family = [c for c in names if c not in ("dense", "materialize")]
    for dtype in doc["config"]["dtypes"]:
        for mode in ("forward", "train"):
            for how in ("eager", "graph"):
                keys = [k for k in table if k[:3] == (dtype, mode, how)]
                if not keys:
                    continue
                lines += [f"## {dtype}, {mode}, {how}", "",
                          "| shape | " + " | ".join(names) + " | xdense |",
                          "|---|" + "---:|" * (len(names) + 1)]  # fmt: skip
                for key in keys:
                    t = table[key]
                    ks = [t[c] for c in kron_family if c in t]
                    x = f"{t['dense'] / min(ks):.2f}x" if "dense" in t and ks else "-"
                    cells = " | ".join(_us(t.get(c)) for c in names)
                    lines.append(f"| {key[3]} | {cells} | {x} |")
                lines.append("")
    bad = [r for r in doc["results"] if r.get("status") == "error"]
    if bad:
        lines += ["## Errors", ""]
        seen = set()
        for r in bad:
            k = (r["shape"], r["dtype"], r["contender"], r.get("reason"))
            if k not in seen:
                seen.add(k)
                lines.append(f"- {r['shape']} {r['dtype']} {r['contender']}: {r.get('reason')}")
        lines.append("")
    return "\n".join(lines)


def write(doc: dict[str, Any], out: Path, stem: str) -> None:
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["goals"] = goals(doc["results"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(doc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16,float32")
    parser.add_argument("--shapes", default=None, help="comma-separated names (default all)")
    parser.add_argument("--contenders", default=None, help="comma-separated (default all)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a dry run")
    parser.add_argument("--target", type=float, default=0.015, help="seconds per timed run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-graphs", action="store_true")
    parser.add_argument("--budget", type=float, default=250.0, help="seconds for the run")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: torch sees no CUDA device; use --device cpu for a dry run")
        return 2
    pool = QUICK_SHAPES if args.quick else SHAPES
    shapes = list(pool)
    if args.shapes:
        wanted = args.shapes.split(",")
        shapes = [s for s in (*SHAPES, *QUICK_SHAPES) if s.name in wanted]
    contenders = args.contenders.split(",") if args.contenders else contender_names()
    dtypes = [getattr(torch, d) for d in args.dtype.split(",")]
    cfg = Config(device, dtypes, shapes, contenders, args.target, args.reps,
                 not args.no_graphs, time.monotonic() + args.budget)  # fmt: skip
    stem = f"gpu-bench-{device_slug(device)}" + ("-quick" if args.quick else "")
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": environment(device),
        "config": {"dtypes": [str(d).removeprefix("torch.") for d in dtypes],
                   "shapes": [dataclasses.asdict(s) for s in shapes], "contenders": contenders,
                   "target_seconds": args.target, "reps": args.reps, "budget": args.budget},
        "results": [],
    }  # fmt: skip
    print(f"gpu_bench on {doc['environment']['device_name']}: {len(shapes)} shapes, "
          f"{len(dtypes)} dtypes, {len(contenders)} contenders", flush=True)  # fmt: skip
    # bfloat16 of the most important shapes first: shape-major, dtype inside.
    for shape in shapes:
        for dtype in dtypes:
            try:
                doc["results"] += bench_shape(shape, dtype, cfg, lambda s: print(s, flush=True))
            except Exception as exc:  # a failure outside one contender (e.g. out of memory)
                traceback.print_exc()
                doc["results"].append({"shape": shape.name, "status": "error",
                                       "dtype": str(dtype).removeprefix("torch."),
                                       "contender": "*", "mode": "*", "execution": "*",
                                       "reason": _err(exc)})  # fmt: skip
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write(doc, args.out, stem)
    write(doc, args.out, stem)
    print(f"wrote {args.out / stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
