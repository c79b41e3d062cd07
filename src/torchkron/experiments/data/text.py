"""Tiny Shakespeare, character level: loading, md5 check, 90/10 split, download.

The corpus is char-rnn's ``input.txt`` (1,115,394 bytes, 65 distinct characters), the
file nanoGPT's ``shakespeare_char`` recipe uses. The vocabulary is the sorted set of
characters of the whole file, the first 90% of characters are the training split and
the last 10% the validation split, as nanoGPT's ``prepare.py`` does.

Where the file is looked for: ``--data-dir``, else ``$TORCHKRON_DATA``, else
``~/.cache/torchkron/tinyshakespeare`` (downloaded there if missing, md5-checked).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from torchkron.experiments.common.errors import DataError
from torchkron.experiments.common.files import atomic_write_bytes

__all__ = [
    "FILE_NAME",
    "MD5",
    "URL",
    "TextData",
    "default_text_dir",
    "download_tinyshakespeare",
    "encode_text",
    "load_text",
    "resolve_text_path",
]

FILE_NAME = "input.txt"
MD5 = "6fb458f1232090904fb40fe944165e91"
SIZE = 1_115_394
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TRAIN_FRACTION = 0.9


@dataclass(frozen=True)
class TextData:
    """A character-level corpus split into train and validation token ids.

    Attributes:
        train: int64 token ids of the first 90%.
        val: int64 token ids of the last 10%.
        chars: the vocabulary, id ``i`` is ``chars[i]``.
        source: the file it came from.
        md5: md5 of that file.
    """

    train: Tensor
    val: Tensor
    chars: str
    source: Path
    md5: str

    @property
    def vocab_size(self) -> int:
        return len(self.chars)


def default_text_dir() -> Path:
    env = os.environ.get("TORCHKRON_DATA")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "torchkron" / "tinyshakespeare"


def resolve_text_path(data_dir: Path | None) -> Path:
    """``data_dir`` may hold ``input.txt``, or be the file itself."""
    where = data_dir if data_dir is not None else default_text_dir()
    return where if where.suffix == ".txt" else where / FILE_NAME


def encode_text(text: str, train_fraction: float = TRAIN_FRACTION) -> tuple[Tensor, Tensor, str]:
    """Character ids of ``text`` (vocabulary = its sorted characters), split at
    ``train_fraction`` of the characters."""
    chars = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.int64)
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:], chars


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def download_tinyshakespeare(
    folder: Path, *, url: str = URL, progress: Callable[[str], None] | None = None
) -> Path:
    """Fetch ``input.txt`` into ``folder``, keeping it only if its md5 is right."""
    target = folder / FILE_NAME
    if progress is not None:
        progress(f"downloading Tiny Shakespeare from {url} to {target}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise DataError(
            f"Could not download Tiny Shakespeare from {url} ({exc}); download input.txt by "
            f"hand into {folder}, or pass --data-dir to a folder that holds it."
        ) from None
    got = _md5(data)
    if got != MD5:
        raise DataError(
            f"The downloaded {url} has md5 {got}, expected {MD5}; not saved. Try again, or "
            f"download input.txt by hand into {folder}."
        )
    atomic_write_bytes(target, data)
    return target


def load_text(
    data_dir: Path | None = None,
    *,
    download: bool = True,
    check_md5: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TextData:
    """Load Tiny Shakespeare (or any text file with ``check_md5=False``).

    Args:
        data_dir: folder holding ``input.txt`` (or the file itself); default
            ``$TORCHKRON_DATA`` or ``~/.cache/torchkron/tinyshakespeare``.
        download: fetch the file into the folder if it is missing.
        check_md5: refuse a file whose md5 is not Tiny Shakespeare's.
        progress: called with a line when downloading.

    Raises:
        DataError: the file is missing (and not downloaded), corrupt or not text.
    """
    path = resolve_text_path(data_dir)
    if not path.is_file():
        if not download:
            raise DataError(
                f"Tiny Shakespeare not found: {path} does not exist; pass --data-dir to the "
                f"folder that holds {FILE_NAME} (e.g. ../shared/data/tinyshakespeare), or "
                "drop --no-download to fetch it."
            )
        path = download_tinyshakespeare(path.parent, progress=progress)
    data = path.read_bytes()
    got = _md5(data)
    if check_md5 and got != MD5:
        raise DataError(
            f"{path} is not the Tiny Shakespeare file: md5 {got}, expected {MD5} "
            f"({len(data):,} bytes, expected {SIZE:,}); it is truncated or another file. "
            "Delete it to download it again, or point --data-dir at the right copy."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}).") from None
    if len(text) < 2:
        raise DataError(f"{path} holds {len(text)} character(s); a corpus needs more.")
    train, val, chars = encode_text(text)
    return TextData(train, val, chars, path, got)
