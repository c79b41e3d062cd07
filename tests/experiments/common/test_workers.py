"""Training workers exit when the process that started them dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import subprocess, sys, time, os
child = subprocess.Popen(
    [sys.executable, "-c", {child!r}.format(parent=os.getpid())],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(child.pid, flush=True)
os._exit(0)  # die without stopping the child, as a SIGKILLed study would
"""
CHILD = (
    "from torchkron.experiments.common.workers import exit_with_parent; import time; "
    "exit_with_parent(0.05, parent={parent}); time.sleep(60)"
)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited, waiting to be reaped by the new parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_worker_exits_when_its_parent_dies() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PARENT.format(child=CHILD)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    pid = int(out.stdout.split()[0])
    # Generous: a loaded machine may take many seconds to start the child; a pass exits early.
    deadline = time.monotonic() + 60
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone = _gone(pid)
    if not gone:
        os.kill(pid, 9)
    assert gone, "the orphaned worker kept running"


def test_worker_keeps_running_while_its_parent_lives() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(parent=os.getpid())])
    try:
        time.sleep(1.5)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
