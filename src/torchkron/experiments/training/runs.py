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
import errno
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.errors import OutputError, UserError

__all__ = [
    "RESULT_DIRS",
    "RUNS_DIR",
    "SCHEMA",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cpu_name",
    "cpuinfo_field",
    "dumps_json",
    "environment",
    "git_sha",
    "json_safe",
    "load_complete_runs",
    "load_run",
    "load_runs",
    "now_iso",
    "record_problem",
    "run_filename",
    "write_error",
]

SCHEMA = 1
#: Where a results folder keeps its run files.
RUNS_DIR = "runs"

RunRecord = dict[str, Any]


def run_filename(variant: str, seed: int) -> str:
    return f"{variant}--seed{seed}.json"


def write_error(path: Path, exc: OSError) -> OutputError:
    """The OutputError for an OSError met while writing ``path``: path, cause and fix."""
    cause = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        fix = (
            "Free some disk space (or pass --out to a folder on a disk with room), then rerun "
            "the same command with --resume: finished epochs are kept."
        )
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "Pass --out to a folder you can write to."
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = (
            "A file stands where a folder is needed (or the reverse); move it away or pass "
            "--out to another folder."
        )
    else:
        fix = "Check the folder, or pass --out to another one."
    where = exc.filename if exc.filename and Path(str(exc.filename)) != path else None
    return OutputError(f"Could not write {path}{f' ({where})' if where else ''}: {cause}. {fix}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half.

    Raises:
        OutputError: the file cannot be written (read-only or full disk, a file where a
            folder should be); nothing half-written is left behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of ``obj``: non-finite floats become ``null``, never bare ``NaN``."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=False, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj, indent=2) + "\n")


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


def environment(output: Path | None = None) -> dict[str, Any]:
    """Versions and machine facts recorded with every result.

    ``output`` is the folder the result goes to; its changes do not make the git stamp
    dirty.
    """
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
        "git_sha": git_sha(ignore=() if output is None else (output,)),
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
    """Read one run file; a clear error if it is not a run record.

    LM run records (``"kind": "lm"``, written by ``torchkron lm``) keep their history per
    evaluation rather than per epoch: for them only the JSON and the common keys are
    checked here, and the LM trainer checks the rest.
    """
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"Run file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"Run file {path} is not valid JSON ({exc}); delete it and rerun that run "
            "(reproduce/sweep with --resume redo only missing runs)."
        ) from None
    if not isinstance(record, dict):
        raise UserError(
            f"Run file {path} is not a torchkron run record (it holds a JSON "
            f"{type(record).__name__}, not an object); remove it from the runs folder."
        )
    missing = {"schema", "variant", "seed", "config", "history"} - set(record)
    if missing:
        raise UserError(
            f"Run file {path} is not a torchkron run record (missing {sorted(missing)}); "
            "remove it from the runs folder."
        )
    if record["schema"] != SCHEMA:
        raise UserError(
            f"Run file {path} has schema {record['schema']}, this torchkron reads schema "
            f"{SCHEMA}; rerun it with this version."
        )
    problem = None if record.get("kind") == "lm" else record_problem(record)
    if problem:
        raise UserError(
            f"Run file {path} is damaged ({problem}); delete it and rerun that run "
            "(reproduce/sweep with --resume redo only missing runs)."
        )
    return dict(record)


_HISTORY_KEYS = ("epoch", "train_loss", "test_loss", "test_accuracy", "seconds")


def record_problem(record: Any) -> str | None:
    """What is wrong with the structure of a run record, or None when it is sound."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__} instead of an object"
    if not isinstance(record.get("variant"), str):
        return "'variant' is not a string"
    if not isinstance(record.get("seed"), int) or isinstance(record.get("seed"), bool):
        return "'seed' is not a whole number"
    if not isinstance(record.get("config"), dict):
        return "'config' is not an object"
    history = record.get("history")
    if not isinstance(history, dict):
        return "'history' is not an object"
    lengths = set()
    for key in _HISTORY_KEYS:
        values = history.get(key)
        if not isinstance(values, list):
            return f"history '{key}' is not a list"
        # null stands for a non-finite number that JSON cannot hold.
        if not all(v is None or isinstance(v, (int, float)) for v in values):
            return f"history '{key}' holds something other than numbers"
        lengths.add(len(values))
    if len(lengths) > 1:
        return "the history lists have different lengths"
    return None


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
