"""The suite: every contender at every shape, dtype and mode, checkpointed after each shape."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchkron.experiments.bench.contenders import Contender, Skip, build_contender, make_factors
from torchkron.experiments.bench.format import fmt_time
from torchkron.experiments.bench.goals import evaluate_goals
from torchkron.experiments.bench.shapes import (
    GRAPH_MODES,
    MODES,
    SCHEMA,
    SUMGRAD_CONTENDERS,
    BenchShape,
    modes_of,
)
from torchkron.experiments.bench.timing import (
    cuda_graph_replay,
    event_blocks,
    forward_step,
    saved_tensor_bytes,
    step_peak_bytes,
    time_blocks,
    train_step,
    warm,
)
from torchkron.experiments.common.environment import environment, now_iso
from torchkron.functional import choose_impl, dense_flops, kron_flops

__all__ = ["SuiteConfig", "bench_shape", "run_suite"]


def _check_same(outputs: dict[str, Tensor], dtype: torch.dtype) -> dict[str, str]:
    """Contenders whose forward output differs from the reference, with the error."""
    ref = outputs.get("torchkron:permute")
    if ref is None:
        return {}
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-3
    bad = {}
    scale = float(ref.float().abs().max()) + 1e-12
    for name, out in outputs.items():
        err = float((out.float() - ref.float()).abs().max()) / scale
        if not err <= tol:
            bad[name] = f"output differs from torchkron:permute (max rel. error {err:.2e})"
    return bad


@dataclasses.dataclass
class SuiteConfig:
    device: torch.device
    dtypes: list[torch.dtype]
    shapes: list[BenchShape]
    contenders: list[str]
    threads: int
    min_run_time: float
    rounds: int
    warmup: float
    memory: bool
    note: str = ""
    tag: str = ""
    # "benchmark": torch.utils.benchmark's blocked_autorange; "events": CUDA events.
    timer: str = "benchmark"
    graphs: bool = False  # also time each step replayed as a CUDA graph (GRAPH_MODES)
    budget: float | None = None  # seconds for the run; later (shape, dtype) pairs skipped

    def modes(self) -> tuple[str, ...]:
        return MODES + GRAPH_MODES if self.graphs else MODES

    def time_blocks(self, step: Callable[[], None]) -> list[float]:
        """Per-call seconds of the blocks of one measurement of ``step``."""
        if self.timer == "events":
            return event_blocks(step, self.device, self.min_run_time)
        return time_blocks(step, self.threads, self.min_run_time)


def _failed(base: dict[str, Any], mode: str, name: str, status: str, reason: str) -> dict[str, Any]:
    return {**base, "mode": mode, "contender": name, "status": status, "reason": reason}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _budget_reason(cfg: SuiteConfig) -> str:
    return f"not run: the time budget (--budget {cfg.budget:g} s) ran out"


def _all_failed(
    shape: BenchShape, dtype: torch.dtype, cfg: SuiteConfig, status: str, reason: str
) -> list[dict[str, Any]]:
    """One row per contender and mode, all with the same status and reason."""
    base = {"shape": shape.name, "dtype": str(dtype).removeprefix("torch.")}
    return [
        _failed(base, mode, name, status, reason)
        for name in cfg.contenders
        for mode in modes_of(name, cfg.graphs)
    ]


def bench_shape(
    shape: BenchShape,
    dtype: torch.dtype,
    cfg: SuiteConfig,
    log: Callable[[str], None],
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Every contender at one shape and dtype, in every mode; modes not started before
    ``deadline`` (``time.monotonic()``) are recorded as skipped."""
    device = cfg.device
    graphs = cfg.graphs
    factors = make_factors(shape, dtype, device)
    bias = (torch.randn(shape.out_features, generator=torch.Generator().manual_seed(1)) * 0.1).to(
        device, dtype
    )
    gx = torch.Generator().manual_seed(2)
    x = torch.randn(shape.batch, shape.in_features, generator=gx).to(device, dtype)
    grad_out = torch.randn(shape.batch, shape.out_features, generator=gx).to(device, dtype)
    rows: list[dict[str, Any]] = []
    contenders: dict[str, Contender] = {}
    base = {"shape": shape.name, "dtype": str(dtype).removeprefix("torch.")}
    for name in cfg.contenders:
        try:
            contenders[name] = build_contender(name, shape, factors, bias, dtype, device)
        except Skip as why:
            rows += [
                _failed(base, mode, name, "skipped", str(why)) for mode in modes_of(name, graphs)
            ]
        except Exception as exc:  # a contender that breaks must not stop the suite
            rows += [
                _failed(base, mode, name, "error", _describe(exc))
                for mode in modes_of(name, graphs)
            ]
    # Correctness first: every contender must compute the same map.
    outputs: dict[str, Tensor] = {}
    for name, c in list(contenders.items()):
        try:
            with torch.no_grad():
                outputs[name] = c.fn(x).detach()
        except Exception as exc:
            del contenders[name]
            rows += [
                _failed(base, mode, name, "error", _describe(exc))
                for mode in modes_of(name, graphs)
            ]
    for name, reason in _check_same(outputs, dtype).items():
        del contenders[name]
        rows += [_failed(base, mode, name, "error", reason) for mode in modes_of(name, graphs)]
    with torch.no_grad():
        auto_forward = choose_impl(x, factors)
    with torch.enable_grad():
        auto_train = choose_impl(
            x.detach().requires_grad_(), [f.detach().requires_grad_() for f in factors]
        )
    for mode in cfg.modes():
        if deadline is not None and time.monotonic() > deadline:
            rows += [
                _failed(base, mode, name, "skipped", _budget_reason(cfg))
                for name in contenders
                if mode in modes_of(name, graphs)
            ]
            continue
        eager = mode.removesuffix("_graph")
        xm = x.clone().requires_grad_(eager != "forward")
        steps: dict[str, Callable[[], None]] = {}
        for name, c in contenders.items():
            if mode == "train_sumgrad" and name not in SUMGRAD_CONTENDERS:
                continue
            if eager == "forward":
                step = forward_step(c, xm)
            else:
                step = train_step(c, xm, grad_out if eager == "train" else None)
            try:
                if mode in GRAPH_MODES:
                    step = cuda_graph_replay(step, device)
                warm(step, cfg.warmup)
            except Exception as exc:
                rows.append(_failed(base, mode, name, "error", _describe(exc)))
                continue
            steps[name] = step
        times: dict[str, list[float]] = {n: [] for n in steps}
        blocks: dict[str, list[float]] = {n: [] for n in steps}
        for _ in range(cfg.rounds):  # interleaved: background load hits everyone alike
            for name, step in steps.items():
                t = cfg.time_blocks(step)
                times[name].append(statistics.median(t))
                blocks[name].extend(t)
        for name in steps:
            c = contenders[name]
            med = statistics.median(times[name])
            q = statistics.quantiles(blocks[name], n=4) if len(blocks[name]) > 1 else [med] * 3
            flops = c.flops * (1 if mode == "forward" else 3)
            row: dict[str, Any] = {
                **base,
                "mode": mode,
                "contender": name,
                "status": "ok",
                "median_s": med,
                "min_round_s": min(times[name]),  # least disturbed round, for reference
                "iqr_s": q[2] - q[0],
                "round_medians_s": times[name],
                "flops": flops,
                "gflops_per_s": flops / med / 1e9,
                "note": c.note,
            }
            if name == "KronLinear":
                row["auto_impl"] = auto_forward if mode == "forward" else auto_train
            if cfg.memory and mode == "train" and name in ("KronLinear", "dense"):
                row["peak_step_bytes"] = step_peak_bytes(steps[name], device)
                # Live before and throughout the step: parameters, input, output gradient.
                live = [*c.params, xm, grad_out]
                row["resident_bytes"] = sum(t.numel() * t.element_size() for t in live)
                row["saved_bytes"] = saved_tensor_bytes(functools.partial(c.fn, xm), c.params)
            rows.append(row)
        ok = [r for r in rows if r["mode"] == mode and r["status"] == "ok"]
        dense_t = next((r["median_s"] for r in ok if r["contender"] == "dense"), None)
        best = min(ok, key=lambda r: r["median_s"], default=None)
        for r in ok:
            r["ratio_vs_dense"] = dense_t / r["median_s"] if dense_t else None
            if best is not None:
                r["ratio_vs_best"] = best["median_s"] / r["median_s"]
                r["best"] = best["contender"]
        for r in ok:
            log(
                f"  {shape.name:16s} {base['dtype']:8s} {mode:7s} {r['contender']:20s} "
                f"{fmt_time(r['median_s']):>10s}  x{r['ratio_vs_best']:.2f} of best"
                + (f"  {r['ratio_vs_dense']:.1f}x dense" if r["ratio_vs_dense"] else "")
            )
    return rows


