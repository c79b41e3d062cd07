"""The import contracts of pyproject.toml (``make lint``) hold, and break on a bad import.

Each check runs ``lint-imports`` on a copy of ``src/`` so that a deliberate violation can
be planted: an upward import in the kernel layer, a private name taken by the harness, a
cycle. A contract that never fails would guard nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "COLUMNS": "200"}
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "import_contracts.py", tmp_path / "tools")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n" + line + "\n")


@pytest.mark.skipif(not LINT.exists(), reason="lint-imports is not installed")
def test_contracts_hold_on_this_tree(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.skipif(not LINT.exists(), reason="lint-imports is not installed")
def test_each_planted_violation_breaks_its_contract(tree: Path) -> None:
    src = tree / "src" / "torchkron"
    # The kernel reaching up to the layers built on it.
    _append(src / "functional" / "_plan.py", "import torchkron.layers.kron  # noqa")
    # The harness taking a private name and a private module of the library.
    _append(
        src / "experiments" / "common" / "errors.py",
        "from torchkron.factorization._shapes import divisors  # noqa",
    )
    _append(src / "experiments" / "options.py", "from torchkron.layers import _common  # noqa")
    # A cycle inside a package.
    _append(src / "surgery" / "converters.py", "import torchkron.surgery.report  # noqa")
    result = _lint(tree)
    out = " ".join(result.stdout.split())
    assert result.returncode == 1, out
    assert "torchkron.functional is not allowed to import torchkron.layers" in out
    assert "torchkron.functional._plan -> torchkron.layers.kron" in out
    assert "torchkron.experiments.common.errors:" in out
    assert "imports torchkron.factorization._shapes.divisors" in out
    assert "imports torchkron.layers._common" in out
    assert "No import cycles between sibling modules, at any depth BROKEN" in out
    assert "A private module is imported only from inside its own package BROKEN" in out
    assert "Across packages (and from the harness) only public names are imported BROKEN" in out
