"""The LM harness: data loading, GPT factory, trainer (exact resume), study plan, CLI smoke."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from torchkron import KronLinear, LowRankLinear, MonarchLinear
from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import DataError, UserError
from torchkron.experiments.data.text import MD5, TextData, load_text
from torchkron.experiments.lm.config import LMConfig
from torchkron.experiments.lm.gpt import GPT, GPTSpec, LinearSpec, make_linear
from torchkron.experiments.lm.schedule import (
    StudyPlan,
    format_lr,
    parse_linear,
    study_configs,
    study_plan,
)
from torchkron.experiments.lm.trainer import (
    LMJob,
    LMPaths,
    full_split_loss,
    lr_at,
    train_lm,
)


def tiny_spec(vocab: int, **kw: object) -> GPTSpec:
    base: dict[str, object] = {
        "vocab_size": vocab,
        "block_size": 8,
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 16,
    }
    base.update(kw)
    return GPTSpec(**base)  # type: ignore[arg-type]


def tiny_config(**kw: object) -> LMConfig:
    base: dict[str, object] = {
        "iters": 12,
        "batch_size": 4,
        "warmup_iters": 2,
        "eval_interval": 4,
        "eval_iters": 2,
    }
    base.update(kw)
    return LMConfig(**base)  # type: ignore[arg-type]


# -- data ---------------------------------------------------------------------------------


def test_load_text_splits_90_10(text_dir: Path) -> None:
    data = load_text(text_dir, download=False, check_md5=False)
    n = data.train.numel() + data.val.numel()
    assert data.train.numel() == int(0.9 * n)
    assert data.chars == "".join(sorted(set((text_dir / "input.txt").read_text())))
    assert int(data.train.max()) < data.vocab_size


def test_load_text_refuses_wrong_md5(text_dir: Path) -> None:
    with pytest.raises(DataError, match=rf"is not the Tiny Shakespeare file: md5 .*expected {MD5}"):
        load_text(text_dir, download=False)


def test_load_text_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_text(tmp_path / "nothing", download=False)
    assert str(info.value) == (
        f"Tiny Shakespeare not found: {tmp_path / 'nothing' / 'input.txt'} does not exist; "
        "pass --data-dir to the folder that holds input.txt (e.g. "
        "../shared/data/tinyshakespeare), or drop --no-download to fetch it."
    )


@pytest.mark.skipif(
    not Path("../shared/data/tinyshakespeare/input.txt").exists(), reason="no shared data"
)
def test_real_tinyshakespeare_matches_readme() -> None:
    data = load_text(Path("../shared/data/tinyshakespeare"), download=False)
    assert data.vocab_size == 65
    assert data.train.numel() + data.val.numel() == 1_115_394
    assert data.train.numel() == 1_003_854


# -- model and factory ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        (LinearSpec("kron", rank=2), KronLinear),
        (LinearSpec("lowrank", rank=3), LowRankLinear),
        (LinearSpec("monarch", nblocks=4), MonarchLinear),
        (LinearSpec(), torch.nn.Linear),
    ],
)
def test_factory_builds_every_block_linear(spec: LinearSpec, cls: type) -> None:
    model = GPT(tiny_spec(11, attn=spec, mlp=spec))
    block = model.blocks[0]
    for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):  # type: ignore[union-attr]
        assert type(layer) is cls
    gspec = model.spec
    counted = sum(gspec.weights_by_role().values())
    stored = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith("blocks.") and "ln_" not in n and not n.endswith("bias")
    )
    assert counted == stored


def test_gpt_is_causal_and_tied() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_spec(11, mlp=LinearSpec("kron", rank=2)))
    x = torch.randint(11, (2, 8))
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 11
    torch.testing.assert_close(model(x)[:, :5], model(y)[:, :5])
    assert model.head.weight is model.wte.weight


@pytest.mark.parametrize(
    "spec",
    [LinearSpec("kron", rank=2), LinearSpec("lowrank", rank=2), LinearSpec("monarch", nblocks=4)],
)
def test_structured_init_matches_dense_gpt2_std(spec: LinearSpec) -> None:
    torch.manual_seed(0)
    model = GPT(GPTSpec(vocab_size=11, n_embd=128, n_layer=2, mlp=spec))
    fc = model.blocks[0].mlp.fc  # type: ignore[union-attr]
    proj = model.blocks[0].mlp.proj  # type: ignore[union-attr]
    assert float(fc.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert float(proj.weight.detach().std()) == pytest.approx(0.02 / math.sqrt(4), rel=0.1)


def test_factory_errors() -> None:
    with pytest.raises(UserError, match=r"^Tied Kronecker factors need equal factor shapes"):
        make_linear(LinearSpec("kron", tied=True), 128, 512)
    with pytest.raises(UserError, match=r"not divisible by nblocks=3"):
        make_linear(LinearSpec("monarch", nblocks=3), 128, 512)
    with pytest.raises(UserError, match=r"^Cannot read layer structure 'kron:x2'"):
        parse_linear("kron:x2")
    assert parse_linear("kron:k3:r5") == LinearSpec("kron", factors=3, rank=5)
    assert format_lr(0.002) == "2e-3"


# -- trainer ---------------------------------------------------------------------------------


def test_schedule_is_nanogpts() -> None:
    c = LMConfig(iters=2000, lr=1e-3, warmup_iters=100)
    assert lr_at(0, c) == pytest.approx(1e-3 / 101)
    assert lr_at(100, c) == pytest.approx(1e-3)
    assert lr_at(1050, c) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(2000, c) == pytest.approx(1e-4)


def test_resume_is_exact(text_dir: Path, tmp_path: Path) -> None:
    data = load_text(text_dir, download=False, check_md5=False)
    job = LMJob(
        "k", tiny_spec(data.vocab_size, mlp=LinearSpec("kron", rank=2)), tiny_config(), seed=3
    )
    full = train_lm(job, data, LMPaths.under(tmp_path / "a", "k", 3), command="x", resume=False)
    paths = LMPaths.under(tmp_path / "b", "k", 3)
    part = train_lm(job, data, paths, command="x", stop_after=4)
    assert not part["complete"]
    assert part["history"]["iter"] == [4]
    resumed = train_lm(job, data, paths, command="x")
    assert resumed["complete"]
    for key in ("train_loss", "val_loss", "lr", "iter"):
        assert resumed["history"][key] == full["history"][key]
    assert resumed["final"]["val_loss_full"] == full["final"]["val_loss_full"]
    # a finished run is read back, not retrained
    again = train_lm(job, data, paths, command="x")
    assert again["finished_at"] == resumed["finished_at"]


def test_resume_refuses_other_settings(text_dir: Path, tmp_path: Path) -> None:
    data = load_text(text_dir, download=False, check_md5=False)
    job = LMJob("d", tiny_spec(data.vocab_size), tiny_config(), seed=0)
    paths = LMPaths.under(tmp_path, "d", 0)
    train_lm(job, data, paths, command="x", stop_after=4)
    other = LMJob("d", job.spec, tiny_config(lr=5e-3), seed=0)
    with pytest.raises(UserError, match=r"was trained with other settings \(lr: saved 0.001 vs"):
        train_lm(other, data, paths, command="x")


def test_full_split_loss_scores_every_character(text_dir: Path) -> None:
    data = load_text(text_dir, download=False, check_md5=False)
    torch.manual_seed(0)
    model = GPT(tiny_spec(data.vocab_size))
    val = data.val[:29]  # 28 targets: 3 windows of 8 and a tail of 4
    loss = full_split_loss(model, val, 8, batch=2)
    with torch.inference_mode():
        total = 0.0
        for s in range(0, 28, 8):
            e = min(s + 8, 28)
            logits = model(val[s:e][None])[0]
            total += float(
                torch.nn.functional.cross_entropy(logits, val[s + 1 : e + 1], reduction="sum")
            )
    assert loss == pytest.approx(total / 28, rel=1e-5)


# -- study and CLI -----------------------------------------------------------------------


def test_plan_puts_sweeps_first_and_seed0_before_other_seeds() -> None:
    plan = study_plan(vocab_size=65, base=LMConfig(), only=["dense", "kron-mlp-k2-r4"])
    assert [j.config.lr for j in plan.sweep] == [1e-3, 2e-3, 4e-3] * 2
    assert all(j.config.iters == 500 for j in plan.sweep)
    order = [(p.job.name, p.job.seed) for p in plan.main]
    assert order[:2] == [("dense", 0), ("kron-mlp-k2-r4", 0)]
    assert {p.lr_family for p in plan.main} == {"dense", "kron"}


def test_cli_smoke_sweep_and_report(text_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        "lm", "sweep", "--out", str(out), "--data-dir", str(text_dir), "--any-text",
        "--iters", "6", "--sweep-iters", "4", "--eval-interval", "3", "--eval-iters", "1",
        "--lrs", "1e-3", "2e-3", "--seeds", "1", "--only", "dense", "narrow-mlp-h20",
        "--jobs", "1", "--quiet", "--no-plots", "--lr-extend", "0",
    ]  # fmt: skip
    assert main(args) == 0
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert runs == [
        "dense--seed0.json",
        "lrsweep-dense-lr1e-3--seed0.json",
        "lrsweep-dense-lr2e-3--seed0.json",
        "narrow-mlp-h20--seed0.json",
    ]
    record = json.loads((out / "runs" / "dense--seed0.json").read_text())
    assert record["complete"]
    assert record["environment"]["torch"] == str(torch.__version__)
    assert record["final"]["tokens_per_s"] > 0
    assert main(args) == 2  # refuses to overwrite without --resume
    assert main([*args, "--resume"]) == 0


def test_every_structure_moves_to_another_dtype() -> None:
    # .to()/.double() go through nn.Module._apply: structured layers must not shadow it
    for spec in (LinearSpec("kron", rank=2), LinearSpec("lowrank"), LinearSpec("monarch")):
        model = GPT(tiny_spec(11, attn=spec, mlp=spec)).double()
        assert model(torch.zeros(1, 8, dtype=torch.long)).dtype == torch.float64


def test_mnist_sweep_lowrank_baselines() -> None:
    from torchkron.experiments.mnist.sweep import Grid, grid_specs
    from torchkron.experiments.mnist.variants import SEED_VARIANTS, build_mlp

    specs = grid_specs(Grid(factors=(), widths=(), lowrank_ranks=(1,)))
    assert {s.name: s.weights() for s in specs} == {
        "lowrank-r1-denseout": 1409 + 6250,
        "lowrank-r1-kronout": 1409 + 175,
    }
    model = build_mlp(specs[0])
    assert isinstance(model.hidden, LowRankLinear)
    assert model(torch.zeros(2, 784)).shape == (2, 10)
    assert "lowrank" in specs[0].to_dict()["hidden"]
    # other layers serialise as before, so earlier run files still match the seed variants
    assert "lowrank" not in SEED_VARIANTS[0].to_dict()["hidden"]
    assert grid_specs(Grid(factors=(), widths=(1,)))[0].hidden.linear.kind == "dense"


def test_plan_orders_by_seed_within_a_tier() -> None:
    plan = study_plan(vocab_size=65, base=LMConfig(), only=["dense", "kron-mlp-k2-r4", "dense-e64"])
    order = [(p.job.name, p.job.seed) for p in plan.main]
    assert order == [
        ("dense", 0), ("kron-mlp-k2-r4", 0), ("dense", 1), ("kron-mlp-k2-r4", 1),
        ("dense", 2), ("kron-mlp-k2-r4", 2), ("dense-e64", 0), ("dense-e64", 1),
        ("dense-e64", 2),
    ]  # fmt: skip


def test_cli_train_one_run(
    text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "lm", "train", "--mlp", "monarch:b4", "--attn", "lowrank:r2", "--out", str(tmp_path),
        "--data-dir", str(text_dir), "--any-text", "--iters", "4", "--eval-interval", "2",
        "--eval-iters", "1", "--n-layer", "1", "--n-embd", "16", "--block-size", "8",
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("attn_lowrankr2-mlp_monarchb4-e16 seed 0: ")
    record = json.loads(
        (tmp_path / "runs" / "attn_lowrankr2-mlp_monarchb4-e16--seed0.json").read_text()
    )
    assert record["spec"]["mlp"]["kind"] == "monarch"
    assert record["history"]["iter"] == [2, 4]
    assert main([*args[:-1], "--lr", "0.5"]) == 2  # existing run, no --resume


def tiny_study_plan(data: TextData, *, lrs: tuple[float, ...], extend: int) -> StudyPlan:
    """The study plan of ``narrow-mlp-h20`` alone (4-step runs, one seed), 1x16 models."""
    plan = study_plan(
        vocab_size=data.vocab_size,
        base=tiny_config(iters=4, eval_interval=2, eval_iters=1),
        lrs=lrs,
        sweep_iters=4,
        seeds=1,
        only=["narrow-mlp-h20"],
        extend=extend,
    )
    small = {"n_layer": 1, "n_embd": 16, "block_size": 8}
    return type(plan)(
        [replace(j, spec=j.spec.with_(**small)) for j in plan.sweep],
        [replace(p, job=replace(p.job, spec=p.job.spec.with_(**small))) for p in plan.main],
        plan.extend,
    )


@pytest.mark.slow
def test_jobs_2_waits_for_the_sweep_and_uses_its_best_lr(text_dir: Path, tmp_path: Path) -> None:
    from torchkron.experiments.lm.runner import LMProgress, best_lr, run_plan

    data = load_text(text_dir, download=False, check_md5=False)
    plan = tiny_study_plan(data, lrs=(1e-3, 3e-2), extend=0)
    progress = LMProgress(quiet=True, log_path=tmp_path / "progress.log")
    records = run_plan(
        plan, data, out_dir=tmp_path, command="t", workers=2, progress=progress, check_md5=False
    )
    sweep = [r for r in records if r["extra"]["phase"] == "lr-sweep"]
    (main_run,) = [r for r in records if r["extra"]["phase"] == "main"]
    assert len(sweep) == 2
    assert main_run["config"]["lr"] == best_lr(sweep)
    assert "family dense: best learning rate" in (tmp_path / "progress.log").read_text()


def test_next_sweep_lr_extends_past_an_end_only() -> None:
    from torchkron.experiments.lm.runner import next_sweep_lr

    def rec(lr: float, loss: float | None) -> dict[str, object]:
        if loss is None:
            return {"complete": False}
        return {"complete": True, "config": {"lr": lr}, "final": {"val_loss": loss}}

    grid = [1e-3, 2e-3, 4e-3]
    assert next_sweep_lr([rec(1e-3, 2.0), rec(2e-3, 2.1), rec(4e-3, 2.2)], grid) == 5e-4
    assert next_sweep_lr([rec(1e-3, 2.2), rec(2e-3, 2.1), rec(4e-3, 2.0)], grid) == 8e-3
    assert next_sweep_lr([rec(1e-3, 2.2), rec(2e-3, 2.0), rec(4e-3, 2.1)], grid) is None
    # a failed (diverged) run past the best closes the grid
    four = [*grid, 8e-3]
    assert (
        next_sweep_lr([rec(1e-3, 2.2), rec(2e-3, 2.1), rec(4e-3, 2.0), rec(8e-3, None)], four)
        is None
    )
    assert next_sweep_lr([rec(1e-3, None)], [1e-3]) is None


def test_sweep_extends_the_grid_then_trains_at_the_best(text_dir: Path, tmp_path: Path) -> None:
    from torchkron.experiments.lm.runner import LMProgress, best_lr, run_plan

    data = load_text(text_dir, download=False, check_md5=False)
    plan = tiny_study_plan(data, lrs=(1e-4, 2e-4), extend=2)
    log = tmp_path / "progress.log"
    records = run_plan(
        plan, data, out_dir=tmp_path, command="t", workers=1,
        progress=LMProgress(quiet=True, log_path=log), check_md5=False,
    )  # fmt: skip
    sweep = [r for r in records if r["extra"]["phase"] == "lr-sweep"]
    (main_run,) = [r for r in records if r["extra"]["phase"] == "main"]
    rates = sorted(r["config"]["lr"] for r in sweep)
    # 4 steps at 1e-4..8e-4 all still improve with the rate: the grid grows twice, no more
    assert rates == pytest.approx([1e-4, 2e-4, 4e-4, 8e-4])
    assert main_run["config"]["lr"] == best_lr(sweep) == pytest.approx(8e-4)
    assert log.read_text().count("sweeping") == 2
    names = sorted(p.name for p in (tmp_path / "runs").glob("lrsweep-*"))
    assert names[-1] == "lrsweep-dense-lr8e-4--seed0.json"


def test_bench_command(tmp_path: Path) -> None:
    args = ["lm", "bench", "--configs", "dense", "lowrank-mlp-r4", "--rounds", "2"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "step_bench.json").read_text())
    assert [r["config"] for r in result["rows"]] == ["dense", "lowrank-mlp-r4"]
    assert result["rows"][0]["ratio_vs_dense"] == 1.0


# The spec of results/lm/runs/kron-attn-k2-r4--seed0.json, as the study wrote it before
# the harness had one LinearSpec for both studies.
STORED_LM_SPEC = (
    '{"vocab_size": 65, "block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, '
    '"mlp_hidden": 0, "dropout": 0.0, "bias": false, "attn": {"kind": "kron", "factors": 2, '
    '"rank": 4, "tied": false, "nblocks": 4}, "mlp": {"kind": "dense", "factors": 2, '
    '"rank": 1, "tied": false, "nblocks": 4}, "init": "gpt2"}'
)


def test_stored_run_specs_read_back_equal_to_the_study_and_write_identically() -> None:
    # What resume compares (trainer._check_same): the saved spec read back must equal the
    # job's, and the record written now must be byte-identical to the stored one.
    stored = json.loads(STORED_LM_SPEC)
    (config,) = [c for c in study_configs() if c.name == "kron-attn-k2-r4"]
    assert GPTSpec.from_dict(stored) == config.spec
    assert json.dumps(config.spec.to_dict()) == STORED_LM_SPEC


def test_gpt_layers_take_a_factor_count_not_explicit_shapes() -> None:
    with pytest.raises(UserError, match=r"GPTSpec.mlp has explicit factor shapes.*factors=k"):
        GPTSpec(mlp=LinearSpec("kron", shapes=((16, 8), (8, 16))))
