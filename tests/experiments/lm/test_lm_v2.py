"""The second GPT study: structure-aware rates, its schedule, equal compute, its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchkron import lr_multipliers
from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.data.text import load_text
from torchkron.experiments.lm.config import LMConfig
from torchkron.experiments.lm.gpt import GPT, GPTSpec, LinearSpec
from torchkron.experiments.lm.report_v2 import confound, summarize_v2
from torchkron.experiments.lm.schedule_v2 import (
    DENSE_LR,
    NO_MULTIPLIER,
    equal_compute_width,
    study_plan_v2,
)
from torchkron.experiments.lm.trainer import LMJob, LMPaths, lr_at, train_lm

ROOT = Path(__file__).resolve().parents[3]
SMALL = {"n_layer": 1, "n_embd": 32, "block_size": 16}
KRON = LinearSpec("kron", rank=4)


def _groups_by_name(opt: torch.optim.Optimizer) -> dict[str, float]:
    return {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}


@pytest.mark.parametrize(
    "mlp", [KRON, LinearSpec("lowrank", rank=4), LinearSpec("monarch", nblocks=4)]
)
def test_structure_aware_groups_have_the_expected_rates(mlp: LinearSpec) -> None:
    from torchkron.experiments.lm.trainer import _optimizer

    model = GPT(GPTSpec(vocab_size=11, **SMALL, mlp=mlp))
    config = LMConfig(optimizer="structure-aware", lr=1e-3, dense_lr=4e-3)
    got = _groups_by_name(_optimizer(model, config))
    rules = {r.name: r for r in lr_multipliers(model)}
    assert set(got) == set(rules)  # every trainable parameter once (the head is tied)
    for name, lr in got.items():
        rule = rules[name]
        if name.startswith("blocks.0.mlp.") and not name.endswith("bias"):
            assert rule.kind == "factor"
            assert lr == pytest.approx(1e-3 * rule.multiplier, rel=1e-12)
        else:  # embeddings, attention, norms: the dense family's rate
            assert lr == pytest.approx(4e-3, rel=1e-12), name
    assert {rules[n].multiplier for n in got if rules[n].kind == "factor"} != {1.0}
    # weight decay as the first study's: every 2+-dim tensor, the embeddings included
    opt = _optimizer(model, config)
    decayed = {n for g in opt.param_groups if g["weight_decay"] for n in g["param_names"]}
    assert "wte.weight" in decayed
    assert "blocks.0.ln_1.weight" not in decayed


@pytest.mark.parametrize("mlp", [KRON, LinearSpec("lowrank", rank=4)])
def test_two_rate_groups_drop_only_the_multipliers(mlp: LinearSpec) -> None:
    from torchkron.experiments.lm.trainer import _optimizer

    model = GPT(GPTSpec(vocab_size=11, **SMALL, mlp=mlp))
    base = {"lr": 1e-3, "dense_lr": 4e-3}
    two = _groups_by_name(_optimizer(model, LMConfig(optimizer="two-rate", **base)))
    aware = _groups_by_name(_optimizer(model, LMConfig(optimizer="structure-aware", **base)))
    rules = {r.name: r for r in lr_multipliers(model)}
    assert set(two) == set(aware)
    for name, lr in two.items():
        if rules[name].kind == "factor":
            assert lr == 1e-3, name  # one rate for every factor
            assert aware[name] == pytest.approx(1e-3 * rules[name].multiplier, rel=1e-12)
        else:
            assert lr == aware[name] == 4e-3, name


def test_one_rate_mode_is_the_first_studys_optimizer() -> None:
    from torchkron.experiments.lm.trainer import _optimizer

    model = GPT(GPTSpec(vocab_size=11, **SMALL, mlp=KRON))
    opt = _optimizer(model, LMConfig(lr=1e-3, dense_lr=4e-3))  # dense_lr unused here
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]
    assert all("lr_scale" not in g for g in opt.param_groups)
    # an old run file's config (no optimizer, no dense_lr) reads back as one-rate
    old = json.loads((ROOT / "results/lm/runs/kron-mlp-k2-r4--seed0.json").read_text())
    assert "optimizer" not in old["config"]
    assert LMConfig.from_dict(old["config"]).optimizer == "one-rate"


def test_schedule_scales_every_group_and_resumes_exactly(text_dir: Path, tmp_path: Path) -> None:
    data = load_text(text_dir, download=False, check_md5=False)
    spec = GPTSpec(vocab_size=data.vocab_size, **SMALL, mlp=KRON)
    config = LMConfig(
        iters=6, warmup_iters=2, eval_interval=3, eval_iters=1, batch_size=4,
        optimizer="structure-aware", lr=2e-3, dense_lr=5e-3, full_eval=False,
    )  # fmt: skip
    job = LMJob("k", spec, config, 0)
    whole = train_lm(job, data, LMPaths.under(tmp_path / "a", "k", 0), command="t")
    paths = LMPaths.under(tmp_path / "b", "k", 0)
    train_lm(job, data, paths, command="t", stop_after=3)
    state = torch.load(paths.checkpoint, weights_only=True)
    # after step 3 the groups hold step 2's rates: each group's peak x the schedule
    ratio = lr_at(2, config) / config.lr
    for g in state["optimizer"]["param_groups"]:
        peak = 5e-3 if "wte.weight" in g["param_names"] else g["lr_scale"] * 2e-3
        assert g["lr"] == pytest.approx(peak * ratio, rel=1e-12)
    resumed = train_lm(job, data, paths, command="t")
    assert resumed["final"]["val_loss"] == whole["final"]["val_loss"]
    assert whole["config"]["optimizer"] == "structure-aware"
    assert whole["config"]["dense_lr"] == 5e-3


def test_config_rejects_unknown_optimizer_and_bad_dense_lr() -> None:
    with pytest.raises(
        UserError,
        match=r"--optimizer must be one of one-rate, structure-aware, two-rate, got 'muP'",
    ):
        LMConfig(optimizer="muP")
    with pytest.raises(UserError, match=r"--dense-lr must be a finite number >= 0 \(0: --lr\)"):
        LMConfig(dense_lr=float("nan"))


def test_dense_lr_is_the_first_studys_best_dense_rate() -> None:
    summary = json.loads((ROOT / "results/lm/summary.json").read_text())
    assert summary["best_lr"]["dense"] == DENSE_LR


def test_equal_compute_width_matches_dense_flops() -> None:
    base = GPTSpec()
    wide = equal_compute_width(base, KRON)
    target = base.flops_per_token()
    assert wide.n_embd // wide.n_head == base.n_embd // base.n_head  # head size kept
    assert wide.mlp == KRON
    assert wide.n_embd > base.n_embd
    # the closest width in steps of one head: its neighbours are further from dense's
    gap = abs(wide.flops_per_token() - target)
    for heads in (wide.n_head - 1, wide.n_head + 1):
        other = base.with_(n_embd=32 * heads, n_head=heads, mlp=KRON)
        assert abs(other.flops_per_token() - target) > gap
    assert (wide.n_embd, wide.n_head) == (160, 5)


def test_v2_plan_sweeps_structured_families_and_fixes_dense() -> None:
    plan = study_plan_v2(vocab_size=65, base=LMConfig())
    fams = {"kron", "lowrank", "monarch", "kron-nomult", "lowrank-nomult"}
    assert {j.family for j in plan.sweep} == fams
    assert len(plan.sweep) == 23
    grid = sorted(j.config.lr for j in plan.sweep if j.family == "kron-nomult")
    assert grid == pytest.approx([1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2])
    for j in plan.sweep:  # the ablation's families sweep their own rate, no multipliers
        want = "two-rate" if j.family in NO_MULTIPLIER else "structure-aware"
        assert j.config.optimizer == want, j.name
    assert all(j.config.dense_lr == DENSE_LR for j in plan.sweep)
    by = {(p.job.name, p.job.seed): p for p in plan.main}
    assert len(by) == 45
    ablation = by[("lowrank-mlp-r4-nomult", 1)]
    assert ablation.lr_family == "lowrank-nomult"
    assert ablation.job.config.optimizer == "two-rate"
    assert ablation.job.spec == by[("lowrank-mlp-r4", 1)].job.spec
    assert [p.job.name for p in plan.main][-6:] == [
        "kron-mlp-k2-r4-nomult",
        "lowrank-mlp-r4-nomult",
    ] * 3  # last: an interrupted study has every config of the question first
    assert {s for _, s in by} == {0, 1, 2}
    assert by[("dense", 0)].lr_family is None
    assert by[("dense", 0)].job.config.lr == DENSE_LR
    assert by[("narrow-mlp-h20", 2)].lr_family is None
    assert by[("kron-attn-k2-r4", 0)].lr_family == "kron"
    assert by[("kron-mlp-k2-r4-e160", 1)].job.spec.n_head == 5
    order = [(p.job.name, p.job.seed) for p in plan.main]
    assert order[:5] == [
        ("dense", 0), ("kron-mlp-k2-r4", 0), ("lowrank-mlp-r4", 0),
        ("monarch-mlp-b32", 0), ("narrow-mlp-h20", 0),
    ]  # fmt: skip


def test_cli_v2_smoke_schedule_groups_and_report(text_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "v2"
    args = [
        "lm", "sweep", "--study", "v2", "--out", str(out), "--data-dir", str(text_dir),
        "--any-text", "--iters", "6", "--sweep-iters", "4", "--eval-interval", "3",
        "--eval-iters", "1", "--lrs", "1e-3", "2e-3", "3e-3", "--seeds", "2",
        "--only", "dense", "kron-mlp-k2-r4", "kron-mlp-k2-r4-nomult", "--jobs", "1",
        "--quiet", "--no-plots",
        "--lr-extend", "1", "--n-layer", "1", "--n-embd", "32", "--block-size", "16",
        "--first-study", str(ROOT / "results/lm"),
    ]  # fmt: skip
    assert main(args) == 0
    runs = {p.name: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    sweep = sorted(
        r["config"]["lr"]
        for n, r in runs.items()
        if n.startswith("lrsweep") and r["family"] == "kron"
    )
    assert sweep[:3] == [1e-3, 2e-3, 3e-3]
    assert len(sweep) in (3, 4)
    # the ablation: its own wider sweep and runs, factors without multipliers
    ablation = runs["kron-mlp-k2-r4-nomult--seed1.json"]
    assert ablation["config"]["optimizer"] == "two-rate"
    nomult = [r for r in runs.values() if r["family"] == "kron-nomult" and r is not ablation]
    assert len([r for r in nomult if r["extra"]["phase"] == "lr-sweep"]) >= 7
    kron = runs["kron-mlp-k2-r4--seed1.json"]
    assert kron["config"]["optimizer"] == "structure-aware"
    assert kron["config"]["dense_lr"] == DENSE_LR
    assert kron["extra"]["study"] == "v2"
    best = min(
        (r for n, r in runs.items() if n.startswith("lrsweep") and r["family"] == "kron"),
        key=lambda r: r["final"]["val_loss_full"],
    )
    assert kron["config"]["lr"] == best["config"]["lr"]
    assert runs["dense--seed0.json"]["config"]["lr"] == DENSE_LR
    text = (out / "results.md").read_text()
    assert "## Study v1 (one rate per model), from its run files" in text
    assert "| kron-mlp-k2-r4 | MLP Kronecker k=2 R=4 |" in text
    assert "| kron-mlp-k2-r4-nomult | MLP Kronecker k=2 R=4, factors without multipliers |" in text
    assert "2 standard errors" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dense_lr"] == [DENSE_LR]
    assert (out / "headline.md").read_text().startswith("# GPT study v2 headline")
    assert main([*args, "--resume"]) == 0  # resumes: every run finished is kept


def _row(name: str, losses: list[float], family: str = "kron") -> dict[str, object]:
    import statistics

    return {
        "config": name, "family": family, "group": "mlp", "budget": "b4",
        "val_losses": losses, "val_mean": statistics.fmean(losses),
        "val_std": statistics.stdev(losses),
    }  # fmt: skip


def test_confound_share_is_the_part_of_the_gap_that_went_away() -> None:
    v1 = [_row("dense", [1.77, 1.78, 1.78], "dense"), _row("kron-mlp-k2-r4", [2.0, 2.0, 2.03])]
    v2 = [_row("dense", [1.77, 1.78, 1.78], "dense"), _row("kron-mlp-k2-r4", [1.9, 1.88, 1.89])]
    (row,) = confound(v1, v2)
    gap1 = 2.01 - (1.77 + 1.78 + 1.78) / 3
    gap2 = 1.89 - (1.77 + 1.78 + 1.78) / 3
    assert row["gap_v1"] == pytest.approx(gap1)
    assert row["explained"] == pytest.approx((gap1 - gap2) / gap1)
    assert row["change"] == pytest.approx(-0.12)
    assert row["change_verdict"] == "lower"


def test_ablation_splits_the_change_into_dense_rate_and_multipliers() -> None:
    dense = _row("dense", [1.77, 1.78, 1.78], "dense")
    v1 = [dense, _row("lowrank-mlp-r4", [2.0, 2.0, 2.03], "lowrank")]
    v2 = [
        dense,
        _row("lowrank-mlp-r4", [2.2, 2.18, 2.19], "lowrank"),
        _row("lowrank-mlp-r4-nomult", [1.95, 1.94, 1.96], "lowrank-nomult"),
    ]
    (row,) = confound(v1, v2)  # the ablation itself gets no row of its own
    mean_dense = (1.77 + 1.78 + 1.78) / 3
    gap1, gap0 = 2.01 - mean_dense, 1.95 - mean_dense
    assert row["config"] == "lowrank-mlp-r4"
    assert row["gap_nomult"] == pytest.approx(gap0)
    assert row["explained_rate"] == pytest.approx((gap1 - gap0) / gap1)
    assert row["explained"] < 0 < row["explained_rate"]  # the multipliers made it worse


def test_report_of_no_runs_lists_everything_missing() -> None:
    summary = summarize_v2([], [])
    assert len(summary["missing"]) == 45
    assert all(f["v2"]["text"].startswith("not measured") for f in summary["findings"])


def test_first_study_report_regenerates_byte_identically(tmp_path: Path) -> None:
    import shutil

    first = ROOT / "results/lm"
    shutil.copytree(first / "runs", tmp_path / "runs")
    shutil.copy(first / "step_bench.json", tmp_path / "step_bench.json")
    assert main(["lm", "report", str(tmp_path), "--no-plots"]) == 0
    for name in ("results.md", "summary.json"):
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name
    assert not (tmp_path / "headline.md").exists()  # the v1 report, not v2's


def test_a_dense_model_trains_identically_in_both_modes(text_dir: Path, tmp_path: Path) -> None:
    # Why study v2 may compare its dense baselines with the first study's: without
    # structured layers the structure-aware optimizer is the first study's, step by step.
    data = load_text(text_dir, download=False, check_md5=False)
    spec = GPTSpec(vocab_size=data.vocab_size, **SMALL)
    base = LMConfig(iters=6, eval_interval=3, eval_iters=1, batch_size=4, lr=4e-3)
    losses = []
    for i, config in enumerate((base, base.with_(optimizer="structure-aware", dense_lr=4e-3))):
        record = train_lm(
            LMJob("d", spec, config, 0), data, LMPaths.under(tmp_path / str(i), "d", 0), command="t"
        )
        losses.append(record["history"]["val_loss"] + [record["final"]["val_loss_full"]])
    assert losses[0] == losses[1]