def _suite_config(cfg: SuiteConfig) -> dict[str, Any]:
    # The GPU options are stored only when used, so that other runs' files keep their form.
    extra: dict[str, Any] = {}
    if cfg.timer != "benchmark":
        extra["timer"] = cfg.timer
    if cfg.graphs:
        extra["graphs"] = True
    if cfg.budget is not None:
        extra["budget_s"] = cfg.budget
    return {
        "device": str(cfg.device),
        "dtypes": [str(d).removeprefix("torch.") for d in cfg.dtypes],
        "threads": cfg.threads,
        "min_run_time_s": cfg.min_run_time,
        "rounds": cfg.rounds,
        "warmup_s": cfg.warmup,
        "contenders": cfg.contenders,
        "tag": cfg.tag,
        "train_flops": "3 x forward FLOPs (input and weight gradients)",
        **extra,
    }


def _resume_key(cfg: SuiteConfig) -> dict[str, Any]:
    """What a checkpoint must match to be continued: the same run on the same code."""
    config = _suite_config(cfg)
    config.pop("budget_s", None)  # a run cut short may be continued with another budget
    return {
        "config": config,
        "memory": cfg.memory,
        "shapes": [s.name for s in cfg.shapes],
        "environment": _environment(cfg),
        "calibration": _calibration_used(cfg.device),
    }


