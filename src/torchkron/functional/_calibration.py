"""The machine constants of the cost model: built-in defaults, the calibration file, and
an in-process override (no measuring here; :mod:`torchkron.functional.calibrate` measures).

Five constants per device type: ``peak_flops`` (a large GEMM's rate), ``d_half`` (the
dimension at which a GEMM runs at half that rate), ``bandwidth`` (bytes per second of a
large copy), ``launch_s`` (fixed cost of one operator, autograd node and Python
included) and ``onednn_speedup`` (how much faster oneDNN ran thin GEMMs than the default
BLAS; it decides where the chain's plain GEMMs run, see
:mod:`torchkron.functional._gemm`). The defaults are rough values for a 2-core x86 CPU
and a data-centre GPU; ``torchkron bench --calibrate`` measures them on this machine and
writes them to :func:`default_path`, where :func:`constants` finds them. Every plan the
cost model can pick computes the same function, so a wrong calibration costs time, never
correctness.

This module is a leaf (stdlib only): the GEMM leaf reads the oneDNN constant from it.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEFAULTS", "ENV", "KEYS", "constants", "default_path", "override", "reload"]

#: The environment variable that names the calibration file.
ENV = "TORCHKRON_CALIBRATION"
KEYS = ("peak_flops", "d_half", "bandwidth", "launch_s", "onednn_speedup")

DEFAULTS: dict[str, dict[str, float]] = {
    # 2 threads of a Zen 4 EPYC (benchmarks/NOTES.md): ~150 GFLOP/s for a large float32
    # GEMM, half of it at a dimension of ~32, ~10 GB/s for a large copy, ~10 us per op.
    # onednn_speedup: the default BLAS's time over oneDNN's on thin GEMMs (1.0: unmeasured,
    # so PyTorch's own BLAS; see torchkron.functional._gemm).
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


def default_path() -> Path:
    """Where the calibration is read from: ``$TORCHKRON_CALIBRATION``, else the user cache.

    The default is ``$XDG_CACHE_HOME/torchkron/calibration.json`` (``~/.cache/...``).
    """
    env = os.environ.get(ENV)
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


def override(doc: Mapping[str, Any] | str | Path | None) -> None:
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


def constants(device_type: str) -> dict[str, float]:
    """The constants for ``device_type`` (``"cpu"``, ``"cuda"``, ...); defaults if absent."""
    global _loaded
    fallback = DEFAULTS.get(device_type, DEFAULTS["cpu"])
    if _override is not None:
        return _override.get(device_type, fallback)
    if _loaded is None:
        _loaded = {}
        path = default_path()
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


def reload() -> None:
    """Forget the file's contents, so that the next lookup reads it again (tests, or after
    ``bench --calibrate`` rewrote it)."""
    global _loaded
    _loaded = None
