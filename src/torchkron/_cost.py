"""Cost model behind ``kron_linear(impl="auto")``, and its calibration.

Each candidate plan is priced as a sum of GEMMs and memory passes::

    t(GEMM M x K x N) = 2 M K N / (peak * e(M) * e(K) * e(N)) + bytes / bandwidth + launch
    e(d) = d / (d + d_half)        # a GEMM with a small dimension runs below peak

with four machine constants per device type: ``peak_flops`` (a large GEMM's rate),
``d_half`` (the dimension at which a GEMM runs at half that rate), ``bandwidth`` (bytes
per second of a large copy) and ``launch_s`` (fixed cost of one operator, autograd node
and Python included), plus ``onednn_speedup`` (how much faster oneDNN ran thin GEMMs
than the default BLAS; it decides where the chain's plain GEMMs run, see
:mod:`torchkron._gemm`, and does not enter the prices). Defaults are rough values for
a 2-core x86 CPU and a data-centre GPU; ``torchkron bench --calibrate`` measures them on
this machine and writes them to :func:`calibration_path`, where :func:`calibration`
finds them. Every plan the model can pick computes the same function, so a wrong
calibration costs time, never correctness.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from torchkron._autograd import _one_gemm

__all__ = [
    "CALIBRATION_ENV",
    "DEFAULTS",
    "Costs",
    "calibration",
    "calibration_path",
    "plan_costs",
    "set_calibration",
]

CALIBRATION_ENV = "TORCHKRON_CALIBRATION"
KEYS = ("peak_flops", "d_half", "bandwidth", "launch_s", "onednn_speedup")

DEFAULTS: dict[str, dict[str, float]] = {
    # 2 threads of a Zen 4 EPYC (benchmarks/NOTES.md): ~150 GFLOP/s for a large float32
    # GEMM, half of it at a dimension of ~32, ~10 GB/s for a large copy, ~10 us per op.
    # onednn_speedup: the default BLAS's time over oneDNN's on thin GEMMs (1.0: unmeasured,
    # so PyTorch's own BLAS; see torchkron._gemm).
    "cpu": {
        "peak_flops": 1.5e11,
        "d_half": 32.0,
        "bandwidth": 1.0e10,
        "launch_s": 1.0e-5,
        "onednn_speedup": 1.0,
    },
    # A data-centre GPU: tensor cores want large dimensions; launches dominate small work.
    "cuda": {
        "peak_flops": 4.0e14,
        "d_half": 256.0,
        "bandwidth": 3.0e12,
        "launch_s": 8.0e-6,
        "onednn_speedup": 1.0,
    },
}

_override: dict[str, dict[str, float]] | None = None
_loaded: dict[str, dict[str, float]] | None = None


def calibration_path() -> Path:
    """Where the calibration is read from: ``$TORCHKRON_CALIBRATION``, else the user cache.

    The default is ``$XDG_CACHE_HOME/torchkron/calibration.json`` (``~/.cache/...``).
    """
    env = os.environ.get(CALIBRATION_ENV)
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "torchkron" / "calibration.json"


def _sane(values: Mapping[str, Any], fallback: Mapping[str, float]) -> dict[str, float]:
    """Positive finite constants; anything else falls back to the default."""
    out = dict(fallback)
    for key in KEYS:
        v = values.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            out[key] = float(v)
    return out


def _parse(doc: Any) -> dict[str, dict[str, float]]:
    devices = doc.get("devices") if isinstance(doc, dict) else None
    if not isinstance(devices, dict):
        raise ValueError("expected an object with a 'devices' mapping")
    return {
        str(dev): _sane(vals, DEFAULTS.get(str(dev), DEFAULTS["cpu"]))
        for dev, vals in devices.items()
        if isinstance(vals, dict)
    }


def set_calibration(doc: Mapping[str, Any] | str | Path | None) -> None:
    """Use these constants instead of the calibration file (``None``: back to the file).

    Args:
        doc: a calibration document ``{"devices": {"cpu": {"peak_flops": ...}, ...}}`` as
            ``torchkron bench --calibrate`` writes it, a path to one, or ``None``.
    """
    global _override
    if doc is None:
        _override = None
        return
    if isinstance(doc, (str, Path)):
        doc = json.loads(Path(doc).read_text())
    _override = _parse(doc)


def calibration(device_type: str) -> dict[str, float]:
    """The constants for ``device_type`` (``"cpu"``, ``"cuda"``, ...); defaults if absent."""
    global _loaded
    fallback = DEFAULTS.get(device_type, DEFAULTS["cpu"])
    if _override is not None:
        return _override.get(device_type, fallback)
    if _loaded is None:
        _loaded = {}
        path = calibration_path()
        if path.is_file():
            try:
                _loaded = _parse(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:  # unreadable: defaults, and say so once
                warnings.warn(
                    f"torchkron: ignoring the calibration file {path} ({exc}); rerun "
                    "`torchkron bench --calibrate` to rewrite it.",
                    stacklevel=3,
                )
    return _loaded.get(device_type, fallback)


def _reset_loaded() -> None:
    """Forget the file's contents (tests, or after ``bench --calibrate`` rewrote it)."""
    global _loaded
    _loaded = None


