"""--dataset and --permute-pixels: recorded in every run's config, refused on a mismatched
resume, and invisible in the configs of plain MNIST runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import dumps_json
from torchkron.experiments.mnist.config import TrainConfig

ROOT = Path(__file__).resolve().parents[3]
FAST = ["--epochs", "1", "--batch-size", "32", "--test-batch-size", "50", "--jobs", "1"]
ONE = ["--variants", "one-kron-mat", "--seeds", "1", "--quiet", "--no-compare", "--no-plots"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"))


def _config(out: Path, variant: str = "one-kron-mat") -> dict[str, object]:
    record = json.loads((out / "runs" / f"{variant}--seed0.json").read_text())
    config: dict[str, object] = record["config"]
    return config


def test_plain_mnist_config_is_byte_identical_to_the_committed_runs():
    committed = json.loads((ROOT / "results/mnist/runs/original--seed0.json").read_text())
    assert dumps_json(TrainConfig().to_dict()) == dumps_json(committed["config"])
    assert "dataset" not in TrainConfig().to_dict()
    assert "permute_pixels" not in TrainConfig().to_dict()
    # ... and such a config reads back as plain MNIST.
    assert TrainConfig.from_dict(committed["config"]) == TrainConfig()


def test_new_fields_are_recorded_and_read_back():
    config = TrainConfig(dataset="fashion-mnist", mean=0.286, std=0.353, permute_pixels=0)
    data = config.to_dict()
    assert data["dataset"] == "fashion-mnist"
    assert data["permute_pixels"] == 0
    assert TrainConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"permute_pixels": -1}, "--permute-pixels must be a whole number 0 or more"),
        ({"permute_pixels": True}, "--permute-pixels must be a whole number 0 or more"),
        ({"dataset": "cifar"}, "--dataset 'cifar' is not a known dataset; choose one of: mnist"),
    ],
)
def test_bad_values_are_refused(kw, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**kw)


def test_cli_without_the_flags_writes_todays_config(synth, tmp_path):
    out = tmp_path / "plain"
    assert main(["reproduce", "--data-dir", str(synth), "--out", str(out), *ONE, *FAST]) == 0
    expected = TrainConfig(epochs=1, batch_size=32, test_batch_size=50).to_dict()
    assert _config(out) == expected
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["one-kron-mat--seed0.json"]


def test_cli_records_permutation_and_dataset_statistics(synth, tmp_path):
    out = tmp_path / "perm"
    argv = ["reproduce", "--data-dir", str(synth), "--out", str(out), *ONE, *FAST]
    assert main([*argv, "--permute-pixels", "3", "--dataset", "fashion-mnist"]) == 0
    config = _config(out)
    assert config["permute_pixels"] == 3
    assert config["dataset"] == "fashion-mnist"
    assert (config["mean"], config["std"]) == (0.286, 0.353)  # the dataset's statistics
    # Given explicitly, --mean/--std win over the dataset's.
    out2 = tmp_path / "explicit"
    argv2 = ["reproduce", "--data-dir", str(synth), "--out", str(out2), *ONE, *FAST]
    assert main([*argv2, "--dataset", "fashion-mnist", "--mean", "0.5", "--std", "0.25"]) == 0
    assert (_config(out2)["mean"], _config(out2)["std"]) == (0.5, 0.25)


def test_resume_with_another_permutation_is_refused(synth, tmp_path, capsys):
    out = tmp_path / "resume"
    argv = ["reproduce", "--data-dir", str(synth), "--out", str(out), *ONE, *FAST]
    assert main([*argv, "--permute-pixels", "1"]) == 0
    assert main([*argv, "--permute-pixels", "1", "--resume"]) == 0  # same: kept
    capsys.readouterr()
    assert main([*argv, "--permute-pixels", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was trained with another config (permute_pixels: saved 1 vs now 2)" in err
    assert "use a different --out folder" in err
    assert main([*argv, "--resume"]) == 2
    assert "(permute_pixels: saved 1 vs now None)" in capsys.readouterr().err


def test_sweep_takes_the_flags(synth, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--data-dir", str(synth), "--out", str(out), "--only", "dense-h1"]
    extra = ["--seeds", "1", "--quiet", "--no-plots", "--permute-pixels", "4"]
    assert main([*argv, *extra, *FAST]) == 0
    assert _config(out, "dense-h1")["permute_pixels"] == 4
