"""``torchkron lm`` against bad names, non-finite options, diverged runs, failed runs,
concurrent sessions, and reports that pool runs of different recipes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from tests.experiments.locks import held_by_another_session

from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.lock import LOCK_FILE
from torchkron.experiments.lm.config import LMConfig
from torchkron.experiments.lm.report import load_lm_runs, report_markdown, summarize

TINY = [
    "--any-text", "--iters", "4", "--eval-interval", "2", "--eval-iters", "1",
    "--n-layer", "1", "--n-embd", "16", "--block-size", "8", "--quiet",
]  # fmt: skip


def _train(text_dir: Path, out: Path, *extra: str) -> int:
    return main(["lm", "train", "--out", str(out), "--data-dir", str(text_dir), *TINY, *extra])


def _sweep_args(text_dir: Path, out: Path, *lrs: str) -> list[str]:
    return [
        "lm", "sweep", "--out", str(out), "--data-dir", str(text_dir), *TINY,
        "--sweep-iters", "4", "--lrs", *lrs, "--seeds", "1", "--only", "narrow-mlp-h20",
        "--jobs", "1", "--no-plots", "--lr-extend", "0",
    ]  # fmt: skip


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's refusal of ``argv`` (exit 2, before anything runs): its stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return _err(capsys)


# -- run names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../x", "it contains a path separator ('/' or '\\')"),
        ("..", "it contains '..'"),
        ("/tmp/x", "it is an absolute path"),
    ],
)
def test_train_refuses_a_name_that_is_a_path(
    name: str, why: str, text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    err = _refused(
        ["lm", "train", "--out", str(out), "--data-dir", str(text_dir), "--name", name], capsys
    )
    assert (
        f"torchkron lm train: error: argument --name: Run name {name!r} cannot be used: {why}. "
        "A run name becomes a file name inside --out, so it must be one plain name without "
        "'/', '\\' or '..' (e.g. kron-mlp-k2-r4)." in err
    )
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]  # nothing outside either


# -- non-finite options -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--weight-decay", "nan"),
        ("--grad-clip", "nan"),
        ("--min-lr", "nan"),
        ("--min-lr", "inf"),
        ("--beta1", "nan"),
        ("--beta2", "inf"),
        ("--dropout", "inf"),
        ("--lr", "nan"),
    ],
)
def test_non_finite_options_are_refused_at_parse_time(
    command: str, option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    err = _refused(["lm", command, "--out", str(out), option, value], capsys)
    assert (
        f"torchkron lm {command}: error: argument {option}: must be a finite number, got {value}"
        in err
    )
    assert not out.exists()


@pytest.mark.parametrize("field", ["lr", "min_lr", "weight_decay", "grad_clip", "beta2"])
def test_config_refuses_non_finite_settings(field: str) -> None:
    flag = field.replace("_", "-")
    with pytest.raises(UserError) as info:
        LMConfig(**{field: math.nan})  # type: ignore[arg-type]
    assert str(info.value) == (
        f"--{flag} must be a finite number, got nan; NaN or infinite settings train to NaN."
    )


# -- a failed run reports its own error ---------------------------------------------------------


def test_failed_train_reports_its_real_error(
    text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _train(text_dir, out, "--name", "r") == 0
    capsys.readouterr()
    assert _train(text_dir, out, "--name", "r", "--resume", "--lr", "0.5") == 2
    err = _err(capsys)
    assert (
        f"torchkron lm: error: {out / 'runs' / 'r--seed0.json'} was trained with other settings "
        "(lr: saved 0.001 vs now 0.5); use a different --out folder, or delete that run to "
        "redo it with the new settings." in err
    )
    assert "not enough values to unpack" not in err


# -- diverged runs ----------------------------------------------------------------------------


def test_a_diverged_run_is_recorded_as_diverged(
    text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _train(text_dir, out, "--name", "boom", "--lr", "1e30") == 1
    reason = (
        "the loss is not finite at iteration 2 (train nan, validation nan on the fixed "
        "batches) at lr 1e+30; a lower --lr (or --grad-clip) may keep it finite"
    )
    assert capsys.readouterr().out == f"boom seed 0: diverged: {reason}\n"
    record = json.loads((out / "runs" / "boom--seed0.json").read_text())
    assert record["complete"] is True
    assert record["diverged"] == {"iter": 2, "reason": reason}
    assert record["final"]["val_loss"] is None
    assert record["final"]["val_loss_full"] is None
    assert not (out / "models" / "boom--seed0.pt").exists()  # no NaN model kept
    # --resume keeps it as it is (it would diverge again), and says so again.
    assert _train(text_dir, out, "--name", "boom", "--lr", "1e30", "--resume") == 1


def test_one_diverged_run_neither_stops_the_sweep_nor_its_report(
    text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(_sweep_args(text_dir, out, "1e-3", "1e30")) == 0
    sweep = json.loads((out / "runs" / "lrsweep-dense-lr1e30--seed0.json").read_text())
    assert sweep["diverged"]["iter"] == 2
    main_run = json.loads((out / "runs" / "narrow-mlp-h20--seed0.json").read_text())
    assert main_run["config"]["lr"] == 1e-3  # the finite one won
    md = (out / "results.md").read_text()
    assert "| dense | dense | 1e+30 | diverged |  |" in md
    assert "| dense | dense | 0.001 | " in md
    assert md.count("| best |") == 1
    assert (
        "Diverged runs, excluded from the means (1): lrsweep-dense-lr1e30 seed 0 (the loss is "
        "not finite at iteration 2" in md
    )
    log = (out / "progress.log").read_text()
    assert "DIVERGED lrsweep-dense-lr1e30 seed 0: the loss is not finite" in log
    assert main(["lm", "report", str(out), "--no-plots"]) == 0


def _record(name: str, seed: int, loss: float | None, **config: Any) -> dict[str, Any]:
    """A finished LM run file as the trainer writes it (``loss`` None: diverged)."""
    cfg = LMConfig().to_dict() | config
    spec = {"vocab_size": 65, "block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128,
            "mlp_hidden": 0, "dropout": 0.0, "bias": False, "init": "gpt2",
            "attn": {"kind": "dense"}, "mlp": {"kind": "dense"}}  # fmt: skip
    final = {"val_loss": loss, "val_loss_full": loss, "train_seconds": 60.0,
             "step_seconds": 0.03, "tokens_per_s": 25600.0}  # fmt: skip
    r: dict[str, Any] = {
        "schema": 1, "kind": "lm", "variant": name, "description": "dense (nanoGPT)",
        "family": "dense", "spec": spec, "seed": seed,
        "weights_by_role": {"attn.qkv": 3, "attn.proj": 1, "mlp.fc": 4, "mlp.proj": 4},
        "block_weights": 12, "parameters": 100, "flops_per_token": 1_000_000, "config": cfg,
        "data": {"md5": "m", "train_chars": 900, "val_chars": 100},
        "history": {"iter": [cfg["iters"]]}, "final": final, "complete": True,
        "command": "torchkron lm sweep --jobs 2 --resume",
        "environment": {"processor": "cpu", "cpu_count": 2, "threads": 1, "git_sha": "abc"},
        "started_at": f"2026-12-01T10:{10 * seed:02d}:00+00:00",
        "finished_at": f"2026-12-01T10:{10 * seed + 5:02d}:00+00:00",
        "extra": {"phase": "main"},
    }  # fmt: skip
    if loss is None:
        r["diverged"] = {"iter": 250, "reason": "the loss is not finite at iteration 250"}
    return r


def _report(tmp_path: Path, records: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    runs = tmp_path / "runs"
    runs.mkdir(parents=True)
    for i, r in enumerate(records):
        (runs / f"{r['variant']}--seed{r['seed']}-{i}.json").write_text(json.dumps(r))
    summary = summarize(load_lm_runs(tmp_path))
    return summary, report_markdown(summary)


def test_a_diverged_seed_is_excluded_from_the_mean_with_a_note(tmp_path: Path) -> None:
    recs = [_record("dense", 0, 1.80), _record("dense", 1, None), _record("dense", 2, 1.84)]
    summary, md = _report(tmp_path, recs)
    (dense,) = [r for r in summary["rows"] if r["config"] == "dense"]
    assert dense["val_losses"] == [1.80, 1.84]
    assert dense["seeds_diverged"] == [1]
    assert "dense seed 1" not in summary["missing_main"]  # it ran
    row = next(x for x in md.splitlines() if x.startswith("| dense |"))
    assert row.endswith("| 1.820 ± 0.028 | 2/3 (1 diverged) |")
    assert (
        "Diverged runs, excluded from the means (1): dense seed 1 (the loss is not finite at "
        "iteration 250)." in md
    )
    only = [_record("dense", 0, None)]
    summary, md = _report(tmp_path / "all", only)
    assert next(x for x in md.splitlines() if x.startswith("| dense |")).endswith(
        "| diverged | 0/3 (1 diverged) |"
    )
    findings = {f["question"]: f["text"] for f in summary["findings"]}
    assert findings["MLP at 3.9%: Kronecker vs dense"] == (
        "not measured yet (kron-mlp-k2-r4 missing, dense: every run diverged)"
    )


# -- the report: runs of different recipes, a description from the files ------------------------


def test_runs_of_another_recipe_get_their_own_row(tmp_path: Path) -> None:
    recs = [_record("dense", s, 1.80 + 0.01 * s) for s in range(3)]
    recs.append(_record("dense", 3, 3.10, iters=20, lr=0.5))
    summary, md = _report(tmp_path, recs)
    rows = [r for r in summary["rows"] if r["config"] == "dense"]
    assert [r.get("recipe") for r in rows] == [None, "iters 20, lr 0.5"]
    assert rows[0]["val_losses"] == pytest.approx([1.80, 1.81, 1.82])  # never pooled
    assert rows[1]["val_losses"] == [3.10]
    lines = md.splitlines()
    assert next(x for x in lines if x.startswith("| dense |")).endswith("| 1.810 ± 0.010 | 3/3 |")
    assert (
        "| dense [iters 20, lr 0.5] | dense (nanoGPT) | 0.5 | 4 | 8 | 100 | 1.00M | 0.030 | — "
        "| 3.100 | 1/1 |" in lines
    )
    findings = {f["question"]: f for f in summary["findings"]}
    anchor = findings["dense (lr 0.001) vs nanoGPT's 1.88 anchor"]
    assert anchor["gap"] == pytest.approx(1.81 - 1.88)  # the main recipe only
    assert "dense seed 3" not in summary["missing_main"]
    assert "a row per recipe; [...] names the settings where a row differs" in md


def test_the_description_comes_from_the_run_files(tmp_path: Path) -> None:
    recs = [_record("dense", s, 1.8, iters=300, warmup_iters=10) for s in range(2)]
    recs.append(_record("dense-e64", 0, 1.9, iters=300, warmup_iters=10))
    recs[-1]["spec"]["n_embd"] = 64
    for r in recs:
        r["spec"]["n_layer"] = 2
    recs[-1]["command"] = "torchkron lm train --name dense-e64"  # one run alone
    recs[-1]["started_at"], recs[-1]["finished_at"] = (
        "2026-12-02T08:00:00+00:00",
        "2026-12-02T08:30:00+00:00",
    )
    _, md = _report(tmp_path, recs)
    assert (
        "Recipe: nanoGPT's `shakespeare_char` CPU recipe but for n_layer, iters, warmup_iters "
        "(2 layers, 4 heads, n_embd 128 (64 in dense-e64), block 64, batch 12, 300 iterations, "
        "AdamW beta2 0.99, weight decay 0.1, lr warm-up 10 then cosine to lr/10, grad clip "
        "1.0, dropout 0); each structure family at the best learning rate of its sweep (no "
        "sweep run finished);" in md
    )
    assert "over the whole validation split (last 10%) after the last step." in md
    assert (
        "Machine: cpu, 2 cores, 1 thread(s) per run, 2 runs side by side (but 1 run with "
        "--jobs 1), torch None; runs trained in 3 sessions at least between 2026-12-01 10:00 "
        "and 2026-12-02 08:30 UTC" in md
    )
    assert "\n## Learning-rate sweep\n\nNo sweep run finished yet." in md
    assert "three sessions" not in md
    assert "2000 iterations" not in md


# -- one session per output folder ------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_second_session_on_the_same_out_is_refused(
    command: str, text_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = (
        ["lm", "train", "--out", str(out), "--data-dir", str(text_dir), *TINY]
        if command == "train"
        else _sweep_args(text_dir, out, "1e-3", "2e-3")
    )
    with held_by_another_session(out, "torchkron lm sweep --resume") as lock:
        assert main([*args, "--resume"]) == 2
        assert (
            f"torchkron lm: error: {out} is in use by another torchkron session: pid "
            f"{lock['pid']}, `torchkron lm sweep --resume`, since 2026-12-01T10:00:00+00:00. "
            "Wait for it to finish or stop it, or pass another --out; if that process is "
            f"gone, delete {out / LOCK_FILE}." in _err(capsys)
        )
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
        assert json.loads((out / LOCK_FILE).read_text()) == lock
    assert main([*args, "--resume"]) == 0  # once it is gone, the folder is free again
    assert not (out / LOCK_FILE).exists()  # and released at the end
