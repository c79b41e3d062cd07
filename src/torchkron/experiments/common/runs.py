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

import json
import ntpath
import posixpath
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import UserError

__all__ = [
    "RUNS_DIR",
    "SCHEMA",
    "check_run_name",
    "load_complete_runs",
    "load_run",
    "load_runs",
    "record_problem",
    "run_filename",
]

SCHEMA = 1
#: Where a results folder keeps its run files.
RUNS_DIR = "runs"

RunRecord = dict[str, Any]


def check_run_name(name: str) -> str:
    """``name`` when it can name a run's files, else a UserError naming the rule it breaks.

    A run name becomes a file name inside the output folder (``OUT/runs/NAME--seed0.json``,
    ``OUT/checkpoints/...``), so it must be one plain file name: not empty, no path
    separator, no ``..``, not an absolute path, no control characters. Anything else could
    write outside ``--out``.
    """
    rule = None
    if not name:
        rule = "it is empty"
    elif posixpath.isabs(name) or ntpath.isabs(name):
        rule = "it is an absolute path"
    elif "/" in name or "\\" in name:
        rule = "it contains a path separator ('/' or '\\')"
    elif ".." in name:
        rule = "it contains '..'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        rule = "it contains a control character"
    if rule is not None:
        raise UserError(
            f"Run name {name!r} cannot be used: {rule}. A run name becomes a file name inside "
            "--out, so it must be one plain name without '/', '\\' or '..' (e.g. "
            "kron-mlp-k2-r4)."
        )
    return name


def run_filename(variant: str, seed: int) -> str:
    """``VARIANT--seedN.json``; a UserError when ``variant`` is not a plain name
    (see :func:`check_run_name`)."""
    return f"{check_run_name(variant)}--seed{seed}.json"


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