class Costs(NamedTuple):
    """Predicted seconds of each plan (``inf`` where a plan does not apply)."""

    chain: float  # the factored chain (impl="bmm")
    materialize: float  # build W, then one dense GEMM (impl="materialize")
    cached: float  # a dense GEMM with W already built (inference, factors unchanged)
    triton: float  # the fused Triton kernels (CUDA, two factors)


def _gemm(
    c: Mapping[str, float], m: float, k: float, n: float, elt: int, batch: float = 1
) -> float:
    if min(m, k, n, batch) <= 0:
        return c["launch_s"]
    h = c["d_half"]
    eff = (m / (m + h)) * (k / (k + h)) * (n / (n + h))
    flops = 2.0 * batch * m * k * n
    moved = batch * (m * k + k * n + m * n) * elt
    return flops / (c["peak_flops"] * eff) + moved / c["bandwidth"] + c["launch_s"]


def plan_costs(
    c: Mapping[str, float],
    batch: int,
    steps: Sequence[tuple[int, int, int, int]],
    chain_repeats: int,
    outs: Sequence[int],
    ins: Sequence[int],
    rank: int,
    elt: int,
    train: bool,
    triton_ok: bool,
    factored_flops: int = 0,
) -> Costs:
    """Predicted times of the candidate plans.

    Args:
        c: machine constants (see :func:`calibration`).
        batch: rows of the input.
        steps: the chain's contractions as ``(pre, k, m, post)`` per input row.
        chain_repeats: how many times the chain runs (R for a sum of rank-one chains).
        outs, ins: factor sizes; rank: summed terms; elt: bytes per element.
        train: whether a backward follows (input and weight gradients).
        triton_ok: whether the Triton kernels can run this product.
        factored_flops: forward FLOPs per row of the FLOP-optimal contraction (Triton).
    """
    out_f, in_f = math.prod(outs), math.prod(ins)
    fwd = 0.0
    grads = 0.0
    for pre, k, m, post in steps:
        p = batch * pre
        if post == 1:
            t = _gemm(c, p, k, m, elt)
            wgrad = _gemm(c, m, p, k, elt)
        else:
            t = _gemm(c, m, k, post, elt, batch=p)
            if _one_gemm(p, m, k, post):
                # Weight gradient: both operands copied to a (., p * post) layout, one GEMM.
                moved = 2.0 * p * post * (m + k) * elt
                wgrad = _gemm(c, m, p * post, k, elt) + moved / c["bandwidth"]
            else:
                # Batched products, then a sum over the p partial (m, k) sums.
                wgrad = _gemm(c, m, post, k, elt, batch=p) + 2.0 * p * m * k * elt / c["bandwidth"]
        fwd += t
        grads += t + wgrad  # input gradient (same GEMM as forward) + weight gradient
    chain = chain_repeats * (fwd + (grads if train else 0.0))
    # Materialise: W = (F_1 ... F_{k-1} terms) (R) x (F_k terms), one GEMM over the rank
    # and one permute copy of W; then nn.Linear's GEMMs. Training adds dW, dX, and dW's
    # permute copy and contractions back into the factors.
    w_bytes = out_f * in_f * elt
    build = _gemm(c, out_f * in_f / (outs[-1] * ins[-1]), rank, outs[-1] * ins[-1], elt)
    build += 2.0 * w_bytes / c["bandwidth"] + c["launch_s"]
    dense = _gemm(c, batch, in_f, out_f, elt)
    # A cached W is checked against a snapshot of the factors on every call (one pass).
    factor_bytes = rank * sum(o * n for o, n in zip(outs, ins, strict=True)) * elt
    cached = dense + 2.0 * factor_bytes / c["bandwidth"] + len(outs) * c["launch_s"]
    materialize = build + dense
    if train:
        dense_bwd = _gemm(c, out_f, batch, in_f, elt) + _gemm(c, batch, out_f, in_f, elt)
        materialize += dense_bwd + build + _gemm(c, rank, out_f * in_f / rank, 1, elt)
        cached = math.inf  # a cached W carries no graph: only for inference
    triton = math.inf
    if triton_ok:
        # One kernel per direction, the intermediate kept on chip: the factored FLOPs at
        # a large GEMM's efficiency, plus reading x and writing y.
        flops = float(batch * factored_flops)
        passes = 3 if train else 1
        moved = batch * (in_f + out_f) * elt * passes
        triton = passes * (flops / c["peak_flops"] + c["launch_s"]) + moved / c["bandwidth"]
    return Costs(chain, materialize, cached, triton)
