"""Run records: one JSON file per (variant, seed), written atomically.

Schema (``schema: 1``)::

    {
      "schema": 1,
      "variant": "one-kron-mat",          # variant id
      "description": "input-hidden = U (x) U, U 25x28 (one shared factor)",
      "family": "seed",                    # "seed", "dense-baseline", or a sweep family
      "order": 1,                          # position in tables (ties broken by name)
      "spec": {...},                       # MLPSpec.to_dict(): both layers' shapes, rank, tied
      "seed": 0,
      "weights": 6950,                     # weight count, biases excluded
      "parameters": 7585,                  # every trainable number
      "config": {...},                     # TrainConfig as a dict: every hyper-parameter
      "history": {                         # one entry per finished epoch
        "epoch": [1, 2, ...],
        "train_loss": [...], "test_loss": [...],
        "test_accuracy": [...],            # percent
        "seconds": [...]                   # wall time of the epoch (train + test)
      },
      "complete": true,                    # all config.epochs epochs done
      "command": "torchkron reproduce ...",
      "environment": {"torch": ..., "python": ..., "numpy": ..., "platform": ...,
                      "machine": ..., "processor": ..., "cpu_count": ..., "threads": ...,
                      "git_sha": ...},
      "started_at": "2026-11-27T15:44:00+00:00",
      "finished_at": "...",                # null until complete
      "extra": {...}                       # optional, producer-specific (sweep, compress)
    }

Everything that reads results (summary, tables, plots) reads these files only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torchkron.experiments.errors import UserError

__all__ = [
    "RUNS_DIR",
    "SCHEMA",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cpu_name",
    "cpuinfo_field",
    "environment",
    "git_sha",
    "load_complete_runs",
    "load_run",
    "load_runs",
    "now_iso",
    "run_filename",
]

SCHEMA = 1
#: Where a results folder keeps its run files.
RUNS_DIR = "runs"

RunRecord = dict[str, Any]


def run_filename(variant: str, seed: int) -> str:
    return f"{variant}--seed{seed}.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_sha(cwd: Path | None = None) -> str | None:
    """The checkout's commit, with ``-dirty`` when it has local changes; None outside git.

    By default the checkout this module lives in (an editable install), whatever the
    current directory.
    """
    try:
        where = str(cwd or Path(__file__).resolve().parent)
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every result."""
    import numpy
    import torch

    return {
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "git_sha": git_sha(),
    }


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


def load_run(path: Path) -> RunRecord:
    """Read one run file; a clear error if it is not a run record."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"Run file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"Run file {path} is not valid JSON ({exc}); delete it and rerun that run "
            "(reproduce/sweep with --resume redo only missing runs)."
        ) from None
    missing = {"schema", "variant", "seed", "config", "history"} - set(record)
    if not isinstance(record, dict) or missing:
        raise UserError(
            f"Run file {path} is not a torchkron run record (missing {sorted(missing)}); "
            "remove it from the runs folder."
        )
    if record["schema"] != SCHEMA:
        raise UserError(
            f"Run file {path} has schema {record['schema']}, this torchkron reads schema "
            f"{SCHEMA}; rerun it with this version."
        )
    return dict(record)


def iter_run_files(runs_dir: Path) -> Iterator[Path]:
    yield from sorted(runs_dir.glob("*.json"))


def load_runs(runs_dir: Path, *, complete_only: bool = True) -> list[RunRecord]:
    """Every run record in ``runs_dir`` (sorted by file name; none if it does not exist)."""
    records = [load_run(p) for p in iter_run_files(runs_dir)]
    return [r for r in records if r.get("complete") or not complete_only]


def load_complete_runs(
    out_dir: Path, command: str, *, keep: Callable[[RunRecord], bool] | None = None
) -> list[RunRecord]:
    """The complete run records in ``out_dir/runs`` that ``keep`` accepts (all by default).

    A UserError that names ``torchkron COMMAND`` when there are none: no runs folder, an
    empty one, or only unfinished runs.
    """
    runs_dir = out_dir / RUNS_DIR
    if not runs_dir.is_dir():
        raise UserError(
            f"No runs folder at {runs_dir}; run `torchkron {command} --out {out_dir}` first."
        )
    records = [r for r in load_runs(runs_dir, complete_only=False) if keep is None or keep(r)]
    complete = [r for r in records if r.get("complete")]
    if complete:
        return complete
    if records:
        raise UserError(
            f"None of the {len(records)} run file(s) in {runs_dir} is complete; finish them "
            f"with `torchkron {command} --out {out_dir} --resume` and the same options, then "
            "report again."
        )
    raise UserError(
        f"The runs folder {runs_dir} is empty; produce runs with "
        f"`torchkron {command} --out {out_dir}` first."
    )
