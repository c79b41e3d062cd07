"""Run records -> ``summary.json``: per-variant statistics over seeds, and the findings.

A pure function of the run files: :func:`summarize` reads nothing but its argument, so
``torchkron report DIR`` regenerates the same summary, byte for byte, from
``DIR/runs/*.json`` every time (``generated_at`` is when the last summarised run finished).

Schema (``schema: 1``)::

    {
      "schema": 1,
      "generated_at": "2026-11-27T15:44:00+00:00",
      "source": "runs/",
      "runs": 45,                          # runs summarised (after the filters below)
      "environment": {"torch": [...], "python": [...], "processor": [...],
                      "threads": [...], "git_sha": [...]},     # distinct values, sorted
      "compression_reference": "original", # variant the compression is relative to, or null
      "variants": [                        # sorted by (order, name)
        {"name", "description", "family", "order", "matches" (str | null),
         "weights", "parameters", "compression" (float | null),
         "seeds": [0, 1, ...], "runs", "epochs", "config": {...},
         "test_accuracy": {"mean", "std", "min", "max"},   # final epoch, percent
         "test_loss": {"mean", "std"},                       # final epoch
         "best_test_accuracy": {"mean", "std"},              # max over epochs
         "train_loss": {"mean"},                             # final epoch
         "seconds_per_epoch": float, "total_seconds": float,
         "curves": {"epoch": [...], "test_accuracy_mean": [...], "test_accuracy_std": [...],
                    "test_loss_mean": [...], "test_loss_std": [...]}}
      ],
      "findings": [{"id", "claim", "holds", "evidence", "criterion", "comparisons"}],
      "warnings": ["..."],                 # runs left out, and why
      "wall_seconds": 1234.5               # sum of every summarised run's epoch seconds
    }

Standard deviations are sample standard deviations (``ddof=1``) over seeds, 0 for one
seed. Runs of one variant whose config differs from that variant's most common config
are left out with a warning, as are duplicate seeds and runs without any epoch.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.environment import now_iso
from torchkron.experiments.common.files import atomic_write_json
from torchkron.experiments.mnist.findings import findings

__all__ = [
    "IGNORED_CONFIG_KEYS",
    "SUMMARY_FILE",
    "SUMMARY_SCHEMA",
    "mean",
    "sample_std",
    "save_summary",
    "summarize",
    "write_summary",
]

SUMMARY_SCHEMA = 1
SUMMARY_FILE = "summary.json"

#: Config keys that change how fast a run goes, not what it computes: runs that differ
#: only in these are summarised together.
IGNORED_CONFIG_KEYS = frozenset({"threads"})

#: Environment facts listed (distinct values) in the summary.
ENVIRONMENT_KEYS = ("torch", "python", "processor", "threads", "git_sha")

#: ``order`` of records that lack one (sorts them after the registry's variants).
DEFAULT_ORDER = 1000

Record = Mapping[str, Any]


# --- statistics ----------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (``math.fsum``, so the result does not depend on rounding order)."""
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (``ddof=1``); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def _stats(values: Sequence[float], *, extremes: bool = False) -> dict[str, float]:
    out = {"mean": mean(values), "std": sample_std(values)}
    if extremes:
        out |= {"min": min(values), "max": max(values)}
    return out


# --- selecting the runs to summarise -------------------------------------------------


def _config_key(record: Record) -> str:
    """Canonical text of the config (ignored keys dropped) and spec: runs alike or not."""
    config = dict(record.get("config") or {})
    for key in IGNORED_CONFIG_KEYS:
        config.pop(key, None)
    return json.dumps({"config": config, "spec": record.get("spec")}, sort_keys=True)


def _epochs_done(record: Record) -> int:
    return len(record["history"].get("test_accuracy") or [])


def _config_difference(chosen: Record, other: Record) -> str:
    """Which config keys (or the spec) differ, as ``key: other vs chosen``."""
    a, b = dict(chosen.get("config") or {}), dict(other.get("config") or {})
    diffs = [
        f"{k}: {b.get(k)!r} vs {a.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in IGNORED_CONFIG_KEYS and a.get(k) != b.get(k)
    ]
    if chosen.get("spec") != other.get("spec"):
        diffs.append("model spec differs")
    return "; ".join(diffs)


