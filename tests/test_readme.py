"""The README and docs/: the example runs, the front page stays a front page, and every
generated block matches the result files it comes from (a hand-edited number fails)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tools import sync_readme

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ("reproduction", "frontier", "speed", "distributed", "cli", "api")
# Which generated blocks each page must hold (a page may hold more).
EXPECTED_BLOCKS = {
    "README.md": ["view:reproduce-time", "results/mnist/results.md", "view:speed-summary"],
    "docs/reproduction.md": [
        "results/mnist/results.md",
        "view:reproduce-time",
        "benchmarks/results/harness-cpu.md",
    ],
    "docs/frontier.md": [
        "view:plan-examples",
        "results/sweep/frontier.md",
        "results/compress/compress.md",
    ],
    "docs/speed.md": [
        "view:speed-summary",
        "benchmarks/results/headline.md",
        "benchmarks/results/gpu-graphs-cuda-nvidia-h200.md",
    ],
    "docs/cli.md": ["view:cli"],
    "docs/api.md": ["view:api"],
}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_example_runs():
    example = _blocks("python")[0]
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert tuple(namespace["y"].shape) == (32, 625)  # type: ignore[attr-defined]
    assert namespace["tied"].num_weights() == 700  # type: ignore[attr-defined]
    assert namespace["head"].num_weights() == 175  # type: ignore[attr-defined]


def test_example_is_about_ten_lines():
    code = [line for line in _blocks("python")[0].splitlines() if line.strip()]
    assert len(code) <= 12


def test_quick_start_is_test_then_reproduce_and_ci_runs_the_test_one():
    quick = _section("Quick start").split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.splitlines() if line.strip()]
    assert commands == ["make test", "make reproduce"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_quick_start_says_how_long_reproduce_takes_and_on_what_machine():
    quick = _section("Quick start")
    block = quick.split("<!-- generated:view:reproduce-time -->\n", 1)[1].split("<!-- end:", 1)[0]
    assert re.search(r"`make reproduce` took \*\*\d+ min \d\d s\*\*", block), block
    assert re.search(r"on a \d+-core machine \(", block), block
    assert "results/mnist/sessions.json" in block


def test_readme_is_a_front_page():
    size = len(README.encode())
    assert size <= 15 * 1024, f"README.md is {size} bytes; move detail to docs/"
    for page in DOCS:
        assert f"](docs/{page}.md)" in README, f"README does not link docs/{page}.md"
    assert "![accuracy against weights](results/sweep/frontier.png)" in README


@pytest.mark.parametrize("page", sorted(EXPECTED_BLOCKS))
def test_page_holds_its_generated_blocks(page):
    text = (ROOT / page).read_text()
    names = [m.group("path") for m in sync_readme.BLOCK.finditer(text)]
    for name in EXPECTED_BLOCKS[page]:
        assert name in names, f"{page} lacks <!-- generated:{name} -->"


def test_generated_blocks_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "sync_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


VIEWS: dict[str, str] = {}  # computed views, shared by the tests below


def _mirror(tmp_path: Path) -> Path:
    """A repository root whose pages are copies and whose result folders are links."""
    (tmp_path / "docs").mkdir()
    for page in sync_readme.pages(ROOT):
        (tmp_path / page.relative_to(ROOT)).write_text(page.read_text())
    (tmp_path / "results").symlink_to(ROOT / "results")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    return tmp_path


def _edit_first_number(body: str) -> tuple[str, str]:
    """(old, new): the block's first decimal number and that number with a digit changed."""
    m = re.search(r"\d+\.\d+", body)
    assert m is not None, "the block holds no decimal number"
    old = m.group()
    return old, old[:-1] + str((int(old[-1]) + 1) % 10)


@pytest.mark.parametrize(
    ("page", "block"),
    [
        ("README.md", "results/mnist/results.md"),
        ("README.md", "view:speed-summary"),
        ("README.md", "view:reproduce-time"),
        ("docs/frontier.md", "results/sweep/frontier.md"),
        ("docs/speed.md", "benchmarks/results/headline.md"),
        ("docs/cli.md", "view:cli"),
    ],
)
def test_a_hand_edited_number_fails_the_check(tmp_path, page, block):
    root = _mirror(tmp_path)
    path = root / page
    text = path.read_text()
    head, rest = text.split(f"<!-- generated:{block} -->\n", 1)
    body, tail = rest.split(f"<!-- end:{block} -->", 1)
    old, new = _edit_first_number(body)
    edited_body = body.replace(old, new, 1)
    path.write_text(f"{head}<!-- generated:{block} -->\n{edited_body}<!-- end:{block} -->{tail}")
    problems = sync_readme.check(root, VIEWS)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{page}: stale generated block(s) {block}\n"), problems[0]
    assert new in problems[0], problems[0]  # the diff shows the edited line...
    assert old in problems[0], problems[0]  # ...and the generated one
    # Syncing restores exactly the committed page.
    sync_readme.write(root, VIEWS)
    assert path.read_text() == text


def test_every_digit_of_every_block_is_checked():
    # Flip one digit in each block of each page (in memory): regeneration must undo it.
    for page in sync_readme.pages(ROOT):
        text = page.read_text()
        for m in sync_readme.BLOCK.finditer(text):
            digit = re.search(r"\d", m.group("body"))
            if digit is None:
                continue
            at = m.start("body") + digit.start()
            edited = text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :]
            assert sync_readme.synced(edited, page, ROOT, VIEWS) == text, (page, m.group("path"))


def test_an_edited_derived_result_file_fails_the_check(tmp_path):
    root = _mirror(tmp_path)
    (root / "benchmarks").unlink()
    (root / "benchmarks" / "results").mkdir(parents=True)
    for f in (ROOT / "benchmarks" / "results").iterdir():
        (root / "benchmarks" / "results" / f.name).symlink_to(f)
    headline = root / "benchmarks" / "results" / "headline.md"
    text = headline.read_text()
    headline.unlink()
    old, new = _edit_first_number(text)
    headline.write_text(text.replace(old, new, 1))
    problems = sync_readme.check(root, VIEWS)
    assert "benchmarks/results/headline.md is out of date" in problems


def test_unclosed_block_and_unknown_view_are_errors(tmp_path):
    page = tmp_path / "README.md"
    with pytest.raises(
        sync_readme.SyncError, match=r"block view:cli has no `<!-- end:view:cli -->`"
    ):
        sync_readme.synced("<!-- generated:view:cli -->\nx\n", page, tmp_path)
    with pytest.raises(sync_readme.SyncError, match="unknown view 'nope'; known: cli, api"):
        sync_readme.synced("<!-- generated:view:nope -->\n<!-- end:view:nope -->\n", page, tmp_path)
    with pytest.raises(sync_readme.SyncError, match=r"names no/such\.md, which does not exist"):
        sync_readme.synced(
            "<!-- generated:no/such.md -->\n<!-- end:no/such.md -->\n", page, tmp_path
        )
