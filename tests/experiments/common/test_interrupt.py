"""Ctrl-C with worker processes stops everything promptly, and two sessions cannot share an
output folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.experiments.locks import held_by_another_session
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.cli import main
from torchkron.experiments.common.lock import LOCK_FILE
from torchkron.experiments.common.runs import load_run

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def slow_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Enough images that each run of the dense net takes far longer than the test waits.
    return write_synthetic_mnist(tmp_path_factory.mktemp("slow"), n_train=3000, n_test=100)


def _text(log: Path) -> str:
    return log.read_text() if log.exists() else ""


def _keys(log: Path) -> set[str]:
    return set(re.findall(r"\] (\S+ seed \d+) epoch", _text(log)))


COMMANDS = {
    "reproduce": ["reproduce", "--variants", "original", "--seeds", "4", "--no-compare"],
    "sweep": ["sweep", "--factors", "--widths", "625", "--seeds", "4"],
}


@pytest.mark.parametrize(
    ("command", "when"),
    [("reproduce", "training"), ("sweep", "training"), ("reproduce", "startup")],
)
def test_ctrl_c_stops_every_worker_and_keeps_runs_resumable(command, when, slow_synth, tmp_path):
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "torchkron",
        *COMMANDS[command],
        "--data-dir",
        str(slow_synth),
        "--out",
        str(out),
        "--jobs",
        "2",
        "--epochs",
        "300",
        "--batch-size",
        "32",
        "--no-plots",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Its own session: the signal goes to its process group, as Ctrl-C in a terminal does.
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    log = out / f"{command}.log"
    try:
        deadline = time.monotonic() + 180
        if when == "training":
            while len(_keys(log)) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            started = _keys(log)
            assert len(started) == 2, (started, proc.poll())
        else:  # while the workers start (import torch, load the data)
            while "\ndata: " not in _text(log) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            started = _keys(log)
            assert started == set()
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stopped_after < 20, stopped_after  # seconds, not the rest of the runs
    assert f"torchkron {command}: interrupted" in stderr
    assert "Traceback" not in stderr
    # No queued run started after the interrupt: only the two that were training.
    assert _keys(log) == started
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) <= len(started)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
    assert not (out / LOCK_FILE).exists()  # the lock was released
    for path in records:
        record = load_run(path)
        assert not record["complete"]
        done = len(record["history"]["epoch"])
        state = torch.load(out / "checkpoints" / path.name.replace(".json", ".pt"))
        # The checkpoint is the last finished epoch, at or one past the run file.
        assert state["epoch"] in (done, done + 1)
        assert len(json.loads(state["record"])["history"]["epoch"]) == state["epoch"]


FAST = ["--epochs", "1", "--batch-size", "32", "--test-batch-size", "50", "--quiet"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"))


def _train(synth: Path, out: Path, *extra: str) -> int:
    argv = ["train", "--variant", "dense-h1", "--data-dir", str(synth), "--out", str(out)]
    return main([*argv, *FAST, *extra])


def test_second_session_on_the_same_folder_is_refused(synth, tmp_path, capsys):
    out = tmp_path / "out"
    with held_by_another_session(out, "torchkron reproduce --lr 0.5") as lock:
        assert _train(synth, out) == 2
        err = capsys.readouterr().err
        assert (
            f"torchkron train: error: {out} is in use by another torchkron session: pid "
            f"{lock['pid']}, `torchkron reproduce --lr 0.5`, since 2026-12-01T10:00:00+00:00. "
            "Wait for it to finish or stop it, or pass another --out; if that process is "
            f"gone, delete {out / LOCK_FILE}." in err
        )
        assert "Traceback" not in err
        assert not (out / "runs").exists()  # nothing written
        assert json.loads((out / LOCK_FILE).read_text()) == lock  # the holder keeps it


def test_stale_lock_of_a_dead_process_is_taken_over(synth, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = {"pid": dead.pid, "host": os.uname().nodename, "command": "torchkron train"}
    (out / LOCK_FILE).write_text(json.dumps(lock))
    assert _train(synth, out) == 0
    assert (out / "runs" / "dense-h1--seed0.json").is_file()
    assert not (out / LOCK_FILE).exists()  # released at the end


def test_lock_is_held_during_the_session(synth, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen: list[dict] = []
    import torchkron.experiments.mnist.runner as runner

    real = runner.run_jobs

    def spy(*args, **kwargs):
        seen.append(json.loads((out / LOCK_FILE).read_text()))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_jobs", spy)
    import torchkron.experiments.mnist.reproduce as reproduce

    monkeypatch.setattr(reproduce, "run_jobs", spy)
    assert _train(synth, out) == 0
    (owner,) = seen
    assert owner["pid"] == os.getpid()
    assert owner["command"].startswith("torchkron train --variant dense-h1")
    assert not (out / LOCK_FILE).exists()


def _workers(pid: int) -> list[int]:
    """The pool's worker processes among ``pid``'s children (not the resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in map(int, children):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            found.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_a_killed_worker_stops_the_session_with_a_message(slow_synth, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "torchkron", *COMMANDS["reproduce"], "--data-dir"]
    argv += [str(slow_synth), "--out", str(out), "--jobs", "2", "--epochs", "300", "--no-plots"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while len(_keys(out / "reproduce.log")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)  # e.g. the kernel's out-of-memory killer
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2
    assert "Traceback" not in stderr
    assert (
        "torchkron reproduce: error: A worker process died unexpectedly (killed, or out of "
        "memory?). Finished epochs are checkpointed: rerun the same command with --resume, "
        "with fewer --jobs if memory is short." in stderr
    )
    assert not (out / LOCK_FILE).exists()


def test_a_failed_run_in_a_worker_stops_the_session_with_its_message(synth, tmp_path, capsys):
    argv = ["reproduce", "--variants", "original", "dense-h1", "--seeds", "2", "--jobs", "2"]
    bad = tmp_path / "bad"
    code = main([*argv, "--data-dir", str(synth), "--out", str(bad), "--lr", "1e30", *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"error: original seed \d: the loss became non-finite at epoch 1", err)
    assert not [p for p in bad.rglob("*") if p.name.endswith(".tmp")]
    assert not (bad / LOCK_FILE).exists()


def test_ctrl_c_while_the_workers_are_being_started_is_not_lost(synth, tmp_path, monkeypatch):
    # A Ctrl-C that lands while run_jobs submits (and so starts) the workers used to be
    # ignored, and the session trained on to the end. It must stop the session instead.
    from concurrent.futures import ProcessPoolExecutor

    submit = ProcessPoolExecutor.submit

    def interrupted_submit(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once unless blocked or ignored
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", interrupted_submit)
    out = tmp_path / "out"
    argv = ["reproduce", "--variants", "original", "--seeds", "2", "--jobs", "2", "--no-compare"]
    code = main([*argv, "--data-dir", str(synth), "--out", str(out), "--no-plots", *FAST])
    assert code == 130
    assert not [p for p in (out / "runs").glob("*.json") if load_run(p)["complete"]]
    assert not (out / LOCK_FILE).exists()
