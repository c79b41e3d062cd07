"""The study's report, a pure function of its run files: the picked learning rates, the
table, the findings (``summary.json``, ``results.md``) and ``accuracy.png``.

A difference counts as beyond seed noise when ``|diff| > 2 x`` the pooled sample std of the
two arms' test accuracies over seeds (:func:`torchkron.experiments.mnist.findings.compare`,
the criterion of the other reports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_json, atomic_write_text
from torchkron.experiments.common.runs import RUNS_DIR, RunRecord, load_run, load_runs
from torchkron.experiments.mnist.findings import NOISE_FACTOR, Comparison, compare
from torchkron.experiments.mnist.summary import mean, sample_std

__all__ = [
    "PLOT_FILE",
    "RESULTS_FILE",
    "SUMMARY_FILE",
    "at_edge",
    "load_records",
    "pick_rates",
    "picks",
    "summarize",
    "tried_rates",
    "write_report",
]

RESULTS_FILE = "results.md"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "accuracy.png"
_TUNE_SEED = 0  # trainer.TUNE_SEED, kept here so that the report needs no torch
_METHOD_ORDER = {"lora": 0, "lokr": 1, "full": 2, "scratch": 3}
NOISE = f"|diff| > {NOISE_FACTOR:g} x pooled sample std over seeds"


def load_records(out_dir: Path) -> list[RunRecord]:
    """The finished run files of the study in ``out_dir/runs``."""
    return [r for r in load_runs(out_dir / RUNS_DIR) if r.get("kind") == "adapters"]


def _val(record: RunRecord) -> float | None:
    """The final-epoch validation accuracy; None for a diverged run."""
    values = record["history"]["val_accuracy"]
    return None if record.get("diverged") or not values else float(values[-1])


def picks(records: Sequence[RunRecord]) -> dict[str, float]:
    """Each arm's rate: the best final validation accuracy of its tuning runs (the smaller
    rate on a tie); arms whose every tuning run diverged get none."""
    best: dict[str, tuple[float, float]] = {}
    for r in records:
        if r["seed"] != _TUNE_SEED or (acc := _val(r)) is None:
            continue
        arm, lr = r["arm"]["name"], float(r["lr"])
        if arm not in best or (acc, -lr) > (best[arm][0], -best[arm][1]):
            best[arm] = (acc, lr)
    return {arm: lr for arm, (_, lr) in best.items()}


def tried_rates(records: Sequence[RunRecord]) -> dict[str, list[float]]:
    """The rates of each arm's tuning runs (diverged ones included), sorted."""
    rates: dict[str, set[float]] = {}
    for r in records:
        if r["seed"] == _TUNE_SEED:
            rates.setdefault(r["arm"]["name"], set()).add(float(r["lr"]))
    return {arm: sorted(values) for arm, values in rates.items()}


def at_edge(lr: float | None, tried: Sequence[float]) -> str | None:
    """``"top"`` or ``"bottom"`` when ``lr`` is the largest or smallest of several rates
    tried (the best rate may lie beyond), else None."""
    if lr is None or len(tried) < 2:
        return None
    return "top" if lr == max(tried) else "bottom" if lr == min(tried) else None


def pick_rates(out_dir: Path, arms: Sequence[str]) -> dict[str, float]:
    """:func:`picks` over the tuning runs of ``arms`` in ``out_dir`` (every rate tried)."""
    return picks([r for r in load_records(out_dir) if r["arm"]["name"] in arms])


def _order(arm: Mapping[str, Any]) -> tuple[Any, ...]:
    budget = (arm.get("matching") or {}).get("budget_count") or arm["trainable"]
    adapter = arm["method"] in ("lora", "lokr")
    return (not adapter, budget if adapter else 0, _METHOD_ORDER[arm["method"]], arm["name"])


