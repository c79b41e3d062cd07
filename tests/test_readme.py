"""The README: its example runs, its generated sections match the result files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_example_runs():
    example = _blocks("python")[0]
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert tuple(namespace["y"].shape) == (32, 625)  # type: ignore[attr-defined]
    assert namespace["tied"].num_weights() == 700  # type: ignore[attr-defined]
    assert namespace["head"].num_weights() == 175  # type: ignore[attr-defined]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    quick = README.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.splitlines() if line.strip()]
    assert commands == ["make reproduce", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_generated_sections_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sync_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "<!-- generated:results/mnist/results.md -->" in README
