"""Timing and memory probes of one step: medians, peak bytes, saved activations."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as tbench
from torch import Tensor

from torchkron.experiments.bench.contenders import Contender

__all__ = [
    "cpu_memory_events",
    "cuda_graph_replay",
    "event_blocks",
    "forward_step",
    "quiet_stderr",
    "replayed_peak_bytes",
    "saved_tensor_bytes",
    "step_peak_bytes",
    "time_blocks",
    "train_step",
    "warm",
]


def train_step(c: Contender, x: Tensor, grad_out: Tensor | None) -> Callable[[], None]:
    """Forward and backward; ``grad_out=None``: ``.sum().backward()`` (stride-0 gradient)."""

    def step() -> None:
        x.grad = None
        for p in c.params:
            p.grad = None
        if grad_out is None:
            c.fn(x).sum().backward()  # type: ignore[no-untyped-call]
        else:
            c.fn(x).backward(grad_out)  # type: ignore[no-untyped-call]

    return step


def forward_step(c: Contender, x: Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            c.fn(x)

    return step


def time_blocks(fn: Callable[[], None], threads: int, min_run_time: float) -> list[float]:
    """Per-block seconds of one blocked_autorange."""
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return [t for t in m.times]


#: Blocks per :func:`event_blocks` measurement (as blocked_autorange, several short ones).
EVENT_BLOCKS = 5


def event_blocks(fn: Callable[[], None], device: torch.device, min_run_time: float) -> list[float]:
    """Per-call seconds of :data:`EVENT_BLOCKS` blocks timed between two CUDA events.

    A block is ``n`` back-to-back calls, ``n`` sized from one timed call so that all blocks
    together take about ``min_run_time``; the host does not wait between calls, so the
    time is the GPU's, not the launch loop's (what ``blocked_autorange`` measures when
    kernels are shorter than their launches).
    """
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]

    def block(n: int) -> float:
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3 / n

    torch.cuda.synchronize(device)
    one = block(1)
    n = max(1, min(10_000, int(min_run_time / EVENT_BLOCKS / max(one, 1e-7))))
    return [block(n) for _ in range(EVENT_BLOCKS)]


def cuda_graph_replay(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``fn`` captured once as a CUDA graph (after a warm-up on a side stream): its replay.

    The replay reruns the captured kernels on the same memory, without Python or launch
    overhead; a step that cannot be captured (a host sync, a CPU tensor) raises here.
    """
    side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()

    def replay() -> None:
        graph.replay()

    return replay


def warm(fn: Callable[[], None], seconds: float) -> None:
    start = time.perf_counter()
    for i in range(1000):
        fn()
        if i >= 2 and time.perf_counter() - start > seconds:
            break


def step_peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes held by the tensors that one call of ``fn`` allocates.

    That is the call's own working memory (activations, gradients, temporaries); tensors
    that were live before the call (parameters, inputs) come on top.

    CUDA: the allocator's peak statistics. CPU: torch.profiler's memory events, which
    record every allocation and free of torch's CPU allocator with its running total.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    return replayed_peak_bytes(cpu_memory_events(fn))


def cpu_memory_events(fn: Callable[[], None]) -> list[dict[str, Any]]:
    """torch.profiler's ``[memory]`` events of one call of ``fn`` (CPU allocator), in order."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    return sorted(
        (e for e in trace.get("traceEvents", []) if e.get("name") == "[memory]"),
        key=lambda e: float(e.get("ts", 0.0)),
    )


def replayed_peak_bytes(events: Sequence[dict[str, Any]]) -> int:
    """Peak live bytes of the blocks allocated during the profiled call.

    Allocations and frees are replayed in order, counting a free only for a block
    allocated during the call (frees of older blocks, e.g. last step's gradients, are
    reported inconsistently by the profiler); the events' own running totals are not
    reset between profiles, so they are not used.
    """
    live = peak = 0
    blocks: dict[int, int] = {}
    for e in events:
        size, addr = int(e["args"].get("Bytes", 0)), int(e["args"].get("Addr", 0))
        if size > 0:
            blocks[addr] = size
            live += size
        elif addr in blocks:
            live -= blocks.pop(addr)
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence the profiler backend's start/stop lines, which it writes to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def saved_tensor_bytes(fn: Callable[[], Tensor], params: Sequence[Tensor]) -> int:
    """Bytes autograd saves for backward during ``fn()``, parameters' storage excluded.

    Counted with :func:`torch.autograd.graph.saved_tensors_hooks`, each storage once (a
    view of a parameter, e.g. a reshaped factor, is not an activation).
    """
    seen: dict[int, int] = {}
    own = {p.untyped_storage().data_ptr() for p in params}

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())
