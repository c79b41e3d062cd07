"""The machine, versions and commit stamped on every result: one :func:`environment`."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "RESULT_DIRS",
    "cpu_name",
    "cpuinfo_field",
    "device_name",
    "environment",
    "git_sha",
    "now_iso",
]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


#: Folders (relative to the checkout) of result files the commands themselves write: their
#: changes never make the git stamp ``-dirty``, or rewriting results would mark itself.
RESULT_DIRS = ("results", "runs", "benchmarks/results")


def _git(args: list[str], where: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=where, capture_output=True, text=True, check=True
    ).stdout


def _changed_paths(porcelain: str) -> list[str]:
    """Paths of ``git status --porcelain -z`` output (a rename lists both names)."""
    fields = porcelain.split("\0")
    paths: list[str] = []
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if entry[0] in "RC" and i < len(fields):  # the original name follows
            paths.append(fields[i])
            i += 1
    return paths


def git_sha(cwd: Path | None = None, *, ignore: Sequence[Path] = ()) -> str | None:
    """The checkout's commit, with ``-dirty`` when it has local changes; None outside git.

    By default the checkout this module lives in (an editable install), whatever the
    current directory. Changes under :data:`RESULT_DIRS` and under the ``ignore`` folders
    (a run's own output folder) do not count: a run that rewrites its result files does
    not stamp itself dirty.
    """
    try:
        where = str(cwd or Path(__file__).resolve().parent)
        sha = _git(["rev-parse", "HEAD"], where).strip()
        top = Path(_git(["rev-parse", "--show-toplevel"], where).strip())
        status = _git(["status", "--porcelain", "-z", "--untracked-files=no"], where)
    except (OSError, subprocess.CalledProcessError):
        return None
    skip = [Path(d) for d in RESULT_DIRS]
    for folder in ignore:
        if Path(folder).resolve().is_relative_to(top.resolve()):  # else: nothing tracked there
            skip.append(Path(folder).resolve().relative_to(top.resolve()))
    dirty = [p for p in _changed_paths(status) if not any(Path(p).is_relative_to(d) for d in skip)]
    return sha + ("-dirty" if dirty else "")


def environment(
    output: Path | None = None, *, device: torch.device | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Versions and machine facts recorded with every result.

    Args:
        output: the folder the result goes to; its changes do not make the git stamp dirty.
        device: for a benchmark (``torchkron bench``): the device it times; adds the host,
            thread settings, BLAS, the device's name and the optional contenders' versions
            (and leaves out numpy), the keys of the benchmark's result files.
        threads: the benchmark's intra-op threads (default: torch's current number).
    """
    import torch

    bench = device is not None
    env: dict[str, Any] = {"torch": str(torch.__version__), "python": platform.python_version()}
    if not bench:
        import numpy

        env["numpy"] = numpy.__version__
    env.update(platform=platform.platform(), machine=platform.machine())
    if bench:
        env["hostname"] = platform.node()
    env.update(
        processor=cpu_name(),
        cpu_count=os.cpu_count(),
        threads=torch.get_num_threads() if threads is None else threads,
    )
    if device is not None:
        flags = set((cpuinfo_field("flags") or "").split())
        env.update(
            interop_threads=torch.get_num_interop_threads(),
            blas="mkl" if torch.backends.mkl.is_available() else "other",  # type: ignore[no-untyped-call]
            cpu_bf16_native=bool({"avx512_bf16", "amx_bf16"} & flags),
        )
    env["git_sha"] = git_sha(ignore=() if output is None else (output,))
    if device is not None:
        env.update(device=str(device), device_name=device_name(device))
        for mod in ("pyfastkron", "tltorch", "tensorly"):
            try:
                env[mod] = str(getattr(__import__(mod), "__version__", "unknown"))
            except Exception:
                env[mod] = None
        if device.type == "cuda":
            env["cuda"] = torch.version.cuda
    return env


def cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of ``/proc/cpuinfo`` (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    """The CUDA card's name, else the CPU's."""
    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return cpu_name()
