"""Locating, loading and downloading MNIST-format datasets.

A dataset folder holds the four files of the MNIST distribution, each either plain or
gzip-compressed (``name`` or ``name.gz``). Local files are read as they are, without a
checksum check, so rebuilt or MNIST-like datasets in the same format load too; only
downloads are verified against the official md5 sums.

Two datasets are known by name (:data:`DATASETS`): MNIST and Fashion-MNIST, which ships
in the same format and file names. The name picks the default folder, the download
mirrors and checksums, and the pixel mean/std a run normalises with; it is never guessed
from a folder's contents.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import torch

from torchkron.experiments.common.errors import DataError
from torchkron.experiments.common.files import create_temporary
from torchkron.experiments.data.idx import read_idx

__all__ = [
    "DATASETS",
    "FILES",
    "MD5",
    "MIRRORS",
    "Dataset",
    "MnistData",
    "default_data_dir",
    "download_mnist",
    "find_files",
    "get_dataset",
    "load_mnist",
]

FILES: Mapping[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four dataset files, by role, without the ``.gz`` suffix."""

MD5: Mapping[str, str] = {
    "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
    "test_images": "9fb629c4189551a2d022fa330f9573f3",
    "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""Official md5 of each ``.gz`` file, by role; used to verify downloads only."""

MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Base URLs tried in order, as torchvision does."""


@dataclass(frozen=True)
class Dataset:
    """A named MNIST-format dataset: where to get it and how to normalise it.

    Attributes:
        name: the ``--dataset`` value, also the default cache folder's name.
        title: the name shown in reports.
        mean: training-set pixel mean after scaling to [0, 1].
        std: training-set pixel std after scaling to [0, 1].
        mirrors: download base URLs, tried in order.
        md5: md5 of each official ``.gz`` file, by role (the keys of :data:`FILES`).
    """

    name: str
    title: str
    mean: float
    std: float
    mirrors: tuple[str, ...]
    md5: Mapping[str, str]


DATASETS: Mapping[str, Dataset] = {
    "mnist": Dataset("mnist", "MNIST", 0.1307, 0.3081, MIRRORS, MD5),
    # Zalando Research's release (MIT licence); mean/std of its training set.
    "fashion-mnist": Dataset(
        "fashion-mnist",
        "Fashion-MNIST",
        0.2860,
        0.3530,
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        {
            "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
            "test_images": "bef4ecab320f06d8554ea6380940ec79",
            "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}
"""The datasets ``--dataset`` knows, by name."""


def get_dataset(name: str) -> Dataset:
    """The dataset called ``name``, or an error listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise DataError(f"Unknown dataset {name!r}; choose one of: {known}.") from None


_CHUNK = 1 << 16
# Some mirrors refuse urllib's default user agent.
_USER_AGENT = "torchkron-mnist-downloader"
_DOWNLOAD_ERRORS = (OSError, http.client.HTTPException, ValueError)


@dataclass(frozen=True)
class MnistData:
    """An MNIST-format dataset held in memory.

    Attributes:
        train_images: ``torch.uint8`` tensor of shape ``(N, rows, cols)``.
        train_labels: ``torch.int64`` tensor of shape ``(N,)``.
        test_images: ``torch.uint8`` tensor of shape ``(M, rows, cols)``.
        test_labels: ``torch.int64`` tensor of shape ``(M,)``.
        source: the folder the files were read from.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: Path

    @property
    def num_classes(self) -> int:
        """One more than the largest label in either split."""
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1

    @property
    def image_size(self) -> int:
        """Pixels per image (rows * cols), the input width of a flat classifier."""
        return int(self.train_images.shape[1] * self.train_images.shape[2])


def default_data_dir(dataset: str = "mnist") -> Path:
    """The folder used when none is given.

    For MNIST: ``$TORCHKRON_DATA`` if set, else ``$XDG_CACHE_HOME/torchkron/mnist``, else
    ``~/.cache/torchkron/mnist``. Another dataset gets its own cache folder
    (``.../torchkron/fashion-mnist``); ``$TORCHKRON_DATA`` names MNIST's folder only, so
    that it never feeds MNIST to a run that asked for another dataset.
    """
    name = get_dataset(dataset).name
    if name == "mnist" and (env := os.environ.get("TORCHKRON_DATA")):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    base = Path(cache) if cache and Path(cache).is_absolute() else Path.home() / ".cache"
    return base / "torchkron" / name


def find_files(data_dir: Path) -> dict[str, Path] | None:
    """Locate the four dataset files in ``data_dir``.

    Each file may be plain or ``.gz``; the plain one wins if both exist.

    Returns:
        The path of each file by role (the keys of :data:`FILES`), or ``None`` if the
        folder does not exist or holds none of them.

    Raises:
        DataError: ``data_dir`` is not a folder, or only some of the files are there.
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        return None
    if not data_dir.is_dir():
        raise DataError(
            f"The MNIST data path {data_dir} is not a folder. "
            "Pass --data-dir (or set TORCHKRON_DATA) to the folder that holds the files."
        )
    found: dict[str, Path] = {}
    for role, name in FILES.items():
        for candidate in (data_dir / name, data_dir / f"{name}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
    if not found:
        return None
    if len(found) < len(FILES):
        missing = ", ".join(f"{FILES[r]}[.gz]" for r in FILES if r not in found)
        present = ", ".join(p.name for p in found.values())
        raise DataError(
            f"The MNIST folder {data_dir} is incomplete: it has {present} but is missing "
            f"{missing}. Copy the missing files into it, or empty the folder so that the "
            "dataset can be downloaded again."
        )
    return found


def load_mnist(
    data_dir: Path | None = None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: Callable[[str], None] | None = None,
    dataset: str = "mnist",
) -> MnistData:
    """Load an MNIST-format dataset, downloading it first if the folder is empty.

    Args:
        data_dir: folder holding the four files; ``None`` means
            :func:`default_data_dir` of ``dataset``.
        download: download the official files of ``dataset`` if the folder holds none of
            them.
        mirrors: base URLs to download from, tried in order (default: the dataset's).
        timeout: socket timeout in seconds for each download request.
        progress: called with a one-line message for each step (e.g. ``print``).
        dataset: which dataset (a key of :data:`DATASETS`) a download fetches and the
            default folder holds; local files are read whatever they hold.

    Raises:
        DataError: the files are missing (and not downloadable), damaged, or
            inconsistent with each other; ``dataset`` is unknown.
    """
    info = get_dataset(dataset)
    data_dir = default_data_dir(info.name) if data_dir is None else Path(data_dir)
    paths = find_files(data_dir)
    if paths is None:
        if not download:
            raise DataError(
                f"No {info.title} files were found in {data_dir} (looked for "
                f"{', '.join(f'{n}[.gz]' for n in FILES.values())}). Pass --data-dir to a "
                "folder that has them, set TORCHKRON_DATA to one, or allow the download."
            )
        download_mnist(
            data_dir,
            mirrors=info.mirrors if mirrors is None else mirrors,
            timeout=timeout,
            progress=progress,
            # MNIST's sums: download_mnist's default, the module's MD5, read at call time.
            md5=None if info.name == "mnist" else info.md5,
        )
        paths = find_files(data_dir)
        if paths is None:  # pragma: no cover - download_mnist raises instead
            raise DataError(f"The MNIST download into {data_dir} produced no files.")

    arrays: dict[str, npt.NDArray[np.uint8]] = {}
    for role, path in paths.items():
        if progress is not None:
            progress(f"Reading {path}")
        arrays[role] = read_idx(path, expected_ndim=3 if role.endswith("images") else 1)
    _validate(arrays, paths)

    return MnistData(
        train_images=torch.from_numpy(arrays["train_images"]),
        # int64 because that is what cross-entropy and indexing expect.
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        source=data_dir,
    )


def _validate(arrays: Mapping[str, npt.NDArray[np.uint8]], paths: Mapping[str, Path]) -> None:
    """Check that the four arrays form one consistent dataset."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        ipath, lpath = paths[f"{split}_images"], paths[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(
                f"The {split} split does not match: {ipath} has {len(images)} images but "
                f"{lpath} has {len(labels)} labels. One of the files is damaged or from "
                "another dataset; replace both with a matching pair."
            )
        if len(images) == 0:
            raise DataError(
                f"The {split} split is empty: {ipath} and {lpath} hold no samples. "
                "Replace them with non-empty files."
            )
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise DataError(
                f"The images in {ipath} have size {images.shape[1]}x{images.shape[2]}; "
                "images need at least one row and one column. Replace the file."
            )

    train_hw = arrays["train_images"].shape[1:]
    test_hw = arrays["test_images"].shape[1:]
    if train_hw != test_hw:
        raise DataError(
            f"Training and test images differ in size: {paths['train_images']} has "
            f"{train_hw[0]}x{train_hw[1]} images but {paths['test_images']} has "
            f"{test_hw[0]}x{test_hw[1]}. Use training and test files from the same dataset."
        )

    # Labels are uint8, so they are already in 0..255; a classifier also needs two classes.
    top = max(int(arrays["train_labels"].max()), int(arrays["test_labels"].max()))
    if top < 1:
        raise DataError(
            f"All labels in {paths['train_labels']} and {paths['test_labels']} are 0, so "
            "there is only one class to learn. Check that these are the right label files."
        )


def download_mnist(
    dest: Path,
    *,
    mirrors: Sequence[str] = MIRRORS,
    timeout: float = 30.0,
    progress: Callable[[str], None] | None = None,
    md5: Mapping[str, str] | None = None,
) -> None:
    """Download the four ``.gz`` files into ``dest``, verifying each md5.

    Each file is streamed into a unique ``.part`` file in ``dest`` and hashed as it
    arrives; mirrors are tried in order until one delivers the complete file with the
    right checksum. Files are moved into place only once all four are verified, so a
    failed call leaves ``dest`` as it was.

    Args:
        dest: folder to download into; created if missing.
        mirrors: base URLs, tried in order for each file.
        timeout: socket timeout in seconds for each request.
        progress: called with a one-line message for each step.
        md5: expected md5 by role (the keys of :data:`FILES`); defaults to :data:`MD5`.

    Raises:
        DataError: ``dest`` cannot be created, or some file could not be fetched intact
            from any mirror.
        ValueError: ``mirrors`` is empty.
    """
    if not mirrors:
        raise ValueError("download_mnist needs at least one mirror URL")
    sums = MD5 if md5 is None else md5
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Could not create the MNIST folder {dest}: {exc.strerror or exc}. Pass "
            "--data-dir (or set TORCHKRON_DATA) to a writable folder."
        ) from exc

    verified: dict[Path, Path] = {}  # .part file -> final path
    try:
        for role, name in FILES.items():
            filename = f"{name}.gz"
            verified[_fetch(filename, sums[role], dest, mirrors, timeout, progress)] = (
                dest / filename
            )
        for part, final in verified.items():
            os.replace(part, final)
        verified.clear()
    finally:
        for part in verified:
            part.unlink(missing_ok=True)


def _fetch(
    filename: str,
    expected_md5: str,
    dest: Path,
    mirrors: Sequence[str],
    timeout: float,
    progress: Callable[[str], None] | None,
) -> Path:
    """Fetch one file from the first mirror that serves it intact; return its .part file."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += filename
        if progress is not None:
            progress(f"Downloading {url}")
        fd, part = create_temporary(dest / filename, ".part")  # umask applies
        try:
            with os.fdopen(fd, "wb") as out:
                digest = _stream(url, out, timeout)
            if digest != expected_md5:
                raise _TransferError(f"checksum mismatch (md5 {digest}, expected {expected_md5})")
            return part
        except (*_DOWNLOAD_ERRORS, _TransferError) as exc:
            part.unlink(missing_ok=True)
            failures.append(f"{url}: {exc}")
            if progress is not None:
                progress(f"Failed: {exc}")
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    tried = "\n".join(f"  - {f}" for f in failures)
    names = ", ".join(f"{n}.gz" for n in FILES.values())
    raise DataError(
        f"Could not download {filename} into {dest}; every mirror failed:\n{tried}\n"
        f"Check the network connection, or copy the four files ({names}) into {dest} "
        "by hand, or pass --data-dir to a folder that already has them."
    )


class _TransferError(Exception):
    """A download that arrived incomplete or with the wrong checksum."""


def _stream(url: str, out: BinaryIO, timeout: float) -> str:
    """Stream ``url`` into the binary file ``out``; return the md5 hex digest."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        while chunk := response.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            received += len(chunk)
    # urllib may end a short body quietly instead of raising IncompleteRead.
    if length is not None and length.isdigit() and received != int(length):
        raise _TransferError(f"incomplete transfer: got {received} of {length} bytes")
    return digest.hexdigest()
