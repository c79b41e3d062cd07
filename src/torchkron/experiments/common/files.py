"""Files written atomically (readers see the old file or the new, never half), strict JSON,
and the one error message for a file that cannot be written."""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import OutputError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "create_temporary",
    "dumps_json",
    "json_safe",
    "write_error",
]


def write_error(path: Path, exc: OSError) -> OutputError:
    """The OutputError for an OSError met while writing ``path``: path, cause and fix."""
    cause = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        fix = (
            "Free some disk space (or pass --out to a folder on a disk with room), then rerun "
            "the same command with --resume: finished epochs are kept."
        )
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "Pass --out to a folder you can write to."
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = (
            "A file stands where a folder is needed (or the reverse); move it away or pass "
            "--out to another folder."
        )
    else:
        fix = "Check the folder, or pass --out to another one."
    where = exc.filename if exc.filename and Path(str(exc.filename)) != path else None
    return OutputError(f"Could not write {path}{f' ({where})' if where else ''}: {cause}. {fix}")


def create_temporary(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, empty hidden file next to ``path``, open for writing.

    Created with mode 0o666 so that the process's umask applies, as for any file that
    ``open()`` creates (``tempfile.mkstemp`` would make it 0o600, readable by its owner
    only, and ``os.replace`` keeps that mode).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never half.

    Raises:
        OutputError: the file cannot be written (read-only or full disk, a file where a
            folder should be); nothing half-written is left behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temporary(path)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of ``obj``: non-finite floats become ``null``, never bare ``NaN``."""
    return json.dumps(json_safe(obj), indent=indent, sort_keys=False, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj, indent=2) + "\n")
