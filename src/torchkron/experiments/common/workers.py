"""Worker processes that never outlive the run that started them."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

__all__ = ["default_workers", "exit_with_parent"]


def default_workers() -> int:
    """One worker per CPU core this process may run on."""
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


def exit_with_parent(interval: float = 1.0, parent: int | None = None) -> None:
    """Exit this process soon after its parent dies (SIGKILL, or a SIGTERM that the pool
    never forwarded): an orphaned training worker would keep running its job and take
    the cores of the next session. Checkpoints are written atomically, so the job resumes.

    Args:
        interval: seconds between checks of the parent's pid.
        parent: the pid to outlive no longer; default: the process that spawned this one
            (known from the spawn itself, so a parent that died while this worker was
            still importing is noticed too), else the current parent.
    """
    if parent is None:
        creator = mp.parent_process()
        parent = creator.pid if creator is not None and creator.pid else os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:  # re-parented: the parent is gone
                os._exit(1)

    threading.Thread(target=watch, name="torchkron-parent-watch", daemon=True).start()
