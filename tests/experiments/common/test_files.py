"""Result files: created with the umask's permissions, named only inside the output folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from torchkron.experiments.common.checkpoints import RunPaths, save_torch
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_json, atomic_write_text
from torchkron.experiments.common.runs import check_run_name, run_filename
from torchkron.experiments.data.idx import write_idx


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "summary.json", {"a": 1})
        atomic_write_text(tmp_path / "results.md", "# r\n")
        save_torch(tmp_path / "models" / "m.pt", {"x": 1})
        atomic_write_text(tmp_path / "results.md", "# rewritten\n")  # replacing keeps the rule
        write_idx(tmp_path / "images.gz", np.zeros((2, 3, 3), dtype=np.uint8))  # data files too
    finally:
        os.umask(old)
    for name in ("summary.json", "results.md", "models/m.pt", "images.gz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert (tmp_path / "results.md").read_text() == "# rewritten\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries


RULE = (
    "A run name becomes a file name inside --out, so it must be one plain name without "
    "'/', '\\' or '..' (e.g. kron-mlp-k2-r4)."
)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../x", "it contains a path separator ('/' or '\\')"),
        ("a/b", "it contains a path separator ('/' or '\\')"),
        ("a\\b", "it contains a path separator ('/' or '\\')"),
        ("..", "it contains '..'"),
        ("/etc/x", "it is an absolute path"),
        ("C:\\x", "it is an absolute path"),
        ("", "it is empty"),
        ("a\nb", "it contains a control character"),
    ],
)
def test_run_names_that_are_paths_are_refused(name: str, why: str, tmp_path: Path) -> None:
    message = f"Run name {name!r} cannot be used: {why}. {RULE}"
    with pytest.raises(UserError) as info:
        check_run_name(name)
    assert str(info.value) == message
    with pytest.raises(UserError) as info:
        RunPaths.under(tmp_path, name, 0)  # every run path goes through run_filename
    assert str(info.value) == message


def test_plain_run_names_pass() -> None:
    for name in ("dense", "kron-mlp-k2-r4", "lrsweep-dense-lr1e-3", "attn_dense-mlp_kronk2r4.v2"):
        assert check_run_name(name) == name
    assert run_filename("dense", 2) == "dense--seed2.json"