def _select(name: str, runs: Sequence[Record], warnings: list[str]) -> list[Record]:
    """The runs of one variant to summarise: one per seed, all with the most common config.

    Ties between configs go to the one with more epochs (the longer experiment), then to
    the canonical text, so the choice does not depend on file order.
    """
    usable = [r for r in runs if _epochs_done(r) > 0]
    if len(usable) < len(runs):
        warnings.append(f"{name}: {len(runs) - len(usable)} run(s) with no epoch left out.")
    if not usable:
        return []
    counts = Counter(_config_key(r) for r in usable)
    epochs = {_config_key(r): _epochs_done(r) for r in usable}
    chosen_key = min(counts, key=lambda k: (-counts[k], -epochs[k], k))
    chosen = [r for r in usable if _config_key(r) == chosen_key]
    others = [r for r in usable if _config_key(r) != chosen_key]
    if others:
        why = sorted({_config_difference(chosen[0], r) for r in others})
        warnings.append(
            f"{name}: {len(others)} of {len(usable)} runs use a different config than the "
            f"most common one ({' | '.join(why)}) and are left out."
        )
    by_seed: dict[int, Record] = {}
    for record in sorted(chosen, key=lambda r: int(r["seed"])):
        if record["seed"] in by_seed:
            warnings.append(f"{name}: duplicate run for seed {record['seed']} left out.")
            continue
        by_seed[int(record["seed"])] = record
    return list(by_seed.values())


# --- one variant ---------------------------------------------------------------------


def _final(record: Record, key: str) -> float:
    return float(record["history"][key][-1])


def _curves(runs: Sequence[Record]) -> dict[str, list[float] | list[int]]:
    """Per-epoch mean and std over seeds (over the epochs every run has)."""
    n = min(_epochs_done(r) for r in runs)
    curves: dict[str, list[float] | list[int]] = {
        "epoch": [int(e) for e in runs[0]["history"]["epoch"][:n]]
    }
    for key in ("test_accuracy", "test_loss"):
        columns = [[float(r["history"][key][i]) for r in runs] for i in range(n)]
        curves[f"{key}_mean"] = [mean(c) for c in columns]
        curves[f"{key}_std"] = [sample_std(c) for c in columns]
    return curves


def _matches(record: Record) -> str | None:
    """The variant a dense baseline matches: from the spec's extra, else the record's."""
    for extra in ((record.get("spec") or {}).get("extra"), record.get("extra")):
        if isinstance(extra, Mapping) and extra.get("matches"):
            return str(extra["matches"])
    return None


def _variant_summary(name: str, runs: Sequence[Record]) -> dict[str, Any]:
    first = runs[0]
    seconds = [float(s) for r in runs for s in r["history"]["seconds"]]
    return {
        "name": name,
        "description": first.get("description", ""),
        "family": first.get("family", "custom"),
        "order": int(first.get("order", DEFAULT_ORDER)),
        "matches": _matches(first),
        "weights": int(first["weights"]),
        "parameters": int(first.get("parameters", first["weights"])),
        "compression": None,  # filled in once every variant is known
        "seeds": [int(r["seed"]) for r in runs],
        "runs": len(runs),
        "epochs": int(first["config"].get("epochs", _epochs_done(first))),
        "config": dict(first["config"]),
        "test_accuracy": _stats([_final(r, "test_accuracy") for r in runs], extremes=True),
        "test_loss": _stats([_final(r, "test_loss") for r in runs]),
        "best_test_accuracy": _stats(
            [max(float(a) for a in r["history"]["test_accuracy"]) for r in runs]
        ),
        "train_loss": {"mean": mean([_final(r, "train_loss") for r in runs])},
        "seconds_per_epoch": mean(seconds) if seconds else 0.0,
        "total_seconds": math.fsum(seconds),
        "curves": _curves(runs),
    }


# --- the whole summary ---------------------------------------------------------------


