"""Locating and loading MNIST-format folders (no network)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from torchkron.experiments.common.errors import DataError
from torchkron.experiments.data.idx import write_idx
from torchkron.experiments.data.mnist import FILES, default_data_dir, find_files, load_mnist

if TYPE_CHECKING:
    from .conftest import Arrays, MakeDataset

REPO_ROOT = Path(__file__).resolve().parents[3]


# --- default_data_dir ----------------------------------------------------------------


def test_default_dir_from_torchkron_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHKRON_DATA", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "mine"


def test_default_dir_from_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCHKRON_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "torchkron" / "mnist"


@pytest.mark.parametrize("xdg", [None, "", "relative/cache"])
def test_default_dir_falls_back_to_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdg: str | None
) -> None:
    monkeypatch.delenv("TORCHKRON_DATA", raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "torchkron" / "mnist"


# --- find_files ----------------------------------------------------------------------


def test_find_files_none_when_absent(tmp_path: Path) -> None:
    assert find_files(tmp_path / "does-not-exist") is None
    assert find_files(tmp_path) is None
    (tmp_path / "README.md").write_text("unrelated")
    assert find_files(tmp_path) is None


def test_find_files_prefers_plain(make_dataset: MakeDataset) -> None:
    folder = make_dataset(gz=True)
    make_dataset(folder, gz=False, skip=("test_labels",))
    found = find_files(folder)
    assert found is not None
    assert found["train_images"].name == "train-images-idx3-ubyte"
    assert found["test_labels"].name == "t10k-labels-idx1-ubyte.gz"


def test_find_files_partial_set(make_dataset: MakeDataset) -> None:
    folder = make_dataset(skip=("train_labels", "test_images"))
    with pytest.raises(DataError) as info:
        find_files(folder)
    message = str(info.value)
    assert f"The MNIST folder {folder} is incomplete" in message
    assert "missing train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz]" in message
    assert "it has train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in message
    assert "Copy the missing files" in message


def test_find_files_not_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataError, match=r"is not a folder\. Pass --data-dir"):
        find_files(path)


# --- load_mnist ----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load(make_dataset: MakeDataset, arrays: Arrays, gz: bool) -> None:
    folder = make_dataset(gz=gz)
    messages: list[str] = []
    data = load_mnist(folder, download=False, progress=messages.append)

    assert data.source == folder
    assert data.train_images.dtype == torch.uint8
    assert data.train_images.shape == (20, 4, 4)
    assert data.test_images.shape == (10, 4, 4)
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.shape == (20,)
    assert data.test_labels.shape == (10,)
    assert data.num_classes == 10
    assert data.image_size == 16
    for role in FILES:
        np.testing.assert_array_equal(getattr(data, role).numpy(), arrays[role])
    assert len(messages) == 4
    assert all(m.startswith("Reading ") for m in messages)


def test_num_classes_counts_both_splits(make_dataset: MakeDataset) -> None:
    labels = np.zeros(10, dtype=np.uint8)
    labels[3] = 12  # a class that only the test split has
    folder = make_dataset(test_labels=labels)
    assert load_mnist(folder, download=False).num_classes == 13


def test_load_uses_default_dir(make_dataset: MakeDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_dataset()
    monkeypatch.setenv("TORCHKRON_DATA", str(folder))
    assert load_mnist(download=False).source == folder


def test_load_without_files_and_no_download(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        load_mnist(folder, download=False)
    message = str(info.value)
    assert f"No MNIST files were found in {folder}" in message
    assert "train-images-idx3-ubyte[.gz]" in message
    assert "Pass --data-dir" in message
    assert "set TORCHKRON_DATA" in message
    assert "allow the download" in message
    assert not folder.exists()  # looking must not create anything


def test_load_does_not_download_over_partial_set(make_dataset: MakeDataset) -> None:
    folder = make_dataset(skip=("test_labels",))
    # download=True but mirrors unusable: the partial set must be reported, not fetched.
    with pytest.raises(DataError, match="is incomplete"):
        load_mnist(folder, download=True, mirrors=("http://invalid.invalid/",))


def test_label_count_mismatch(make_dataset: MakeDataset) -> None:
    folder = make_dataset(train_labels=np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError) as info:
        load_mnist(folder, download=False)
    assert str(info.value) == (
        f"The train split does not match: {folder / 'train-images-idx3-ubyte.gz'} has 20 "
        f"images but {folder / 'train-labels-idx1-ubyte.gz'} has 19 labels. One of the files "
        "is damaged or from another dataset; replace both with a matching pair."
    )


def test_train_test_image_size_mismatch(make_dataset: MakeDataset) -> None:
    folder = make_dataset(test_images=np.zeros((10, 5, 4), dtype=np.uint8))
    with pytest.raises(
        DataError,
        match=r"Training and test images differ in size: .* has 4x4 images but .* has 5x4\. "
        r"Use training and test files from the same dataset\.",
    ):
        load_mnist(folder, download=False)


def test_images_and_labels_swapped(make_dataset: MakeDataset, arrays: Arrays) -> None:
    folder = make_dataset(train_images=arrays["train_labels"])
    with pytest.raises(
        DataError,
        match=re.escape("has 1 dimension(s) but 3 were expected") + ".*images and labels swapped",
    ):
        load_mnist(folder, download=False)


def test_empty_split(make_dataset: MakeDataset) -> None:
    folder = make_dataset(
        test_images=np.zeros((0, 4, 4), dtype=np.uint8), test_labels=np.zeros(0, dtype=np.uint8)
    )
    with pytest.raises(DataError, match=r"The test split is empty: .* hold no samples"):
        load_mnist(folder, download=False)


def test_zero_sized_images(make_dataset: MakeDataset) -> None:
    folder = make_dataset(
        train_images=np.zeros((20, 0, 4), dtype=np.uint8),
        test_images=np.zeros((10, 0, 4), dtype=np.uint8),
    )
    with pytest.raises(DataError, match=r"have size 0x4; images need at least one row"):
        load_mnist(folder, download=False)


def test_single_class(make_dataset: MakeDataset) -> None:
    folder = make_dataset(
        train_labels=np.zeros(20, dtype=np.uint8), test_labels=np.zeros(10, dtype=np.uint8)
    )
    with pytest.raises(DataError, match="only one class to learn"):
        load_mnist(folder, download=False)


def test_damaged_file_is_reported_by_name(make_dataset: MakeDataset) -> None:
    folder = make_dataset()
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=re.escape(str(path)) + " is a corrupt or truncated gzip"):
        load_mnist(folder, download=False)


def test_local_files_are_not_checksummed(make_dataset: MakeDataset) -> None:
    # The tiny files cannot match the official md5 sums; loading them must still work.
    folder = make_dataset()
    write_idx(folder / "train-images-idx3-ubyte.gz", np.ones((20, 4, 4), dtype=np.uint8))
    assert int(load_mnist(folder, download=False).train_images.sum()) == 20 * 16


# --- the real dataset ----------------------------------------------------------------


def _real_mnist_dir() -> Path | None:
    env = os.environ.get("TORCHKRON_DATA")
    for candidate in (Path(env) if env else None, REPO_ROOT.parent / "shared" / "data" / "mnist"):
        if candidate is not None and candidate.is_dir():
            return candidate
    return None


@pytest.mark.mnist
def test_real_mnist() -> None:
    folder = _real_mnist_dir()
    if folder is None:
        pytest.skip("no MNIST folder (set TORCHKRON_DATA or provide ../shared/data/mnist)")
    data = load_mnist(folder, download=False)
    assert data.train_images.shape == (60000, 28, 28)
    assert data.test_images.shape == (10000, 28, 28)
    assert data.train_labels.shape == (60000,)
    assert data.test_labels.shape == (10000,)
    assert data.image_size == 784
    assert data.num_classes == 10
    for labels in (data.train_labels, data.test_labels):
        assert torch.equal(torch.unique(labels), torch.arange(10))
