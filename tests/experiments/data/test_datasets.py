"""Named datasets: Fashion-MNIST beside MNIST, each with its own statistics and download."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchkron.experiments.common.errors import DataError
from torchkron.experiments.data.mnist import DATASETS, MD5, default_data_dir, load_mnist
from torchkron.experiments.mnist.options import DATASET_STATS


def test_dataset_statistics_match_their_readmes():
    assert (DATASETS["mnist"].mean, DATASETS["mnist"].std) == (0.1307, 0.3081)
    assert (DATASETS["fashion-mnist"].mean, DATASETS["fashion-mnist"].std) == (0.2860, 0.3530)
    # The CLI's copy (kept there to spare importing torch at start-up) agrees.
    assert {k: (d.mean, d.std) for k, d in DATASETS.items()} == DATASET_STATS
    assert DATASETS["mnist"].md5 == MD5
    assert DATASETS["fashion-mnist"].md5["train_images"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"


def test_each_dataset_has_its_own_default_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("TORCHKRON_DATA", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"
    # TORCHKRON_DATA is MNIST's folder: a Fashion-MNIST run must not read MNIST from it.
    assert default_data_dir("fashion-mnist") == tmp_path / "torchkron" / "fashion-mnist"


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"Unknown dataset 'cifar'; choose one of: mnist, fash"):
        load_mnist(tmp_path, download=False, dataset="cifar")


def test_missing_fashion_files_name_the_dataset(tmp_path):
    with pytest.raises(DataError, match=f"No Fashion-MNIST files were found in {tmp_path}"):
        load_mnist(tmp_path, download=False, dataset="fashion-mnist")


def test_fashion_download_uses_its_own_mirrors_and_checksums(monkeypatch, tmp_path):
    seen: dict[str, object] = {}

    def fake_download(dest: Path, **kw: object) -> None:
        seen.update(kw)
        raise DataError("stop here")

    monkeypatch.setattr("torchkron.experiments.data.mnist.download_mnist", fake_download)
    with pytest.raises(DataError, match="stop here"):
        load_mnist(tmp_path / "empty", dataset="fashion-mnist")
    assert seen["md5"] == DATASETS["fashion-mnist"].md5
    assert seen["mirrors"] == DATASETS["fashion-mnist"].mirrors
