"""An exclusive lock on an output folder, so two sessions never write the same runs.

The lock is a file ``OUT/.lock`` created with ``O_EXCL`` and holding the owner's pid,
host, command and start time. A lock whose pid no longer runs on this host is stale (the
owner was killed) and is taken over; a live owner makes the second session fail with a
message naming it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from torchkron.experiments.common.environment import now_iso
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import write_error

__all__ = ["LOCK_FILE", "FolderLock", "LockedError"]

LOCK_FILE = ".lock"


class LockedError(UserError):
    """Another live session holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


class FolderLock:
    """Hold ``folder/.lock`` while a command writes into ``folder``.

    Args:
        folder: the output folder (created if missing).
        command: the command line, recorded for whoever finds the folder locked.

    Examples:
        >>> with FolderLock(Path("runs/mnist"), "torchkron reproduce"):  # doctest: +SKIP
        ...     train()
    """

    def __init__(self, folder: Path, command: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # half-written or foreign: treated as stale below
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> FolderLock:
        """Take the lock, taking over a stale one.

        Raises:
            LockedError: a live process (or one on another host) holds it.
            OutputError: the folder or the lock file cannot be created.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.folder, exc) from None
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started_at": now_iso(),
        }
        for _ in range(3):  # a stale lock is removed, then created again
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._check_stale()
                continue
            except OSError as exc:
                raise write_error(self.path, exc) from None
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(me) + "\n")
            except OSError as exc:
                self.path.unlink(missing_ok=True)
                raise write_error(self.path, exc) from None
            self.held = True
            return self
        raise LockedError(  # pragma: no cover - only under a race with other sessions
            f"Could not lock {self.folder}: other sessions keep taking {self.path}."
        )

    def _check_stale(self) -> None:
        """Remove the lock if its owner is gone; raise LockedError if it is alive."""
        owner = self._owner()
        if owner is None:
            return  # released meanwhile
        pid, host = owner.get("pid"), owner.get("host")
        here = host == socket.gethostname()
        if isinstance(pid, int) and (not here or _alive(pid)):
            where = "" if here else f" on host {host}"
            raise LockedError(
                f"{self.folder} is in use by another torchkron session: pid {pid}{where}, "
                f"`{owner.get('command', '?')}`, since {owner.get('started_at', '?')}. Wait "
                f"for it to finish or stop it, or pass another --out; if that process is "
                f"gone, delete {self.path}."
            )
        self.path.unlink(missing_ok=True)  # stale: its owner died without releasing

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
