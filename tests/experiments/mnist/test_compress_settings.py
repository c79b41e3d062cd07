"""``torchkron compress --calibration N`` (activation-aware conversion) and ``--distill``
(fine-tuning by distillation): the options' checks, the output error they are meant to
lower, and the command end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.mnist.compress import (
    calibration_batches,
    convert,
    held_moments,
    layer_errors,
    setting_tag,
)
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.variants import build_mlp, dense_baseline

FAST = ["--batch-size", "32", "--test-batch-size", "50", "--quiet", "--jobs", "1"]


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


# --- the options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--calibration", "0"], "argument --calibration: must be at least 1, got 0"),
        (["--finetune-seeds", "0"], "argument --finetune-seeds: must be at least 1, got 0"),
        (["--distill", "--temperature", "0"], "argument --temperature: must be positive, got 0"),
        (["--distill", "--distill-alpha", "-1"], "argument --distill-alpha: must be 0 or more"),
    ],
)
def test_bad_values_are_refused_at_parse_time(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compress", *args])
    assert exc.value.code == 2
    assert message in _error(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--temperature", "2"],
            "--temperature sets up the distillation: add --distill, or drop --temperature.",
        ),
        (
            ["--distill-alpha", "0.5"],
            "--distill-alpha sets up the distillation: add --distill, or drop --distill-alpha.",
        ),
        (
            ["--distill", "--distill-alpha", "1.5"],
            "--distill-alpha must be in [0, 1] (the label loss's share), got 1.5.",
        ),
    ],
)
def test_distillation_options_need_each_other(args, message, tmp_path, capsys):
    assert main(["compress", "--out", str(tmp_path / "o"), *args]) == 2
    assert _error(capsys) == f"torchkron compress: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_train_config_checks_and_keeps_old_configs_unchanged():
    assert "distill_temperature" not in TrainConfig().to_dict()
    assert "distill_alpha" not in TrainConfig().to_dict()
    config = TrainConfig(distill_temperature=4.0, distill_alpha=0.25)
    assert config.to_dict()["distill_temperature"] == 4.0
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UserError) as exc:
        TrainConfig(distill_alpha=0.5)
    assert str(exc.value) == (
        "--distill-alpha 0.5 mixes the label loss into a distillation, but no distillation "
        "is set: add --distill, or drop --distill-alpha."
    )
    for bad in (-1.0, float("inf")):
        with pytest.raises(UserError) as exc:
            TrainConfig(distill_temperature=bad)
        assert str(exc.value) == (
            "--temperature must be positive and finite (the distillation's softmax "
            f"temperature), got {bad}."
        )


def test_setting_tags_name_only_what_differs_from_the_default():
    assert setting_tag(None, TrainConfig()) == ""
    assert setting_tag(1024, TrainConfig()) == "-cal1024"
    assert setting_tag(None, TrainConfig(distill_temperature=4.0)) == "-kd4"
    both = TrainConfig(distill_temperature=2.5, distill_alpha=0.5)
    assert setting_tag(64, both) == "-cal64-kd2.5-a0.5"


def test_calibration_batches_take_the_first_images_and_check_the_count():
    x = torch.arange(10.0)[:, None]
    batches = calibration_batches(x, 7, 3)
    assert [b[:, 0].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(UserError) as exc:
        calibration_batches(x, 11, 3)
    assert str(exc.value) == (
        "--calibration 11 asks for more calibration images than the training set holds "
        "(10); pass at most 10."
    )


# --- what activation-aware conversion is for ---------------------------------------------


def test_activation_aware_conversion_lowers_the_output_error_where_it_must():
    """Images whose pixel covariance is a Kronecker product of a row and a column
    covariance, each far from isotropic: the K-FAC route is then exact, so its rank-1
    factors minimise the output error, and the plain (weight-space) factors do not."""
    torch.manual_seed(0)
    model = build_mlp(dense_baseline(4))
    g = torch.Generator().manual_seed(5)
    scale = torch.logspace(0, -2, 28)
    rows = torch.linalg.qr(torch.randn(28, 28, generator=g))[0] * scale  # (28, 28)
    cols = torch.linalg.qr(torch.randn(28, 28, generator=g))[0] * scale.flip(0)
    mix = torch.kron(rows, cols)  # (784, 784): x = mix z has C = kron(rows rows^T, cols cols^T)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 784, generator=g) @ mix.T  # (n, 784)

    calibration, held = images(4096), images(4096)
    plain, _ = convert(model, layers=("hidden",), factors=2, rank=1)
    aware, report = convert(model, layers=("hidden",), factors=2, rank=1, calibration=[calibration])
    moments = held_moments(model, ["hidden"], held, 1024)
    plain_err = layer_errors(model, plain, ["hidden"], moments)["hidden"]
    aware_err = layer_errors(model, aware, ["hidden"], moments)["hidden"]
    assert aware_err < 0.9 * plain_err
    # The weight error goes the other way: plain Van Loan is the Frobenius optimum.
    weight = layer_errors(model, plain, ["hidden"])["hidden"]
    assert layer_errors(model, aware, ["hidden"])["hidden"] > weight
    # kronify's own number is the output error on the calibration inputs.
    assert report.replaced[0].approximation_error == pytest.approx(aware_err, rel=0.05)


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def checkpoint(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mnist")
    args = ["train", "--variant", "dense-h4", "--data-dir", str(synth), "--out", str(out)]
    assert main([*args, "--epochs", "2", *FAST[:-2]]) == 0
    return out / "models" / "dense-h4--seed0.pt"


def _compress(synth: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    args = ["compress", "--checkpoint", str(checkpoint), "--data-dir", str(synth)]
    args += ["--out", str(out), "--ranks", "1", "2", "--epochs", "1", "--layers", "hidden"]
    args += ["--scratch-epochs", "1", "--scratch-seeds", "2", "--no-plots"]
    args += ["--reuse-from", str(out.parent / "no-sweep")]
    return main([*args, *FAST, *extra])


def test_compress_with_calibration_and_distillation(synth, checkpoint, tmp_path, capsys):
    out = tmp_path / "c"
    assert _compress(synth, checkpoint, out) == 0
    default = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    plain = json.loads(default["finetune-k2-r1-hidden--seed0.json"])
    assert "distill_temperature" not in plain["config"]
    assert not {"calibration", "distill", "output_error"} & set(plain["extra"]["compress"])

    assert _compress(synth, checkpoint, out, "--resume", "--calibration", "500") == 2
    assert _error(capsys) == (
        "torchkron compress: error: --calibration 500 asks for more calibration images than "
        "the training set holds (192); pass at most 192.\n"
    )
    extra = ["--resume", "--calibration", "64", "--distill", "--temperature", "2"]
    extra += ["--distill-alpha", "0.5", "--finetune-seeds", "2"]
    assert _compress(synth, checkpoint, out, *extra) == 0
    assert _compress(synth, checkpoint, out, "--resume", "--distill") == 0
    runs = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    # The default arm's files are untouched; the new settings have files of their own.
    assert {k: runs[k] for k in default} == default
    assert sorted(set(runs) - set(default)) == [
        "finetune-k2-r1-hidden-cal64-kd2-a0.5--seed0.json",
        "finetune-k2-r1-hidden-cal64-kd2-a0.5--seed1.json",
        "finetune-k2-r1-hidden-kd4--seed0.json",
        "finetune-k2-r2-hidden-cal64-kd2-a0.5--seed0.json",
        "finetune-k2-r2-hidden-cal64-kd2-a0.5--seed1.json",
        "finetune-k2-r2-hidden-kd4--seed0.json",
    ]
    record = json.loads(runs["finetune-k2-r1-hidden-cal64-kd2-a0.5--seed0.json"])
    assert record["config"]["distill_temperature"] == 2.0
    assert record["config"]["distill_alpha"] == 0.5
    block = record["extra"]["compress"]
    assert block["calibration"] == 64
    assert block["distill"] == {"temperature": 2.0, "alpha": 0.5}
    assert set(block["output_error"]) == set(block["plain_output_error"]) == {"hidden"}
    assert set(block["calibration_error"]) == {"hidden"}
    kd = json.loads(runs["finetune-k2-r1-hidden-kd4--seed0.json"])["extra"]["compress"]
    assert "calibration" not in kd
    # The plain conversion is the same in every run of rank 1.
    assert kd["output_error"] == kd["plain_output_error"] == block["plain_output_error"]
    assert kd["converted"] == kd["plain_converted"] == plain["extra"]["compress"]["converted"]
    assert block["plain_converted"] == kd["plain_converted"]

    summary = json.loads((out / "compress.json").read_text())
    (group,) = summary["groups"]
    assert [f["id"] for f in group["setting_findings"]] == [
        "aware-output-error",
        "aware-converted",
        "aware-finetuned",
        "distill-vs-labels",
        "any-vs-scratch",
    ]
    assert summary["warnings"] == []
    row = group["rows"][0]
    assert list(row["settings"]) == [
        "plain + distillation (T=4)",
        "activation-aware (N=64) + distillation (T=2, labels 0.5)",
    ]
    assert row["settings"]["plain + distillation (T=4)"]["arm"]["seeds"] == 1
    md = (out / "compress.md").read_text()
    assert "### Activation-aware conversion and distillation" in md
    assert (
        "| rank | weights | output error: plain | output error: activation-aware (N=64) | "
        "(a) plain % | (a) activation-aware (N=64) % | (b) plain + labels % | (b) plain + "
        "distillation (T=4) % | (b) activation-aware (N=64) + distillation (T=2, labels "
        "0.5) % | (c) scratch % |" in md
    )
    assert "8. **Does any converted arm beat training the same net from scratch?**" in md
    # The report is a pure function of the run files.
    (out / "compress.md").unlink()
    assert main(["compress", "--out", str(out), "--report-only", "--no-plots"]) == 0
    assert (out / "compress.md").read_text() == md


# --- the findings of the settings section -------------------------------------------------


def _vs(diff: float, beyond: bool, measured: bool = True) -> dict[str, object]:
    return {"diff": diff, "beyond_noise": beyond, "measured": measured}


def _setting_row(rank: int, aware_acc: float, plain_acc: float, vs_scratch) -> dict:
    label = "activation-aware (N=64) + labels"
    entry = {
        "key": [64, 0.0, 0.0],
        "label": label,
        "arm": {"name": f"a{rank}", "seeds": 3},
        "converted": {"test_accuracy": aware_acc},
        "output_error": {"hidden": 0.5},
        "plain_output_error": {"hidden": 0.6 if rank == 1 else 0.5},
        "plain_converted": {"test_accuracy": plain_acc},
        "vs_scratch": vs_scratch,
        "vs_plain": None,
        "vs_labels": None,
    }
    return {
        "rank": rank,
        "conversion": None,
        "finetune": None,
        "scratch": {"seeds": 3},
        "finetune_minus_scratch": None,
        "settings": {label: entry},
    }


def test_setting_findings_say_who_wins_plainly():
    from torchkron.experiments.mnist.compress_report import setting_findings

    rows = [
        _setting_row(1, 20.0, 15.0, _vs(0.4, True)),
        _setting_row(2, 10.0, 10.0, _vs(0.1, False)),
        _setting_row(4, 30.0, 35.0, _vs(-0.5, True, measured=False)),
    ]
    found = {f["id"]: f for f in setting_findings(rows)}
    assert found["aware-output-error"]["answer"] == (
        "At ranks 1 only (plain hidden 0.6000 vs activation-aware hidden 0.5000 at rank 1; "
        "plain hidden 0.5000 vs hidden 0.5000 at rank 4)."
    )
    assert found["aware-converted"]["answer"] == (
        "Higher at ranks 1; lower at ranks 4; equal at ranks 2 (plain -> activation-aware: "
        "rank 1: 15.00% -> 20.00%; rank 2: 10.00% -> 10.00%; rank 4: 35.00% -> 30.00%)."
    )
    assert found["aware-converted"]["holds"] is False
    assert found["distill-vs-labels"]["holds"] is None
    scratch = found["any-vs-scratch"]
    assert scratch["holds"] is True
    assert scratch["answer"] == (
        "Yes: activation-aware (N=64) + labels. Activation-aware (N=64) + labels vs scratch: "
        "activation-aware (N=64) + labels higher at ranks 1; scratch higher at ranks 4; "
        "within seed noise at ranks 2 (difference -0.50 to +0.40 pp; one seed each at ranks "
        "4: noise not measured there)."
    )
    assert setting_findings([{**rows[0], "settings": {}}]) == []
