"""What the ``lm`` actions share: the text options, loading the text, and a session
(``--out`` locked, the progress log opened). Its own module so that ``lm`` and
``lm compress`` both import it without importing each other."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOG_FILE", "add_data", "load_data", "session"]

LOG_FILE = "progress.log"


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with Tiny Shakespeare's input.txt (or the file); default: "
        "$TORCHKRON_DATA, else ~/.cache/torchkron/tinyshakespeare (downloaded there if "
        "missing, md5-checked)",
    )
    p.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading a missing file"
    )
    p.add_argument(
        "--any-text",
        action="store_true",
        help="accept a text file that is not Tiny Shakespeare (no md5 check; for smoke tests)",
    )


def load_data(args: argparse.Namespace, progress: Any) -> Any:
    from torchkron.experiments.data.text import load_text

    return load_text(
        args.data_dir,
        download=not args.no_download,
        check_md5=not args.any_text,
        progress=progress.message,
    )


@contextlib.contextmanager
def session(args: argparse.Namespace) -> Iterator[Any]:
    """``--out`` locked for this session (as the MNIST commands do: a second session
    writing into it gets the lock's message), and the progress log opened."""
    from torchkron.experiments.common.lock import FolderLock
    from torchkron.experiments.lm.runner import LMProgress

    with FolderLock(args.out, args.command_line):
        progress = LMProgress(quiet=args.quiet, log_path=args.out / LOG_FILE, force=True)
        progress.message(f"$ {args.command_line}")
        yield progress
