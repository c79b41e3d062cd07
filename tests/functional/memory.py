"""Memory measurements for the kernel tests: what autograd saves, and the CPU allocator's
peak during a call.

The same measurements as the benchmark's (``torchkron bench``), kept here so that the
library's tests do not depend on the harness.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def saved_tensor_bytes(fn: Callable[[], Tensor], params: Sequence[Tensor]) -> int:
    """Bytes autograd saves for backward during ``fn()``, parameters' storage excluded
    (each storage counted once; a view of a parameter is not an activation)."""
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


def cpu_memory_events(fn: Callable[[], None]) -> list[dict[str, Any]]:
    """torch.profiler's ``[memory]`` events of one call of ``fn`` (CPU allocator), in order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
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
    """Peak live bytes of the blocks allocated during the profiled call (a free counts
    only for a block allocated during the call)."""
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
