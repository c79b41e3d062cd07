"""IDX reading and writing: round trips and every way a file can be damaged."""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from torchkron.experiments.common.errors import DataError, UserError
from torchkron.experiments.data.idx import read_idx, write_idx

GZIP_MAGIC = b"\x1f\x8b"


def idx_bytes(shape: tuple[int, ...], data: bytes, *, dtype: int = 0x08) -> bytes:
    """Hand-built IDX bytes (header from ``shape``, then ``data`` verbatim)."""
    return bytes([0, 0, dtype, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + data


def put(path: Path, content: bytes, *, gz: bool) -> Path:
    """Write raw ``content`` to ``path``, gzipped if ``gz``."""
    path.write_bytes(gzip.compress(content, mtime=0) if gz else content)
    return path


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    array = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = tmp_path / name
    write_idx(path, array)

    assert (path.read_bytes()[:2] == GZIP_MAGIC) == name.endswith(".gz")
    out = read_idx(path, expected_ndim=3)
    assert out.dtype == np.uint8
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, array)


def test_plain_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02\x03"


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    array = np.ones((2, 2), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_idx(tmp_path / "a" / "x.gz", array)
    write_idx(tmp_path / "b" / "x.gz", array)
    # Fixed mtime and inner name: the same array gives the same bytes (stable checksums).
    assert (tmp_path / "a" / "x.gz").read_bytes() == (tmp_path / "b" / "x.gz").read_bytes()


def test_compress_flag_overrides_suffix_and_reader_sniffs_magic(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    gz_no_suffix = tmp_path / "labels"
    plain_with_suffix = tmp_path / "labels.gz"
    write_idx(gz_no_suffix, array, compress=True)
    write_idx(plain_with_suffix, array, compress=False)

    assert gz_no_suffix.read_bytes()[:2] == GZIP_MAGIC
    assert plain_with_suffix.read_bytes()[:2] == b"\x00\x00"
    np.testing.assert_array_equal(read_idx(gz_no_suffix), array)
    np.testing.assert_array_equal(read_idx(plain_with_suffix), array)


def test_result_is_writable_for_torch(tmp_path: Path) -> None:
    write_idx(tmp_path / "x.gz", np.zeros((2, 3), dtype=np.uint8))
    out = read_idx(tmp_path / "x.gz")
    assert out.flags.writeable
    torch.from_numpy(out)  # would warn about a read-only buffer otherwise


def test_empty_dimension_round_trips(tmp_path: Path) -> None:
    write_idx(tmp_path / "empty", np.zeros((0, 4, 4), dtype=np.uint8))
    assert read_idx(tmp_path / "empty", expected_ndim=3).shape == (0, 4, 4)


@settings(max_examples=25, deadline=None)
@given(
    array=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
    gz=st.booleans(),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, array: npt.NDArray[np.uint8], gz: bool
) -> None:
    path = tmp_path_factory.mktemp("prop") / ("a.gz" if gz else "a")
    write_idx(path, array)
    out = read_idx(path, expected_ndim=array.ndim)
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keep"
    write_idx(path, np.array([7], dtype=np.uint8))
    before = path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError("simulated failure")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated failure"):
        write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]  # temp file removed


def test_write_leaves_no_temp_files(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.gz", np.zeros(3, dtype=np.uint8))
    write_idx(tmp_path / "b", np.zeros(3, dtype=np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz", "b"]


def test_write_rejects_non_uint8(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="only uint8"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.array(3, dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


# --- errors --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope-idx1-ubyte.gz"
    with pytest.raises(DataError, match=r"IDX file .*nope-idx1-ubyte\.gz was not found") as info:
        read_idx(path)
    assert "--data-dir" in str(info.value)
    assert isinstance(info.value, UserError)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Could not open IDX file .*readable file"):
        read_idx(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic(tmp_path: Path, gz: bool) -> None:
    path = put(tmp_path / "f", b"PK\x03\x04junk", gz=gz)
    with pytest.raises(DataError, match=r"is not an IDX file: .* starts with 50 4b 03 04"):
        read_idx(path)


def test_empty_file(tmp_path: Path) -> None:
    path = put(tmp_path / "f", b"", gz=False)
    with pytest.raises(DataError, match=r"is not an IDX file: .* starts with nothing"):
        read_idx(path)


def test_unsupported_dtype(tmp_path: Path) -> None:
    path = put(tmp_path / "f", idx_bytes((1,), b"\0\0\0\0", dtype=0x0D), gz=False)
    with pytest.raises(
        DataError, match=r"dtype code 0x0d \(float\), but only unsigned bytes \(0x08\)"
    ):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_wrong_ndim(tmp_path: Path, gz: bool) -> None:
    path = put(tmp_path / "f", idx_bytes((2,), b"\1\2"), gz=gz)
    with pytest.raises(DataError, match=r"has 1 dimension\(s\) but 3 were expected"):
        read_idx(path, expected_ndim=3)


def test_zero_ndim(tmp_path: Path) -> None:
    path = put(tmp_path / "f", b"\0\0\x08\0", gz=False)
    with pytest.raises(DataError, match="declares 0 dimensions"):
        read_idx(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = put(tmp_path / "f", b"\0\0\x08\x03\0\0\0\x02\0\0", gz=False)
    with pytest.raises(
        DataError,
        match=r"truncated inside its header: 3 dimension sizes need 12 bytes but only 6",
    ):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path: Path, gz: bool) -> None:
    path = put(tmp_path / "f", idx_bytes((3, 4, 4), bytes(40)), gz=gz)
    with pytest.raises(
        DataError,
        match=re.escape(
            "is truncated: its header declares shape (3, 4, 4), i.e. 48 bytes of data, "
            "but only 40 bytes are present."
        ),
    ):
        read_idx(path, expected_ndim=3)


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_bytes(tmp_path: Path, gz: bool) -> None:
    path = put(tmp_path / "f", idx_bytes((2, 2), bytes(4) + b"xyz"), gz=gz)
    with pytest.raises(
        DataError, match=r"has 3 unexpected trailing byte\(s\) after the 4 bytes of data"
    ):
        read_idx(path)


def _gz_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "f.gz"
    write_idx(path, np.random.default_rng(1).integers(0, 256, (8, 16, 16), dtype=np.uint8))
    return path, path.read_bytes()


def test_corrupt_gzip(tmp_path: Path) -> None:
    path, blob = _gz_file(tmp_path)
    middle = len(blob) // 2
    path.write_bytes(
        blob[:middle] + bytes(b ^ 0xFF for b in blob[middle : middle + 16]) + blob[middle + 16 :]
    )
    with pytest.raises(DataError, match=r"is a corrupt or truncated gzip file .*copy or download"):
        read_idx(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    path, blob = _gz_file(tmp_path)
    path.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(DataError, match="is a corrupt or truncated gzip file"):
        read_idx(path)


def test_gzip_bad_crc(tmp_path: Path) -> None:
    path, blob = _gz_file(tmp_path)
    path.write_bytes(blob[:-8] + bytes(b ^ 0xFF for b in blob[-8:-4]) + blob[-4:])
    with pytest.raises(DataError, match=r"is a corrupt or truncated gzip file .*CRC"):
        read_idx(path)