def _arm_summary(name: str, runs: Sequence[RunRecord], lr: float | None) -> dict[str, Any]:
    first = runs[0]
    tune = sorted((r for r in runs if r["seed"] == _TUNE_SEED), key=lambda r: r["lr"])
    finals = sorted(
        (r for r in runs if r["seed"] != _TUNE_SEED and r["lr"] == lr and not r["diverged"]),
        key=lambda r: r["seed"],
    )
    test = [float(r["history"]["test_accuracy"][-1]) for r in finals]
    rates = [float(r["lr"]) for r in tune]
    return {
        "name": name,
        "method": first["arm"]["method"],
        "options": first["arm"]["options"],
        "budget": first["arm"]["budget"],
        "matching": first["arm"]["matching"],
        "trainable": first["trainable"],
        "grid": [{"lr": r["lr"], "val_accuracy": _val(r)} for r in tune],
        "picked_lr": lr,
        "edge": at_edge(lr, rates) is not None,
        "seeds": [r["seed"] for r in finals],
        "test_accuracy": {
            "mean": mean(test) if test else None,
            "std": sample_std(test) if test else None,
            "values": test,
        },
    }


def _comparison(a: Mapping[str, Any], b: Mapping[str, Any]) -> Comparison | None:
    if not (a["seeds"] and b["seeds"]):
        return None
    return compare(a, b)


def _source(out_dir: Path, records: Sequence[RunRecord]) -> dict[str, Any] | None:
    infos = [r["source"] for r in records if r.get("source")]
    if not infos:
        return None
    info = dict(infos[0])
    hashes = sorted({i["state_sha256"] for i in infos})
    info["mixed"] = len(hashes) > 1
    path = out_dir / "source" / RUNS_DIR / "original--seed0.json"
    if path.is_file():
        record = load_run(path)
        info["config"] = record["config"]
    return info


def summarize(out_dir: Path, records: Sequence[RunRecord]) -> dict[str, Any]:
    """The study's summary from its run files (and the source's run file)."""
    if not records:
        raise UserError(
            f"No finished adapter runs in {out_dir / RUNS_DIR}; run `torchkron adapt --out "
            f"{out_dir}` first."
        )
    chosen = picks(records)
    by_arm: dict[str, list[RunRecord]] = {}
    for r in records:
        by_arm.setdefault(r["arm"]["name"], []).append(r)
    arms = sorted(
        (_arm_summary(name, runs, chosen.get(name)) for name, runs in by_arm.items()), key=_order
    )
    named = {a["name"]: a for a in arms}
    comparisons = []
    for a in arms:
        if a["method"] == "lokr" and a["budget"] in named:
            comparisons.append(("lokr-vs-lora", a, named[a["budget"]]))
    adapters = [a for a in arms if a["method"] in ("lora", "lokr")]
    for other in ("full", "scratch"):
        if other in named:
            comparisons += [(f"vs-{other}", a, named[other]) for a in adapters]
    if "full" in named and "scratch" in named:
        comparisons.append(("full-vs-scratch", named["full"], named["scratch"]))
    found = []
    for kind, a, b in comparisons:
        c = _comparison(a, b)
        if c is not None:
            found.append({"kind": kind, **c.__dict__, "text": c.text()})
    envs = [r["environment"] for r in records]
    return {
        "source": _source(out_dir, records),
        "config": {k: v for k, v in records[0]["config"].items() if k != "lr"},
        "arms": arms,
        "comparisons": found,
        "noise_criterion": NOISE,
        "runs": len(records),
        "environment": {
            key: sorted({str(e.get(key)) for e in envs})
            for key in ("torch", "peft", "processor", "threads")
        },
        "commands": sorted({str(r["command"]) for r in records}),
        "seconds": sum(sum(r["history"]["seconds"]) for r in records),
    }


def write_report(out_dir: Path, *, plots: bool = True) -> list[Path]:
    """Write ``summary.json``, ``results.md`` (and ``accuracy.png``); returns their paths,
    ``results.md`` first."""
    from torchkron.experiments.adapters.tables import results_markdown

    summary = summarize(out_dir, load_records(out_dir))
    paths = [out_dir / RESULTS_FILE, out_dir / SUMMARY_FILE]
    atomic_write_text(paths[0], results_markdown(summary))
    atomic_write_json(paths[1], summary)
    if plots:
        from torchkron.experiments.adapters.plot import plot_accuracy

        paths.append(plot_accuracy(summary, out_dir / PLOT_FILE))
    return paths
