"""The MNIST downloader, against a local HTTP server (no network)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from torchkron.experiments.common.errors import DataError
from torchkron.experiments.data import mnist
from torchkron.experiments.data.mnist import FILES, download_mnist, load_mnist

if TYPE_CHECKING:
    from .conftest import FileServer

GZ_NAMES = sorted(f"{name}.gz" for name in FILES.values())


def md5_table(files: dict[str, bytes]) -> dict[str, str]:
    """md5 of each served file, keyed by role like :data:`mnist.MD5`."""
    return {role: hashlib.md5(files[f"{name}.gz"]).hexdigest() for role, name in FILES.items()}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_download_success(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    mirror = http_server.serve("mnist", gz_bytes)
    dest = tmp_path / "new" / "folder"  # created on demand
    messages: list[str] = []

    download_mnist(dest, mirrors=(mirror,), md5=md5_table(gz_bytes), progress=messages.append)

    assert listing(dest) == GZ_NAMES  # no .part files left
    for name in GZ_NAMES:
        assert (dest / name).read_bytes() == gz_bytes[name]
    assert messages == [f"Downloading {mirror}{name}.gz" for name in FILES.values()]


def test_mirror_without_trailing_slash(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    mirror = http_server.serve("mnist", gz_bytes).rstrip("/")
    download_mnist(tmp_path, mirrors=(mirror,), md5=md5_table(gz_bytes))
    assert listing(tmp_path) == GZ_NAMES


def test_bad_checksum_leaves_nothing(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    mirror = http_server.serve("mnist", gz_bytes)
    sums = md5_table(gz_bytes) | {"train_images": "0" * 32}

    with pytest.raises(DataError) as info:
        download_mnist(tmp_path, mirrors=(mirror,), md5=sums)

    message = str(info.value)
    assert f"Could not download train-images-idx3-ubyte.gz into {tmp_path}" in message
    actual = hashlib.md5(gz_bytes["train-images-idx3-ubyte.gz"]).hexdigest()
    assert f"{mirror}train-images-idx3-ubyte.gz: checksum mismatch (md5 {actual}, " in message
    assert f"expected {'0' * 32})" in message
    assert "copy the four files" in message
    assert "pass --data-dir" in message
    assert listing(tmp_path) == []


def test_official_checksums_by_default(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    # The tiny files are not the official ones, so the default md5 table rejects them.
    mirror = http_server.serve("mnist", gz_bytes)
    with pytest.raises(DataError, match=f"expected {mnist.MD5['train_images']}"):
        download_mnist(tmp_path, mirrors=(mirror,))
    assert listing(tmp_path) == []


def test_partial_transfer_leaves_nothing(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    mirror = http_server.serve("mnist", gz_bytes)
    name = "t10k-images-idx3-ubyte.gz"
    body = gz_bytes[name]
    # Announce more bytes than are sent, then close the connection.
    http_server.route(f"/mnist/{name}", body[:50], declared_length=len(body))

    with pytest.raises(DataError) as info:
        download_mnist(tmp_path, mirrors=(mirror,), md5=md5_table(gz_bytes))

    message = str(info.value)
    assert f"Could not download {name}" in message
    assert (
        f"incomplete transfer: got 50 of {len(body)} bytes" in message
        or "IncompleteRead" in message
    )
    # The two files fetched before it were verified, but the set is all-or-nothing.
    assert listing(tmp_path) == []


def test_first_mirror_404_then_second(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    broken = http_server.mirror("gone")  # nothing is served there: every request is a 404
    good = http_server.serve("mnist", gz_bytes)
    messages: list[str] = []

    download_mnist(
        tmp_path, mirrors=(broken, good), md5=md5_table(gz_bytes), progress=messages.append
    )

    assert listing(tmp_path) == GZ_NAMES
    assert http_server.requests == [
        f"/{prefix}/{name}.gz" for name in FILES.values() for prefix in ("gone", "mnist")
    ]
    assert "Failed: HTTP Error 404: Not Found" in messages


def test_unreachable_mirror_then_good(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/mnist/"
    good = http_server.serve("mnist", gz_bytes)
    download_mnist(tmp_path, mirrors=(dead, good), md5=md5_table(gz_bytes), timeout=5)
    assert listing(tmp_path) == GZ_NAMES


def test_all_mirrors_fail(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    first = http_server.mirror("a")
    second = http_server.serve("b", gz_bytes)
    sums = md5_table(gz_bytes) | {"train_images": "f" * 32}

    with pytest.raises(DataError) as info:
        download_mnist(tmp_path, mirrors=(first, second), md5=sums)

    message = str(info.value)
    assert "every mirror failed" in message
    assert f"  - {first}train-images-idx3-ubyte.gz: HTTP Error 404: Not Found\n" in message
    assert f"  - {second}train-images-idx3-ubyte.gz: checksum mismatch" in message
    assert listing(tmp_path) == []


def test_failure_keeps_existing_files(
    tmp_path: Path, http_server: FileServer, gz_bytes: dict[str, bytes]
) -> None:
    # A failed download must not touch what was already in the folder.
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError):
        download_mnist(tmp_path, mirrors=(http_server.mirror("none"),), md5=md5_table(gz_bytes))
    assert listing(tmp_path) == ["notes.txt"]


def test_no_mirrors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one mirror"):
        download_mnist(tmp_path, mirrors=())


def test_unwritable_destination(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=r"Could not create the MNIST folder .*writable folder"):
        download_mnist(blocker / "sub", mirrors=("http://127.0.0.1:9/",))


def test_load_mnist_downloads_into_empty_folder(
    tmp_path: Path,
    http_server: FileServer,
    gz_bytes: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mirror = http_server.serve("mnist", gz_bytes)
    monkeypatch.setattr(mnist, "MD5", md5_table(gz_bytes))
    messages: list[str] = []

    data = load_mnist(tmp_path / "cache", mirrors=(mirror,), progress=messages.append)

    assert data.train_images.shape == (20, 4, 4)
    assert data.num_classes == 10
    assert listing(tmp_path / "cache") == GZ_NAMES
    assert sum(m.startswith("Downloading ") for m in messages) == 4
    assert sum(m.startswith("Reading ") for m in messages) == 4
    # A second load reads the local files and does not download again.
    before = len(http_server.requests)
    again = load_mnist(tmp_path / "cache", mirrors=(mirror,))
    assert len(http_server.requests) == before
    np.testing.assert_array_equal(again.test_labels.numpy(), data.test_labels.numpy())
