"""Bad input to the harness: each case one message naming the problem and the fix, exit 2,
no traceback, and nothing half-written."""

from __future__ import annotations

import argparse
import errno
import gzip
import json
import math
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments import cli, options
from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import DataError
from torchkron.experiments.common.files import atomic_write_json
from torchkron.experiments.data.idx import read_idx, write_idx
from torchkron.experiments.data.mnist import FILES

FAST = ["--epochs", "2", "--batch-size", "32", "--test-batch-size", "50", "--quiet"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"))


def _train(data: Path, out: Path, *extra: str, variant: str = "dense-h1") -> int:
    argv = ["train", "--variant", variant, "--data-dir", str(data), "--out", str(out)]
    return main(argv + FAST + list(extra))


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _dataset(folder: Path, **arrays: np.ndarray) -> Path:
    """The synthetic dataset with some of its arrays replaced."""
    write_synthetic_mnist(folder)
    for role, array in arrays.items():
        write_idx(folder / f"{FILES[role]}.gz", array)
    return folder


# --- data ----------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "value"), [("train_labels", 11), ("test_labels", 255)])
def test_labels_outside_0_to_9_are_refused_at_load(role, value, tmp_path, capsys):
    n = 192 if role == "train_labels" else 64
    labels = (np.arange(n) % 10).astype(np.uint8)
    labels[5] = value
    data = _dataset(tmp_path / "data", **{role: labels})
    assert _train(data, tmp_path / "out") == 2
    err = _error(capsys)
    path = data / f"{FILES[role]}.gz"
    assert (
        f"torchkron train: error: {path} holds labels outside 0..9 ({value}; the first at "
        "index 5); the variants have 10 outputs, one per digit. Use a label file with labels "
        "0..9 only." in err
    )
    assert not (tmp_path / "out" / "runs").exists()  # refused before any training


def test_images_of_another_size_say_the_variants_need_28x28(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = _dataset(
        tmp_path / "data",
        train_images=rng.integers(0, 256, (192, 32, 32), dtype=np.uint8),
        test_images=rng.integers(0, 256, (64, 32, 32), dtype=np.uint8),
    )
    assert _train(data, tmp_path / "out", variant="one-kron-mat") == 2
    err = _error(capsys)
    assert (
        f"The images in {data / 'train-images-idx3-ubyte.gz'} are 32x32, but the variants of "
        "this experiment need 28x28 images: their first layer has 784 inputs (the Kronecker "
        "ones factor them as 28x28). Pass --data-dir to an MNIST-format dataset of 28x28 "
        "images, or resize the images to 28x28." in err
    )


def _huge_header() -> bytes:
    """A 20-byte IDX file whose header declares 2**31 - 1 images of 28x28."""
    dims = np.array([2**31 - 1, 28, 28], dtype=">u4").tobytes()
    return bytes([0, 0, 8, 3]) + dims + b"\x00" * 4


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_declaring_a_huge_shape_is_refused_before_allocating(gz, tmp_path):
    path = tmp_path / ("huge.gz" if gz else "huge")
    raw = _huge_header()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    assert len(raw) == 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as exc:
            read_idx(path, expected_ndim=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # bounded by the real data, not the declared 1.7 TB
    assert str(exc.value) == (
        f"IDX file {path} is truncated: its header declares shape (2147483647, 28, 28), i.e. "
        "1683627179248 bytes of data, but only 4 bytes are present. Delete it and copy or "
        "download it again."
    )


def test_huge_idx_header_through_the_cli(synth, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for f in synth.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    (data / "train-images-idx3-ubyte.gz").unlink()
    (data / "train-images-idx3-ubyte").write_bytes(_huge_header())
    assert _train(data, tmp_path / "out") == 2
    assert "declares shape (2147483647, 28, 28)" in _error(capsys)


# --- output folder -------------------------------------------------------------------


def test_out_that_is_a_file(synth, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    assert _train(synth, out) == 2
    assert (
        f"torchkron train: error: --out {out} is an existing file, not a folder; pass --out "
        "to a folder (it is created if missing)." in _error(capsys)
    )
    assert out.read_text() == "x"


def test_runs_that_is_a_file(synth, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").write_text("x")
    assert _train(synth, out) == 2
    assert (
        f"torchkron train: error: {out / 'runs'} is a file, but the run files go into a "
        "folder of that name; move the file away or pass another --out." in _error(capsys)
    )


def test_out_on_a_read_only_file_system(synth, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert _train(synth, out) == 2
    err = _error(capsys)
    assert (
        f"torchkron train: error: Could not write {out / '.lock'}: Read-only file system. "
        "Pass --out to a folder you can write to." in err
    )
    assert list(out.iterdir()) == []


def test_disk_full_mid_run_leaves_nothing_half_written_and_resumes(
    synth, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    import torchkron.experiments.common.files as files

    real_fsync = files.os.fsync
    calls = {"n": 0}

    def full_after_two(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1's checkpoint and run file fit, nothing after
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full_after_two)
    assert _train(synth, out) == 2
    err = _error(capsys)
    # The last epoch writes the final model first: the disk is full there.
    assert (
        f"torchkron train: error: Could not write {out / 'models' / 'dense-h1--seed0.pt'}: " in err
    )
    assert (
        "No space left on device. Free some disk space (or pass --out to a folder on a disk "
        "with room), then rerun the same command with --resume: finished epochs are kept." in err
    )
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    record = json.loads((out / "runs" / "dense-h1--seed0.json").read_text())
    assert record["history"]["epoch"] == [1]
    assert not record["complete"]
    assert torch.load(out / "checkpoints" / "dense-h1--seed0.pt")["epoch"] == 1
    monkeypatch.setattr(files.os, "fsync", real_fsync)  # space freed
    assert _train(synth, out, "--resume") == 0
    record = json.loads((out / "runs" / "dense-h1--seed0.json").read_text())
    assert record["history"]["epoch"] == [1, 2]
    assert record["complete"]


# --- options -------------------------------------------------------------------------

FLOAT_TYPES = {options.finite_float, options.positive_float, options.fraction}


def _float_options() -> list[tuple[str, str]]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found = []
    for name in ("reproduce", "train", "sweep", "compress"):
        for action in sub.choices[name]._actions:
            assert action.type is not float, f"{name} {action.option_strings}: plain float"
            if action.type in FLOAT_TYPES:
                found.append((name, action.option_strings[-1]))
    return found


def test_every_float_option_is_found():
    options = _float_options()
    for expected in [("reproduce", "--lr"), ("reproduce", "--mean"), ("compress", "--scratch-lr")]:
        assert expected in options
    assert len(options) >= 4 * 6


@pytest.mark.parametrize(("command", "option"), _float_options())
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_float_options_are_rejected_at_parse_time(command, option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, f"{option}={value}"])
    assert exc.value.code == 2
    assert f"argument {option}: must be a finite number, got {value}" in _error(capsys)


def test_a_diverging_run_stops_with_a_message_and_strict_json(synth, tmp_path, capsys):
    out = tmp_path / "out"
    assert _train(synth, out, "--lr", "1e30", variant="original") == 2
    err = _error(capsys)
    path = out / "runs" / "original--seed0.json"
    assert "torchkron train: error: original seed 0: the loss became non-finite at epoch 1" in err
    assert "with --lr 1e+30; the run was stopped. Lower --lr" in err
    assert f"Recorded in {path}." in err

    def no_constants(name: str) -> float:
        raise AssertionError(f"bare {name} in JSON")

    for file in out.rglob("*.json"):
        json.loads(file.read_text(), parse_constant=no_constants)
    record = json.loads(path.read_text())
    assert record["complete"] is False
    assert record["failed"]["epoch"] == 1
    assert record["failed"]["reason"].startswith("original seed 0: the loss became non-finite")


def test_json_files_never_hold_nan(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


# --- resume ----------------------------------------------------------------------------


@pytest.fixture
def trained(synth: Path, tmp_path: Path) -> Path:
    """A finished 2-epoch run whose run file is removed, so --resume reads the checkpoint."""
    out = tmp_path / "out"
    assert _train(synth, out) == 0
    (out / "runs" / "dense-h1--seed0.json").unlink()
    return out


def _edit_checkpoint(out: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    path = out / "checkpoints" / "dense-h1--seed0.pt"
    state = torch.load(path)
    torch.save(edit(state), path)
    return path


def _set(key: str, value: object):  # type: ignore[no-untyped-def]
    def edit(state: dict) -> dict:
        state[key] = value
        return state

    return edit


def _drop(key: str):  # type: ignore[no-untyped-def]
    def edit(state: dict) -> dict:
        del state[key]
        return state

    return edit


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda s: [1, 2], "is not a torchkron training checkpoint (it holds a list, not the "),
        (_drop("optimizer"), "is not a torchkron training checkpoint (missing optimizer); "),
        (_set("epoch", "2"), "is not a torchkron training checkpoint ('epoch' is a str); "),
        (_set("model", [0]), "is not a torchkron training checkpoint ('model' is a list); "),
        (
            _set("record", "[]"),
            "is not a torchkron training checkpoint (its embedded run record: a JSON list "
            "instead of an object); ",
        ),
    ],
)
def test_resume_from_a_checkpoint_of_the_wrong_structure(synth, trained, edit, problem, capsys):
    path = _edit_checkpoint(trained, edit)
    assert _train(synth, trained, "--resume") == 2
    err = _error(capsys)
    assert f"torchkron train: error: Checkpoint {path} {problem}" in err
    assert "delete it to restart that run from scratch." in err


def test_resume_from_a_checkpoint_beyond_the_configured_epochs(synth, trained, capsys):
    path = _edit_checkpoint(trained, _set("epoch", 9))
    assert _train(synth, trained, "--resume") == 2
    assert (
        f"torchkron train: error: Checkpoint {path} is at epoch 9 (its history has 2 epochs), "
        "which does not fit a run of --epochs 2; pass the --epochs it was trained with, or "
        "delete it to restart that run from scratch." in _error(capsys)
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[]", "is not a torchkron run record (it holds a JSON list, not an object)"),
        (
            '{"schema": 1, "variant": "dense-h1", "seed": 0, "config": {}, "history": []}',
            "is damaged ('history' is not an object)",
        ),
        (
            '{"schema": 1, "variant": "dense-h1", "seed": "0", "config": {}, "history": {}}',
            "is damaged ('seed' is not a whole number)",
        ),
    ],
)
def test_resume_with_a_run_file_of_the_wrong_structure(synth, trained, content, problem, capsys):
    path = trained / "runs" / "dense-h1--seed0.json"
    path.write_text(content)
    assert _train(synth, trained, "--resume") == 2
    assert f"torchkron train: error: Run file {path} {problem}" in _error(capsys)
