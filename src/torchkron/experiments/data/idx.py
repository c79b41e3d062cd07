"""Reading and writing IDX files, the format MNIST is distributed in.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of
dimensions), one big-endian uint32 per dimension, then the data in C order. Files may be
gzip-compressed; gzip is detected by its magic bytes, not by the file name.

Only unsigned bytes (dtype code 0x08) are supported: that is all MNIST-style datasets use.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from torchkron.experiments.common.errors import DataError
from torchkron.experiments.common.files import create_temporary

__all__ = ["UBYTE", "read_idx", "write_idx"]

UBYTE = 0x08
"""IDX dtype code for unsigned bytes, the only one supported."""

_GZIP_MAGIC = b"\x1f\x8b"
_DTYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}
_CHUNK = 1 << 20

# Errors a damaged gzip stream raises while it is read: BadGzipFile (an OSError) for a bad
# header or CRC, zlib.error for a corrupt deflate stream, EOFError for a truncated one.
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def read_idx(path: Path, *, expected_ndim: int | None = None) -> npt.NDArray[np.uint8]:
    """Read an IDX file of unsigned bytes, plain or gzip-compressed.

    Args:
        path: the file to read.
        expected_ndim: if given, the number of dimensions the header must declare
            (3 for MNIST images, 1 for labels).

    Returns:
        A writable ``uint8`` array with the shape declared in the header.

    Raises:
        DataError: the file is missing or unreadable, the gzip stream is corrupt or
            truncated, the header is not a supported IDX header, or the data is shorter
            or longer than the header declares.
    """
    path = Path(path)
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise DataError(
            f"IDX file {path} was not found. Check the path, or pass --data-dir pointing "
            "to the folder that holds the dataset files."
        ) from None
    except OSError as exc:
        raise DataError(
            f"Could not open IDX file {path}: {exc.strerror or exc}. "
            "Check that it is a readable file."
        ) from exc

    with raw:
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
        try:
            return _read_stream(stream, path, expected_ndim)
        except _GZIP_ERRORS as exc:
            if not is_gzip:
                raise DataError(
                    f"Could not read IDX file {path}: {exc}. Check that it is a readable file."
                ) from exc
            raise DataError(
                f"IDX file {path} is a corrupt or truncated gzip file ({exc}). "
                "Delete it and copy or download it again."
            ) from exc
        finally:
            if is_gzip:
                stream.close()


def _read_stream(
    stream: io.BufferedIOBase, path: Path, expected_ndim: int | None
) -> npt.NDArray[np.uint8]:
    """Parse and validate an (already decompressed) IDX byte stream."""
    fix = "Delete it and copy or download it again."
    magic = _read_exactly(stream, 4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00":
        raise DataError(
            f"{path} is not an IDX file: it should start with two zero bytes, a dtype code "
            f"and a dimension count, but starts with {magic.hex(' ') or 'nothing'}. {fix}"
        )
    dtype, ndim = magic[2], magic[3]
    if dtype != UBYTE:
        name = _DTYPE_NAMES.get(dtype, "unknown")
        raise DataError(
            f"IDX file {path} holds dtype code 0x{dtype:02x} ({name}), but only unsigned "
            f"bytes (0x{UBYTE:02x}) are supported. Use an MNIST-format file of uint8 data."
        )
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions; it is damaged. {fix}")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(
            f"IDX file {path} has {ndim} dimension(s) but {expected_ndim} were expected; "
            "it is probably the wrong file (images and labels swapped?). "
            "Check which file is stored under this name."
        )

    header = _read_exactly(stream, 4 * ndim)
    if len(header) < 4 * ndim:
        raise DataError(
            f"IDX file {path} is truncated inside its header: {ndim} dimension sizes need "
            f"{4 * ndim} bytes but only {len(header)} are present. {fix}"
        )
    shape = tuple(int(d) for d in np.frombuffer(header, dtype=">u4"))
    # Python ints: the product of four uint32 dims can overflow numpy's int64.
    expected = math.prod(shape)

    # Check the declared size against the real one before allocating: a damaged header
    # can declare terabytes. A plain file's size is known; a gzip stream's is not, so it
    # is read in bounded chunks that grow only as data actually arrives.
    available = _remaining_plain(stream)
    if available is not None and available < expected:
        raise DataError(
            f"IDX file {path} is truncated: its header declares shape {shape}, i.e. "
            f"{expected} bytes of data, but only {available} bytes are present. {fix}"
        )
    if available is not None:
        data = np.empty(expected, dtype=np.uint8)
        got = _read_into(stream, data.data)
    else:
        data, got = _read_growing(stream, expected)
    if got < expected:
        raise DataError(
            f"IDX file {path} is truncated: its header declares shape {shape}, i.e. "
            f"{expected} bytes of data, but only {got} bytes are present. {fix}"
        )
    extra = _count_rest(stream)
    if extra:
        raise DataError(
            f"IDX file {path} has {extra} unexpected trailing byte(s) after the {expected} "
            f"bytes of data its header (shape {shape}) declares. {fix}"
        )
    return data.reshape(shape)


def _read_exactly(stream: io.BufferedIOBase, n: int) -> bytes:
    """Read up to ``n`` bytes, looping over short reads; fewer only at end of stream."""
    parts: list[bytes] = []
    remaining = n
    while remaining:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _remaining_plain(stream: io.BufferedIOBase) -> int | None:
    """Bytes left in a plain (uncompressed) file stream; None for a gzip stream."""
    if isinstance(stream, gzip.GzipFile):
        return None
    try:
        return os.fstat(stream.fileno()).st_size - stream.tell()
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None


def _read_growing(stream: io.BufferedIOBase, expected: int) -> tuple[npt.NDArray[np.uint8], int]:
    """Read up to ``expected`` bytes in chunks; memory grows with the data actually read."""
    buf = bytearray()
    while len(buf) < expected:
        part = stream.read(min(_CHUNK, expected - len(buf)))
        if not part:
            break
        buf += part
    # frombuffer over a bytearray: a writable array without another copy.
    return np.frombuffer(buf, dtype=np.uint8), len(buf)


def _read_into(stream: io.BufferedIOBase, buf: memoryview) -> int:
    """Fill ``buf`` from ``stream`` without an intermediate copy; return bytes read."""
    total = 0
    while total < len(buf):
        # Bounded chunks keep gzip's internal buffer small for large files.
        n = stream.readinto(buf[total : total + _CHUNK])
        if not n:
            break
        total += n
    return total


def _count_rest(stream: io.BufferedIOBase) -> int:
    """Count the bytes left in ``stream`` (normally none)."""
    extra = 0
    while chunk := stream.read(_CHUNK):
        extra += len(chunk)
    return extra


def write_idx(path: Path, array: npt.NDArray[Any], *, compress: bool | None = None) -> None:
    """Write a ``uint8`` array as an IDX file, atomically.

    The file is written to a temporary file in the same folder and moved into place with
    :func:`os.replace`, so a reader never sees a half-written file.

    Args:
        path: the file to write; its folder must exist.
        array: a ``uint8`` array with at least one dimension.
        compress: gzip the file; ``None`` (default) means gzip if ``path`` ends in ``.gz``.

    Raises:
        TypeError: the array is not ``uint8``.
        ValueError: the array has no dimensions or a dimension does not fit in uint32.
    """
    path = Path(path)
    if array.dtype != np.uint8:
        raise TypeError(f"write_idx supports only uint8 arrays, got {array.dtype}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX dimensions must fit in uint32, got shape {array.shape}")
    if compress is None:
        compress = path.suffix == ".gz"

    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = np.ascontiguousarray(array).reshape(-1)

    fd, tmp = create_temporary(path)  # umask applies, unlike mkstemp's 0o600
    try:
        with os.fdopen(fd, "wb") as f:
            if compress:
                # mtime=0 and a fixed inner name make the output reproducible byte for byte.
                inner = path.name.removesuffix(".gz")
                with gzip.GzipFile(filename=inner, mode="wb", fileobj=f, mtime=0) as gz:
                    gz.write(header)
                    gz.write(data.data)
            else:
                f.write(header)
                f.write(data.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
