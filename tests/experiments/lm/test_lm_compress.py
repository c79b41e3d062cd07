"""``torchkron lm compress``: students, distillation, resume, report (smoke scale)."""

from __future__ import annotations

import json

import pytest
import torch

from torchkron.experiments.cli import main
from torchkron.experiments.lm.compress import (
    BUDGETS,
    METHODS,
    budget_specs,
    build_student,
    mlp_moments,
)
from torchkron.experiments.lm.distill import DistillConfig, DistillJob, distill_run
from torchkron.experiments.lm.gpt import GPT, GPTSpec


def test_study_budgets_are_the_gpt_study_configs():
    spec = GPTSpec()
    small, big = budget_specs(spec, BUDGETS["3.9"]), budget_specs(spec, BUDGETS["7.8"])
    assert (small.kron.rank, small.lowrank.rank, small.monarch.nblocks, small.hidden) == (
        4,
        4,
        32,
        20,
    )
    assert (big.kron.rank, big.lowrank.rank, big.monarch.nblocks, big.hidden) == (8, 8, 16, 40)
    assert small.nonzeros == 2560


def test_students_keep_the_teacher_outside_the_mlp_and_the_function_where_exact():
    torch.manual_seed(0)
    teacher = GPT(GPTSpec(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    batches = [torch.randint(0, 11, (4, 8)) for _ in range(3)]
    moments = mlp_moments(teacher, batches)
    x = batches[0]
    for method in METHODS:
        student = build_student(teacher, method, "3.9", moments, seed=0)
        if method != "narrow-model":
            torch.testing.assert_close(
                student.model.blocks[0].attn.qkv.weight, teacher.blocks[0].attn.qkv.weight
            )
        assert student.model(x).shape == (4, 8, 11)
    # The permutation is free: permuted plain weights compute the teacher's MLP exactly.
    perm = build_student(teacher, "kron-act-perm", "3.9", moments, seed=0).conversion["layers"][0]
    before, after = perm["permutation_sq_error"]
    assert after <= before
    pruned = build_student(teacher, "pruned", "3.9", moments, seed=0)
    kept = int(pruned.masks["blocks.0.mlp.fc.weight"].sum())
    assert kept == budget_specs(teacher.spec, BUDGETS["3.9"]).nonzeros
    assert int((pruned.model.blocks[0].mlp.fc.weight != 0).sum()) <= kept


def test_pruned_student_stays_sparse_through_distillation_and_resumes(tmp_path, text_dir):
    from torchkron.experiments.data.text import load_text

    data = load_text(text_dir, download=False, check_md5=False)
    torch.manual_seed(0)
    teacher = GPT(
        GPTSpec(vocab_size=data.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    ).eval()
    config = DistillConfig(iters=6, warmup_iters=1, batch_size=4, calib_batches=2, eval_interval=2)
    job = DistillJob("pruned", "3.9", 0)
    half = distill_run(job, teacher, {}, data, config, tmp_path, command="test", stop_after=2)
    assert not half["complete"]
    assert half["history"]["iter"] == [2]
    full = distill_run(job, teacher, {}, data, config, tmp_path, command="test")
    assert full["complete"]
    assert full["history"]["iter"] == [2, 4, 6]
    fresh = distill_run(job, teacher, {}, data, config, tmp_path / "b", command="test")
    # A resumed run ends with the numbers of an uninterrupted one.
    assert full["metrics"]["val_loss_distilled"] == pytest.approx(
        fresh["metrics"]["val_loss_distilled"], rel=1e-6
    )
    name = f"pruned-b3.9{config.tag}--seed0.pt"  # the recipe's tag: -sa-lr...-dense...
    state = torch.load(tmp_path / "checkpoints" / name, weights_only=True)
    w = state["model"]["blocks.0.mlp.fc.weight"]
    assert int((w != 0).sum()) <= budget_specs(teacher.spec, BUDGETS["3.9"]).nonzeros


def test_lm_compress_smoke_end_to_end(tmp_path, text_dir):
    out = tmp_path / "out"
    args = [
        "lm", "compress", "--out", str(out), "--data-dir", str(text_dir), "--any-text",
        "--teacher-iters", "4", "--n-embd", "16", "--n-layer", "1", "--n-head", "2",
        "--block-size", "8", "--iters", "2", "--seeds", "2", "--jobs", "1",
        "--calib-batches", "2", "--eval-interval", "2", "--budgets", "3.9",
        "--methods", "kron-*", "pruned", "--scratch", str(tmp_path / "none"),
    ]  # fmt: skip
    assert main(args) == 0
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert len(runs) == 8
    tag = DistillConfig().tag
    assert f"kron-act-b3.9{tag}--seed1.json" in runs
    record = json.loads((out / "runs" / f"kron-act-b3.9{tag}--seed0.json").read_text())
    for key in ("config", "seed", "metrics", "environment", "command", "teacher"):
        assert key in record
    assert {"val_loss_converted", "val_loss_distilled"} <= set(record["metrics"])
    assert (out / "teacher" / "teacher.safetensors").is_file()
    report = (out / "results.md").read_text()
    assert "| 3.9% | kron-act |" in report
    assert "## Findings" in report
    assert (out / "compress.png").is_file()
    before = (out / "runs" / f"kron-act-b3.9{tag}--seed0.json").read_text()
    assert main([*args, "--resume", "--no-plots"]) == 0  # finished runs are kept as they are
    assert (out / "runs" / f"kron-act-b3.9{tag}--seed0.json").read_text() == before
    assert main(["lm", "compress-report", str(out), "--no-plots"]) == 0
