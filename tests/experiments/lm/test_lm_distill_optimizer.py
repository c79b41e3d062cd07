"""``lm compress``'s distillation optimizer: structure-aware rates, the first round's files."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from torchkron import lr_multipliers
from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.data.text import TextData, load_text
from torchkron.experiments.lm.compress import build_student, mlp_moments
from torchkron.experiments.lm.compress_report import (
    recipe_label,
    split_by_recipe,
    write_compress_report,
)
from torchkron.experiments.lm.distill import (
    DistillConfig,
    DistillJob,
    distill_run,
    read_record,
    saved_config,
)
from torchkron.experiments.lm.gpt import GPT, GPTSpec
from torchkron.experiments.lm.trainer import lr_at

ROOT = Path(__file__).resolve().parents[3]
FIRST_ROUND = sorted((ROOT / "results/lm-compress/runs").glob("*.json"))
TINY = {"iters": 2, "warmup_iters": 1, "batch_size": 4, "calib_batches": 2, "eval_interval": 2}


def _setup(text_dir: Path) -> tuple[TextData, GPT]:
    data = load_text(text_dir, download=False, check_md5=False)
    torch.manual_seed(0)
    spec = GPTSpec(vocab_size=data.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    return data, GPT(spec).eval()


@pytest.mark.parametrize("method", ["kron-act-perm", "lowrank-whitened", "monarch", "pruned"])
def test_structure_aware_distillation_trains_each_parameter_at_its_rate(
    method: str, text_dir: Path, tmp_path: Path
) -> None:
    data, teacher = _setup(text_dir)
    config = DistillConfig(**TINY, lr=2e-3, dense_lr=3e-4)
    distill_run(DistillJob(method, "3.9", 0), teacher, {}, data, config, tmp_path, command="t")
    state = torch.load(next((tmp_path / "checkpoints").glob("*.pt")), weights_only=True)
    groups = state["optimizer"]["param_groups"]
    peak = {n: g["lr_scale"] * config.lr for g in groups for n in g["param_names"]}
    # the rate at the last step (step 1 of the schedule) is the peak times the schedule's
    last = lr_at(config.iters - 1, config.schedule()) / config.lr
    for g in groups:
        assert g["lr"] == pytest.approx(g["lr_scale"] * config.lr * last, rel=1e-12)
    student = build_student(
        teacher,
        method,
        "3.9",
        mlp_moments(teacher, [torch.randint(data.vocab_size, (2, 8))]),
        seed=0,
    ).model
    rules = {r.name: r for r in lr_multipliers(student)}
    assert set(peak) == set(rules)  # every trainable parameter once
    factors = {n for n, r in rules.items() if r.kind == "factor"}
    for name, rate in peak.items():
        want = 2e-3 * rules[name].multiplier if name in factors else 3e-4
        assert rate == pytest.approx(want, rel=1e-12), name
    if method == "pruned":  # no structured layer: every parameter at dense_lr
        assert not factors
    else:
        assert {n.split(".mlp.")[-1].split(".")[0] for n in factors} == {"fc", "proj"}
        assert {rules[n].multiplier for n in factors} != {1.0}


def test_without_structured_layers_structure_aware_is_one_rate_at_dense_lr(
    text_dir: Path, tmp_path: Path
) -> None:
    data, teacher = _setup(text_dir)
    job = DistillJob("pruned", "3.9", 0)
    one = DistillConfig(**TINY, optimizer="one-rate", lr=3e-4)
    aware = DistillConfig(**TINY, lr=5e-3, dense_lr=3e-4)
    a = distill_run(job, teacher, {}, data, one, tmp_path, command="t")
    b = distill_run(job, teacher, {}, data, aware, tmp_path, command="t")  # same folder
    assert a["variant"] == "pruned-b3.9-one-rate-lr3e-4"
    assert b["variant"] == "pruned-b3.9-sa-lr5e-3-dense3e-4"
    assert b["metrics"]["val_loss_distilled"] == pytest.approx(
        a["metrics"]["val_loss_distilled"], rel=1e-6
    )
    assert a["config"]["optimizer"] == "one-rate"
    assert b["config"]["dense_lr"] == 3e-4


@pytest.mark.skipif(not FIRST_ROUND, reason="the first round's run files are not in this tree")
def test_first_round_run_files_load_and_read_as_one_rate() -> None:
    for path in FIRST_ROUND:
        record = read_record(path)
        if "optimizer" in record["config"]:
            continue  # a later recipe's run
        config = saved_config(record)
        assert (config.optimizer, config.lr, config.tag) == ("one-rate", 1e-3, "")
        assert path.name == f"{record['variant']}--seed{record['seed']}.json"
        assert recipe_label(record) == (
            "one rate: every parameter at 1e-3 (first round); 300 iterations"
        )


def test_a_first_round_file_is_resumed_by_its_recipe_and_refused_by_another(
    text_dir: Path, tmp_path: Path
) -> None:
    data, teacher = _setup(text_dir)
    job = DistillJob("kron-act", "3.9", 0)
    first = DistillConfig(**TINY, optimizer="one-rate", lr=1e-3)
    record = distill_run(job, teacher, {}, data, first, tmp_path, command="t")
    path = tmp_path / "runs" / "kron-act-b3.9--seed0.json"  # untagged, as the first round
    # as written before the optimizer settings existed
    old = json.loads(path.read_text())
    del old["config"]["optimizer"], old["config"]["dense_lr"]
    path.write_text(json.dumps(old))
    again = distill_run(job, teacher, {}, data, first, tmp_path, command="t")
    assert again["metrics"] == record["metrics"]  # kept, not redone
    with pytest.raises(UserError, match=r"kron-act-b3\.9--seed0\.json was distilled with other "
                       r"settings \(iters: saved 2 vs now 4\); use another --out folder, or "
                       r"delete that run to redo it\."):  # fmt: skip
        distill_run(job, teacher, {}, data, replace(first, iters=4), tmp_path, command="t")
    # the new default recipe has its own name in the same folder
    aware = DistillConfig(**TINY, lr=4e-3, dense_lr=1e-3)
    new = distill_run(job, teacher, {}, data, aware, tmp_path, command="t")
    assert new["variant"] == "kron-act-b3.9-sa-lr4e-3-dense1e-3"
    assert json.loads(path.read_text()) == old


def test_report_keeps_the_first_round_apart_and_labelled(tmp_path: Path) -> None:
    src = ROOT / "results/lm-compress/runs/kron-act-perm-b3.9--seed0.json"
    if not src.is_file():
        pytest.skip("the first round's run files are not in this tree")
    runs = tmp_path / "out" / "runs"
    runs.mkdir(parents=True)
    shutil.copy(src, runs / src.name)
    old = json.loads(src.read_text())
    for method, loss in (("kron-act-perm", 1.5), ("pruned", 1.25)):
        new = json.loads(json.dumps(old))
        new["config"].update(optimizer="structure-aware", lr=4e-3, dense_lr=1e-3)
        new["method"], new["metrics"]["val_loss_distilled"] = method, loss
        (runs / f"{method}-b3.9-sa-lr4e-3-dense1e-3--seed0.json").write_text(json.dumps(new))
    study, others = split_by_recipe([read_record(p) for p in sorted(runs.glob("*.json"))])
    assert [r["method"] for r in study] == ["kron-act-perm", "pruned"]
    assert len(others) == 1
    assert others[0][0]["config"] == old["config"]
    scratch = [ROOT / "results/lm-v2", ROOT / "results/lm"]
    write_compress_report(tmp_path / "out", scratch=scratch, plots=False)
    report = (tmp_path / "out" / "results.md").read_text()
    # the second GPT study (structure-aware rates) is the reference, the first beside it
    assert "From-scratch reference: lm-v2." in report
    assert "| seeds | scratch lm-v2 | scratch lm |" in report
    assert "kron-act-perm distilled vs kron-mlp-k2-r4 from scratch (lm-v2)" in report
    assert "structure-aware: factors at 4e-3 x multiplier, other parameters at 1e-3" in report
    assert "Runs: 2 complete with this recipe, 1 with other recipes" in report
    # the study's row holds the new run only (1 seed, 1.500), not a mean with 2.099
    assert (
        "| 3.9% | kron-act-perm | Kronecker k=2 R=4 | 20,480 | 300,288 | 0.564 | 4.993 | "
        "1.500 | 1 | 1.847 ± 0.004 | 2.008 ± 0.042 |"
    ) in report
    old_loss = f"{old['metrics']['val_loss_distilled']:.3f}"
    assert (
        "| one rate: every parameter at 1e-3 (first round); 300 iterations | 3.9% | "
        f"kron-act-perm | 4.993 | {old_loss} | 1 | 1.500 |"
    ) in report


def test_config_rejects_unknown_optimizer_and_bad_dense_lr() -> None:
    with pytest.raises(
        UserError, match=r"^--optimizer must be one of structure-aware, one-rate, got 'adam'\.$"
    ):
        DistillConfig(optimizer="adam")
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(
            UserError,
            match=rf"^--dense-lr must be a positive finite number, got {bad}; it is the rate "
            r"of every parameter that is not a factor of a structured layer\.$",
        ):
            DistillConfig(dense_lr=bad)


def test_cli_sweeps_every_lr_and_dense_lr(tmp_path: Path, text_dir: Path) -> None:
    out = tmp_path / "out"
    args = [
        "lm", "compress", "--out", str(out), "--data-dir", str(text_dir), "--any-text",
        "--teacher-iters", "2", "--n-embd", "16", "--n-layer", "1", "--n-head", "2",
        "--block-size", "8", "--iters", "2", "--seeds", "1", "--jobs", "1",
        "--calib-batches", "2", "--eval-interval", "2", "--budgets", "3.9",
        "--methods", "kron-act", "--lr", "2e-3", "8e-3", "--dense-lr", "3e-4", "1e-3",
        "--scratch", str(tmp_path / "none"), "--no-plots",
    ]  # fmt: skip
    assert main(args) == 0
    names = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert names == [
        f"kron-act-b3.9-sa-lr{lr}-dense{d}--seed0.json"
        for lr in ("2e-3", "8e-3")
        for d in ("1e-3", "3e-4")
    ]
    record = json.loads((out / "runs" / names[1]).read_text())
    assert (record["config"]["lr"], record["config"]["dense_lr"]) == (2e-3, 3e-4)
    assert (
        "Runs: 1 complete with this recipe, 3 with other recipes"
        in (out / "results.md").read_text()
    )
