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
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULTS",
    "ENV",
    "KEYS",
    "MAX_FILE_BYTES",
    "RANGES",
    "constants",
    "default_path",
    "override",
    "reload",
]

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

#: Each constant's accepted range, inclusive: wide enough for any machine from a phone to
#: a GPU cluster node (``d_half`` up to the bound ``bench --calibrate`` solves within),
#: narrow enough that the cost model's products and quotients stay finite and nonzero
#: (``d_half`` 1e300 made every GEMM's efficiency underflow to 0, a ZeroDivisionError).
RANGES: dict[str, tuple[float, float]] = {
    "peak_flops": (1e6, 1e18),
    "d_half": (1e-3, 1e6),
    "bandwidth": (1e6, 1e15),
    "launch_s": (1e-9, 1.0),
    "onednn_speedup": (1e-3, 1e3),
}

#: A calibration file is a few hundred bytes; a larger one is not read at all.
MAX_FILE_BYTES = 1 << 16

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


def _shown(v: Any) -> str:
    """A value for a message: short, whatever it is."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**20:
        return f"an integer of {len(str(abs(v)))} digits"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _problem(key: str, v: Any) -> str | None:
    """Why ``v`` is not a usable value of constant ``key``, or None when it is."""
    lo, hi = RANGES[key]
    allowed = f"(allowed: {lo:g} to {hi:g})"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{key}={_shown(v)} (not a number)"
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float's range
        return f"{key}={_shown(v)} {allowed}"
    if not lo <= f <= hi:  # NaN fails both comparisons
        return f"{key}={_shown(v) if isinstance(v, int) and abs(v) >= 10**20 else f!r} {allowed}"
    return None


def _sane(
    values: Mapping[str, Any], fallback: Mapping[str, float], where: str, problems: list[str]
) -> dict[str, float]:
    """The constants in their ranges; each missing or bad one is the default (and a bad
    one is described in ``problems``)."""
    out = dict(fallback)
    for key in KEYS:
        if key not in values:
            continue
        problem = _problem(key, values[key])
        if problem is None:
            out[key] = float(values[key])
        else:
            problems.append(f"{where}.{problem}")
    return out


def _parse(doc: Any, problems: list[str]) -> dict[str, dict[str, float]]:
    devices = doc.get("devices") if isinstance(doc, dict) else None
    if not isinstance(devices, dict):
        raise ValueError("expected an object with a 'devices' mapping")
    out = {}
    for dev, vals in devices.items():
        if isinstance(vals, dict):
            out[str(dev)] = _sane(
                vals, DEFAULTS.get(str(dev), DEFAULTS["cpu"]), f"devices.{dev}", problems
            )
        else:
            problems.append(f"devices.{dev}={_shown(vals)} (not an object of constants)")
    return out


def _read(path: Path) -> dict[str, dict[str, float]]:
    """The file's constants, validated; warns once about anything it could not use."""
    problems: list[str] = []
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{size} bytes, more than the {MAX_FILE_BYTES} a calibration takes")
        with path.open("rb") as fh:
            text = fh.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat()
        if len(text) > MAX_FILE_BYTES:
            raise ValueError(f"more than the {MAX_FILE_BYTES} bytes a calibration takes")
        loaded = _parse(json.loads(text), problems)
    except RecursionError:
        return _ignore(path, "nested too deeply")
    except (OSError, ValueError) as exc:  # unreadable, not JSON, a too long number, ...
        return _ignore(path, str(exc))
    if problems:
        warnings.warn(
            f"torchkron: the calibration file {path}: {'; '.join(problems)}; the built-in "
            "defaults used instead of these; rerun `torchkron bench --calibrate` to "
            "rewrite it.",
            stacklevel=4,
        )
    return loaded


def _ignore(path: Path, reason: str) -> dict[str, dict[str, float]]:
    warnings.warn(
        f"torchkron: ignoring the calibration file {path} ({reason}); rerun "
        "`torchkron bench --calibrate` to rewrite it.",
        stacklevel=5,
    )
    return {}


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
    _override = _parse(doc, [])  # the caller's own values: bad ones fall back silently


def constants(device_type: str) -> dict[str, float]:
    """The constants for ``device_type`` (``"cpu"``, ``"cuda"``, ...); defaults if absent."""
    global _loaded
    fallback = DEFAULTS.get(device_type, DEFAULTS["cpu"])
    if _override is not None:
        return _override.get(device_type, fallback)
    if _loaded is None:
        path = default_path()
        # Read once per process (and per reload()): a warning about it comes once too.
        _loaded = _read(path) if path.is_file() else {}
    return _loaded.get(device_type, fallback)


def reload() -> None:
    """Forget the file's contents, so that the next lookup reads it again (tests, or after
    ``bench --calibrate`` rewrote it)."""
    global _loaded
    _loaded = None