def _is_dense(variant: Mapping[str, Any], spec: Mapping[str, Any] | None) -> bool:
    if variant["family"] == "dense-baseline":
        return True
    layers = [(spec or {}).get(k) for k in ("hidden", "output")]
    return all(
        isinstance(layer, Mapping) and layer.get("shapes") is None and not layer.get("lowrank")
        for layer in layers
    )


def _set_compression(variants: list[dict[str, Any]], specs: Mapping[str, Any]) -> str | None:
    """Weights of the reference / weights, for each variant; returns the reference's name.

    The reference is ``original`` when it was run, else the largest dense variant.
    """
    by_name = {v["name"]: v for v in variants}
    reference = by_name.get("original")
    if reference is None:
        dense = [v for v in variants if _is_dense(v, specs.get(v["name"]))]
        reference = max(dense, key=lambda v: (v["weights"], v["name"]), default=None)
    if reference is None:
        return None
    for v in variants:
        v["compression"] = reference["weights"] / v["weights"] if v["weights"] else None
    return str(reference["name"])


def _environment(runs: Iterable[Record]) -> dict[str, list[Any]]:
    """Distinct values of each environment fact over the runs (None left out)."""
    seen: dict[str, set[Any]] = {k: set() for k in ENVIRONMENT_KEYS}
    for record in runs:
        env = record.get("environment") or {}
        for key in ENVIRONMENT_KEYS:
            if env.get(key) is not None:
                seen[key].add(env[key])
    return {k: sorted(v, key=str) for k, v in seen.items()}


def _config_warning(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    """A warning when variants were trained with different recipes (unfair comparison)."""

    def recipe(v: Mapping[str, Any]) -> str:
        return json.dumps(
            {k: x for k, x in v["config"].items() if k not in IGNORED_CONFIG_KEYS}, sort_keys=True
        )

    groups: dict[str, list[str]] = {}
    for v in variants:
        groups.setdefault(recipe(v), []).append(v["name"])
    if len(groups) < 2:
        return []
    parts = [", ".join(names) for names in groups.values()]
    return [f"Variants were trained with different configs: {' / '.join(parts)}."]


def _last_finished(records: Sequence[Record]) -> str:
    # From the records, not the clock, so regenerating the summary changes nothing.
    stamps = [str(r["finished_at"]) for r in records if r.get("finished_at")]
    return max(stamps) if stamps else now_iso()


def summarize(records: Iterable[Record], *, generated_at: str | None = None) -> dict[str, Any]:
    """The summary of ``records`` (run records as loaded by :func:`load_runs`).

    Incomplete records are left out: only finished runs are compared. The result does not
    depend on the order of ``records``.
    """
    warnings: list[str] = []
    by_variant: dict[str, list[Record]] = {}
    for record in records:
        if record.get("complete"):
            by_variant.setdefault(str(record["variant"]), []).append(record)

    variants: list[dict[str, Any]] = []
    specs: dict[str, Any] = {}
    used: list[Record] = []
    for name in sorted(by_variant):
        runs = _select(name, by_variant[name], warnings)
        if runs:
            variants.append(_variant_summary(name, runs))
            specs[name] = runs[0].get("spec")
            used.extend(runs)
    variants.sort(key=lambda v: (v["order"], v["name"]))
    reference = _set_compression(variants, specs)
    warnings.extend(_config_warning(variants))

    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA,
        "generated_at": generated_at or _last_finished(used),
        "source": "runs/",
        "runs": len(used),
        "environment": _environment(used),
        "compression_reference": reference,
        "variants": variants,
        "findings": [],
        "warnings": warnings,
        "wall_seconds": math.fsum(v["total_seconds"] for v in variants),
    }
    summary["findings"] = findings(summary)
    return summary


def save_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` to ``out_dir/summary.json`` atomically; return the path."""
    path = out_dir / SUMMARY_FILE
    atomic_write_json(path, summary)
    return path


def write_summary(out_dir: Path, records: Iterable[Record]) -> Path:
    """Summarise ``records`` and write ``out_dir/summary.json``; return the path."""
    return save_summary(out_dir, summarize(records))
