"""An output folder locked by another live session, for the tests of the folder lock."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchkron.experiments.common.lock import LOCK_FILE


@contextlib.contextmanager
def held_by_another_session(folder: Path, command: str) -> Iterator[dict[str, Any]]:
    """``folder``'s lock held by a live process (a ``sleep``) that ran ``command``; the
    lock's content is yielded, and the process ends on exit (the lock then is stale)."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = {
            "pid": holder.pid,
            "host": os.uname().nodename,
            "command": command,
            "started_at": "2026-12-01T10:00:00+00:00",
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LOCK_FILE).write_text(json.dumps(lock))
        yield lock
    finally:
        holder.kill()
        holder.wait()
