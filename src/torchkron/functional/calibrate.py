"""Measuring the cost model's machine constants, and where they are kept.

``impl="auto"`` (:func:`torchkron.functional.choose_impl`) prices its candidate plans
with five constants per device type (see :mod:`torchkron.functional._calibration`):
``peak_flops``, ``d_half``, ``bandwidth``, ``launch_s`` and ``onednn_speedup``.
:func:`measure` times them on this machine (a few seconds); :func:`write` merges them
into the calibration file (``torchkron bench --calibrate`` calls it), which
:func:`constants` reads.

Examples:
    >>> from torchkron.functional import calibrate
    >>> sorted(calibrate.constants("cpu"))
    ['bandwidth', 'd_half', 'launch_s', 'onednn_speedup', 'peak_flops']
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchkron.functional import _gemm
from torchkron.functional._calibration import (
    DEFAULTS,
    ENV,
    constants,
    default_path,
    override,
    reload,
)

__all__ = ["DEFAULTS", "ENV", "constants", "default_path", "measure", "override", "reload", "write"]

# Mode contractions of the benchmark shapes: (rows, K, N) of one GEMM each.
_CALIBRATION_GEMMS = ((32768, 24, 48), (32768, 32, 64), (65536, 28, 25), (16384, 64, 64))


def _solve_d_half(ratio: float, k: int, n: int) -> float:
    """``h`` with ``k / (k + h) * n / (n + h) == ratio`` (bisection; ratio in (0, 1])."""
    lo, hi = 0.0, 1e6
    for _ in range(100):
        mid = (lo + hi) / 2
        if (k / (k + mid)) * (n / (n + mid)) > ratio:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def measure(device: torch.device, dtype: torch.dtype, threads: int) -> dict[str, float]:
    """Measure the cost model's machine constants (a few seconds).

    ``peak_flops``: a large square GEMM; ``bandwidth``: a copy into a preallocated
    buffer (no page faults); ``launch_s``: a 1x1 product; ``d_half``: the median over
    GEMMs shaped like mode contractions of the dimension that explains their rate. Each
    is the fastest of several blocks, so that load from other processes inflates it as
    little as possible.
    """
    import torch.utils.benchmark as tbench

    # Large enough to run near peak, small enough (CPU: 512^3, a few ms) that one product
    # fits in a scheduler slice on a loaded machine (longer ones get preempted more).
    n = 2048 if device.type == "cuda" else 512

    def t(stmt: str, **g: Any) -> float:
        timer = tbench.Timer(stmt, globals=g, num_threads=threads)
        return float(min(timer.blocked_autorange(min_run_time=0.3).times))

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    a = rand(n, n)
    peak = 2.0 * n**3 / t("a @ a", a=a)
    big = rand(8 << 20)
    dst = torch.empty_like(big)
    bandwidth = 2.0 * big.numel() * big.element_size() / t("dst.copy_(big)", dst=dst, big=big)
    launch = t("one @ one", one=rand(1, 1))
    halves = []
    for m, k, nn_ in _CALIBRATION_GEMMS:
        x, w = rand(m, k), rand(k, nn_)
        out = torch.empty(m, nn_, device=device, dtype=dtype)
        took = t("torch.mm(x, w, out=out)", torch=torch, x=x, w=w, out=out)
        # The whole time counts as lost efficiency (memory time included): the chain's
        # GEMMs stream operands of this shape, so their memory time scales alike.
        ratio = 2.0 * m * k * nn_ / took / peak
        halves.append(_solve_d_half(min(max(ratio, 1e-4), 1.0), k, nn_))
    d_half = max(statistics.median(halves), 1.0)
    onednn = 1.0
    if device.type == "cpu" and dtype == torch.float32 and _gemm.available():
        # The default BLAS's time over oneDNN's on the same thin GEMMs (x @ w.T).
        ratios = []
        for m, k, nn_ in _CALIBRATION_GEMMS:
            x, w = rand(m, k), rand(nn_, k)
            blas = t("x @ w.t()", x=x, w=w)
            dnn = t(
                "op(x, w, None, 'none', [], '')", op=torch.ops.mkldnn._linear_pointwise, x=x, w=w
            )
            ratios.append(blas / dnn)
        onednn = statistics.median(ratios)
    return {
        "peak_flops": peak,
        "d_half": d_half,
        "bandwidth": bandwidth,
        "launch_s": launch,
        "onednn_speedup": onednn,
    }


def write(path: Path, device: torch.device, dtype: torch.dtype, threads: int) -> dict[str, Any]:
    """Measure and merge this device type's constants into the calibration file ``path``
    (other device types' entries are kept); returns the whole document written."""
    doc: dict[str, Any] = {"schema": 1, "devices": {}}
    if path.is_file():
        # An unreadable, foreign or tampered file is replaced (its other devices lost).
        with contextlib.suppress(OSError, ValueError, RecursionError):
            old = json.loads(path.read_text())
            if isinstance(old, dict) and isinstance(old.get("devices"), dict):
                doc["devices"] = old["devices"]
    values: dict[str, Any] = dict(measure(device, dtype, threads))
    values.update(
        {
            "dtype": str(dtype).removeprefix("torch."),
            "threads": threads,
            "device_name": _device_name(device),
            "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    doc["devices"][device.type] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    reload()
    return doc


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