def _load_checkpoint(
    path: Path, key: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log(f"ignoring the unreadable checkpoint {path} ({exc}); starting over")
        return None
    if not isinstance(doc, dict) or doc.get("key") != key:
        log(f"the checkpoint {path} is from another configuration or commit; starting over")
        return None
    return doc


def _write_checkpoint(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    os.replace(tmp, path)


def run_suite(
    cfg: SuiteConfig,
    log: Callable[[str], None] = print,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Time every contender at every shape, dtype and mode; return the JSON document.

    With ``checkpoint``, the results so far are written there (atomically) after every
    shape; with ``resume`` too, the shapes a matching checkpoint holds are not run again
    (a checkpoint of another configuration, environment or commit is ignored).
    """
    key = _resume_key(cfg) if checkpoint is not None else {}
    state: dict[str, Any] = {"key": key, "started_at": now_iso(), "done": [], "results": []}
    if checkpoint is not None and resume:
        loaded = _load_checkpoint(checkpoint, key, log)
        if loaded is not None:
            state = loaded
            log(f"resuming from {checkpoint}: {len(state['done'])} (dtype, shape) pairs done")
    results: list[dict[str, Any]] = state["results"]
    done = {tuple(d) for d in state["done"]}
    skipped_dtypes: dict[str, str] = {}
    dtypes = []
    for dtype in cfg.dtypes:
        reason = _dtype_unsupported(dtype, cfg.device)
        if reason is not None:
            skipped_dtypes[str(dtype).removeprefix("torch.")] = reason
            log(f"skipping {dtype}: {reason}")
        else:
            dtypes.append(dtype)
    deadline = None if cfg.budget is None else time.monotonic() + cfg.budget
    late: list[dict[str, Any]] = []  # cut off by the budget: not checkpointed, so resumable
    for shape, dtype in _pairs(cfg, dtypes):
        pair = (str(dtype).removeprefix("torch."), shape.name)
        if pair in done:
            log(f"{shape.describe()} ({dtype}): done in the checkpoint")
            continue
        if deadline is not None and time.monotonic() > deadline:
            late += _all_failed(shape, dtype, cfg, "skipped", _budget_reason(cfg))
            continue
        log(f"{shape.describe()} ({dtype})")
        try:
            rows = bench_shape(shape, dtype, cfg, log, deadline)
        except torch.OutOfMemoryError as exc:  # outside any one contender: the inputs
            # themselves do not fit (at GPU row counts); the next, smaller shape may.
            log(f"  {shape.name} ({dtype}) failed: {_describe(exc)}")
            rows = _all_failed(shape, dtype, cfg, "error", _describe(exc))
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()  # the next shape starts from a clean allocator
        if deadline is not None and any(r.get("reason") == _budget_reason(cfg) for r in rows):
            late += rows  # cut off inside the shape: a resumed run times all of it again
            continue
        results.extend(rows)
        state["done"].append(list(pair))
        if checkpoint is not None:
            _write_checkpoint(checkpoint, state)
    budget = (
        {}
        if cfg.budget is None
        else {"pairs_not_run": len({(r["shape"], r["dtype"]) for r in late})}
    )
    results = results + late
    return {
        "schema": SCHEMA,
        "kind": "torchkron-bench",
        "started_at": state["started_at"],
        "finished_at": now_iso(),
        "environment": _environment(cfg),
        "calibration": _calibration_used(cfg.device),
        "config": _suite_config(cfg),
        "shapes": [
            {
                **dataclasses.asdict(s),
                "in_features": s.in_features,
                "out_features": s.out_features,
                "dense_flops_per_row": dense_flops(s.in_features, s.out_features),
                "kron_flops_per_row": kron_flops(
                    [o for o, _ in s.factors], [n for _, n in s.factors], s.rank
                ),
                "kron_parameters": s.rank * sum(o * n for o, n in s.factors),
            }
            for s in cfg.shapes
        ],
        "skipped_dtypes": skipped_dtypes,
        "results": results,
        "goals": evaluate_goals(results, cfg.shapes),
        "note": cfg.note,
        **budget,
    }


def _environment(cfg: SuiteConfig) -> dict[str, Any]:
    """The machine facts of the result file; on CUDA also the card's size, the TF32 matmul
    setting (it changes float32 GEMM times) and the Triton version."""
    env = environment(device=cfg.device, threads=cfg.threads)
    if cfg.device.type == "cuda":
        props = torch.cuda.get_device_properties(cfg.device)
        env.update(
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            allow_tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32),
        )
        try:
            env["triton"] = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:
            env["triton"] = None
    return env


def _pairs(cfg: SuiteConfig, dtypes: list[torch.dtype]) -> Iterator[tuple[BenchShape, torch.dtype]]:
    """The (shape, dtype) pairs in run order: dtype by dtype, or, under a time budget,
    shape by shape (every dtype of the first shape first), so that the shapes listed
    first, the ones that matter most, are the ones that run."""
    if cfg.budget is None:
        yield from ((shape, dtype) for dtype in dtypes for shape in cfg.shapes)
    else:
        yield from ((shape, dtype) for shape in cfg.shapes for dtype in dtypes)


def _calibration_used(device: torch.device) -> dict[str, Any]:
    from torchkron.functional import calibrate

    path = calibrate.default_path()
    return {"file": str(path) if path.is_file() else None, **calibrate.constants(device.type)}


def _dtype_unsupported(dtype: torch.dtype, device: torch.device) -> str | None:
    if dtype != torch.bfloat16:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU does not support bfloat16"
    return None
