"""Dense vs KronLinear on a GPU, eager and replayed as CUDA graphs.

On a GPU these layers are small enough that kernel-launch latency, not arithmetic, sets
the time: a factored layer launches several small kernels where ``nn.Linear`` launches
one. Capturing forward and backward as CUDA graphs (``torch.cuda.make_graphed_callables``)
removes most of that latency for both contenders; this script measures how the ordering
changes. Same shapes as the main suite (``torchkron bench --list``).

    python benchmarks/gpu_graphs.py --out benchmarks/results        # needs CUDA

Writes ``gpu-graphs-<card>.json`` and ``.md``. Without CUDA it times the eager
contenders on the CPU (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as tbench
from torch import Tensor, nn

from torchkron import KronLinear
from torchkron.experiments.bench.report import result_stem
from torchkron.experiments.bench.shapes import DEFAULT_SHAPES, BenchShape
from torchkron.experiments.common.environment import environment


def _layers(shape: BenchShape, dtype: torch.dtype, device: torch.device) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    kron = KronLinear(
        shape.in_features,
        shape.out_features,
        shapes=list(shape.factors),
        rank=shape.rank,
        device=device,
        dtype=dtype,
    )
    layers: dict[str, nn.Module] = {"KronLinear": kron}
    if shape.dense:
        layers["dense"] = kron.to_linear()
    return layers


def _step(layer: nn.Module, x: Tensor, grad: Tensor, train: bool) -> Any:
    if not train:

        def forward() -> None:
            with torch.no_grad():
                layer(x)

        return forward

    def train_step() -> None:
        for p in layer.parameters():
            p.grad = None
        layer(x).backward(grad)

    return train_step


def _median_seconds(fn: Any, min_run_time: float, rounds: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = [
        tbench.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median
        for _ in range(rounds)
    ]
    return statistics.median(times)


def run(
    shapes: list[BenchShape], dtypes: list[torch.dtype], min_run_time: float, rounds: int
) -> list[dict[str, Any]]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        for shape in shapes:
            x = torch.randn(shape.batch, shape.in_features, device=device, dtype=dtype)
            xg = x.clone().requires_grad_()
            grad = torch.randn(shape.batch, shape.out_features, device=device, dtype=dtype)
            for name, layer in _layers(shape, dtype, device).items():
                variants: dict[str, nn.Module] = {"eager": layer}
                if device.type == "cuda":
                    # Graphs forward and backward; inputs must keep their requires_grad.
                    try:
                        graphed = torch.cuda.make_graphed_callables(layer, (xg,))
                        variants["cuda-graph"] = graphed  # type: ignore[assignment]
                    except Exception as exc:  # report, keep timing the rest
                        print(f"{shape.name} {name}: capture failed: {exc!r}", flush=True)
                for how, module in variants.items():
                    for train in (False, True):
                        inp = xg if (train or how == "cuda-graph") else x
                        seconds = _median_seconds(
                            _step(module, inp, grad, train), min_run_time, rounds
                        )
                        rows.append(
                            {
                                "shape": shape.name,
                                "describe": shape.describe(),
                                "dtype": str(dtype).removeprefix("torch."),
                                "contender": name,
                                "execution": how,
                                "mode": "train" if train else "forward",
                                "seconds": seconds,
                            }
                        )
                        print(
                            f"{shape.name:>15} {rows[-1]['dtype']:>8} {name:>10} {how:>10} "
                            f"{rows[-1]['mode']:>7} {seconds * 1e6:9.1f} us",
                            flush=True,
                        )
    return rows


def markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    lines = [
        "# Dense vs KronLinear, eager and as CUDA graphs",
        "",
        f"- device: {env.get('device_name', env.get('device'))}; torch {env.get('torch')}",
        "- medians of `torch.utils.benchmark` `blocked_autorange` rounds; train = forward + "
        "backward into the input and every parameter",
        "- `x dense`: dense time / KronLinear time under the same execution (> 1: Kron faster)",
        "",
        "| shape | dtype | mode | dense eager | Kron eager | x dense "
        "| dense graph | Kron graph | x dense |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    table: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in doc["results"]:
        key = (r["shape"], r["dtype"], r["mode"])
        table.setdefault(key, {})[f"{r['contender']}/{r['execution']}"] = r["seconds"]

    def us(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e6:.1f} us"

    def ratio(d: float | None, k: float | None) -> str:
        return "-" if d is None or k is None else f"{d / k:.2f}x"

    for (shape, dtype, mode), t in table.items():
        de, ke = t.get("dense/eager"), t.get("KronLinear/eager")
        dg, kg = t.get("dense/cuda-graph"), t.get("KronLinear/cuda-graph")
        lines.append(
            f"| {shape} | {dtype} | {mode} | {us(de)} | {us(ke)} | {ratio(de, ke)} | "
            f"{us(dg)} | {us(kg)} | {ratio(dg, kg)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--dtype", default="float32,bfloat16")
    parser.add_argument("--shapes", default=",".join(s.name for s in DEFAULT_SHAPES))
    parser.add_argument("--min-run-time", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    names = args.shapes.split(",")
    shapes = [s for s in DEFAULT_SHAPES if s.name in names]
    dtypes = [getattr(torch, d) for d in args.dtype.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = run(shapes, dtypes, args.min_run_time, args.rounds)
    env = environment(device=device, threads=torch.get_num_threads())
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(0)
    doc = {"schema": 1, "environment": env, "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(device, quick=False).replace("bench-", "gpu-graphs-")
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(doc))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
