"""The LM report: a pure function of run files, honest about missing runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from torchkron.experiments.common.runs import SCHEMA
from torchkron.experiments.lm.report import (
    compare,
    load_lm_runs,
    report_markdown,
    summarize,
    write_report,
)


def record(name: str, seed: int, loss: float, *, family: str = "kron", phase: str = "main",
           lr: float = 1e-3, complete: bool = True) -> dict[str, Any]:  # fmt: skip
    return {
        "schema": SCHEMA,
        "kind": "lm",
        "variant": name,
        "description": name,
        "family": family,
        "spec": {"n_embd": 128},
        "seed": seed,
        "weights_by_role": {"attn.qkv": 4, "attn.proj": 2, "mlp.fc": 10, "mlp.proj": 10},
        "block_weights": 26,
        "parameters": 100,
        "flops_per_token": 2_000_000,
        "config": {"lr": lr, "iters": 2000 if phase == "main" else 500},
        "history": {"iter": [2000]},
        "final": {
            "val_loss": loss + 0.01,
            "val_loss_full": loss,
            "train_seconds": 600.0,
            "step_seconds": 0.3,
            "tokens_per_s": 2560.0,
        }
        if complete
        else None,
        "complete": complete,
        "environment": {"processor": "cpu", "cpu_count": 2, "threads": 1, "git_sha": "abc"},
        "extra": {"phase": phase, "base_config": name.split("-lr")[0].removeprefix("lrsweep-")},
    }


def write_runs(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir(parents=True)
    for r in records:
        (runs / f"{r['variant']}--seed{r['seed']}.json").write_text(json.dumps(r))
    return tmp_path


def test_compare_criterion() -> None:
    assert compare([1.0, 1.02, 1.01], [1.2, 1.21, 1.19])["verdict"] == "lower"
    assert compare([1.0, 1.2], [1.05, 1.15])["verdict"] == "within noise"
    assert compare([1.0], [1.2, 1.3])["verdict"] == "too few seeds"
    c = compare([2.0, 2.0 + 2e-3], [1.0, 1.0 + 2e-3])
    assert c["gap"] == pytest.approx(1.0)
    assert c["verdict"] == "higher"


def test_summary_table_findings_and_missing_runs(tmp_path: Path) -> None:
    recs = [record("dense", s, 1.90 + 0.01 * s, family="dense") for s in range(3)]
    recs += [record("kron-mlp-k2-r4", s, 2.00 + 0.01 * s) for s in range(3)]
    recs += [record("lowrank-mlp-r4", s, 2.10 + 0.01 * s, family="lowrank") for s in range(2)]
    recs += [record("lrsweep-dense-lr1e-3", 0, 2.3, family="dense", phase="lr-sweep")]
    recs += [
        record("lrsweep-dense-lr2e-3", 0, 2.2, family="dense", phase="lr-sweep", lr=2e-3),
        record("monarch-mlp-b32", 0, 2.0, family="monarch", complete=False),
    ]
    out = write_runs(tmp_path, recs)
    summary = summarize(load_lm_runs(out))
    rows = {r["config"]: r for r in summary["rows"]}
    assert rows["dense"]["val_mean"] == pytest.approx(1.91)
    assert rows["kron-mlp-k2-r4"]["mlp_weights"] == 20
    assert rows["narrow-mlp-h20"]["seeds_done"] == []
    assert summary["best_lr"] == {"dense": 2e-3}
    assert "lowrank-mlp-r4 seed 2" in summary["missing_main"]
    assert "lrsweep-dense-lr4e-3 seed 0" in summary["missing_sweep"]
    assert summary["unfinished"] == ["monarch-mlp-b32 seed 0 (iter 2000/2000)"]
    findings = {f["question"]: f for f in summary["findings"]}
    low = findings["MLP at 3.9%: Kronecker vs low-rank"]
    assert low["verdict"] == "lower"
    assert low["gap"] == pytest.approx(2.01 - 2.105)
    assert findings["dense (lr 0.001) vs nanoGPT's 1.88 anchor"]["gap"] == pytest.approx(0.03)
    assert "dense-recipe seed 0" in summary["missing_main"]
    assert "dense-recipe seed 1" not in summary["missing_main"]  # planned with one seed
    assert (
        "not measured yet (monarch-mlp-b32 missing)"
        in (findings["MLP at 3.9%: Kronecker vs Monarch"]["text"])
    )
    md = report_markdown(summary)
    assert "| narrow-mlp-h20 | dense MLP hidden 20 | | | | | | | not run yet | 0/3 |" in md
    assert "Best at an end of the grid: dense (highest rate" in md  # of the rates that ran
    paths = write_report(out, plots=True)
    assert [p.name for p in paths] == [
        "summary.json",
        "results.md",
        "frontier_params.png",
        "frontier_time.png",
    ]
    assert json.loads((out / "summary.json").read_text())["complete_runs"] == 10


def test_report_of_an_empty_folder_says_nothing_ran(tmp_path: Path) -> None:
    summary = summarize(load_lm_runs(tmp_path))
    assert summary["complete_runs"] == 0
    assert "No sweep run finished yet." in report_markdown(summary)


def test_matched_compute_picks_the_best_dense_model_no_more_expensive(tmp_path: Path) -> None:
    def rec(name: str, seed: int, loss: float, family: str, flops: int) -> dict[str, Any]:
        r = record(name, seed, loss, family=family)
        r["flops_per_token"] = flops
        return r

    recs = []
    for s in range(2):
        recs += [
            rec("kron-mlp-k2-r4", s, 2.00 + 0.002 * s, "kron", 1_260_000),
            rec("kron-mlp-k2-r1", s, 2.10 + 0.002 * s, "kron", 800_000),
            rec("dense", s, 1.70 + 0.002 * s, "dense", 1_720_000),  # costlier: not a match
            rec("dense-e96", s, 1.80 + 0.002 * s, "narrow", 1_000_000),
            rec("dense-e64", s, 1.90 + 0.002 * s, "narrow", 470_000),
            rec("dense-recipe", s, 1.50 + 0.002 * s, "dense", 470_000),  # the anchor: excluded
        ]
    text = report_markdown(summarize(load_lm_runs(write_runs(tmp_path, recs))))
    r4 = next(line for line in text.splitlines() if "matched compute: kron-mlp-k2-r4" in line)
    assert "kron-mlp-k2-r4 2.001 vs dense-e96 1.801: gap +0.200" in r4
    assert r4.endswith("-> higher; dense-e96 1.00M FLOPs/token")
    r1 = next(line for line in text.splitlines() if "matched compute: kron-mlp-k2-r1" in line)
    assert "vs dense-e64 1.901" in r1


def test_table_shows_the_side_by_side_step_bench(tmp_path: Path) -> None:
    out = write_runs(tmp_path, [record("dense", 0, 1.9, family="dense")])
    bench = {"rows": [{"config": "dense", "step_seconds": 0.0753, "ratio_vs_dense": 1.0}]}
    (out / "step_bench.json").write_text(json.dumps(bench))
    write_report(out, plots=False)
    lines = (out / "results.md").read_text().splitlines()
    row = next(x for x in lines if x.startswith("| dense |"))
    assert "| 0.300 | 0.075 | 1.900 |" in row  # the run's own step time, then the bench's
    (out / "step_bench.json").write_text("{}")
    from torchkron.experiments.common.errors import UserError

    with pytest.raises(UserError, match=r"step_bench.json is not a step benchmark file \("):
        write_report(out, plots=False)
