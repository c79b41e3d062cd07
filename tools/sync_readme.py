"""Regenerate the generated blocks of README.md and docs/*.md from the result files.

The pages never hold hand-typed results. Two kinds of block are kept in sync:

- ``<!-- generated:PATH -->`` ... ``<!-- end:PATH -->``: the file PATH (relative to
  the repository root), minus its first heading line, with its other headings one level
  lower and its relative links rewritten to be relative to the page.
- ``<!-- generated:view:NAME -->`` ... ``<!-- end:view:NAME -->``: the Markdown that the
  view NAME computes (see ``VIEWS``: the CLI reference from the argparse parsers, the API
  reference from the docstrings, the README's speed table and reproduction time, the
  output of the ``torchkron plan`` examples).

It also rewrites ``benchmarks/results/headline.md`` from the ``bench-*.json`` files.
``--check`` changes nothing and fails, naming each stale page and block, if any of them
is out of date (the README test runs it); ``make readme`` / ``make results`` rewrite.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``tools`` importable
    sys.path.insert(0, str(ROOT))

# Markers count only at the start of a line, so that pages can quote them in prose.
BLOCK = re.compile(
    r"^(<!-- generated:(?P<path>\S+) -->\n)(?P<body>.*?)^(<!-- end:(?P=path) -->)$", re.S | re.M
)
OPENING = re.compile(r"^<!-- generated:(\S+) -->$", re.M)
LINK = re.compile(r"\]\((?!https?:|/|#)([^)\s]+)\)")
HEADLINE = "benchmarks/results/headline.md"


def _cli() -> str:
    from tools import gen_cli_docs

    return gen_cli_docs.render()


def _api() -> str:
    from tools import gen_api_docs

    return gen_api_docs.render()


def _speed_summary() -> str:
    from tools import bench_headline

    return bench_headline.speed_summary(
        [bench_headline.RESULTS / f for f in bench_headline.SUMMARY_FILES]
    )


def _reproduce_time() -> str:
    from tools import result_views

    return result_views.reproduce_time()


def _plan_examples() -> str:
    from tools import result_views

    return result_views.plan_examples()


def _lm_v2_headline() -> str:
    from tools import result_views

    return result_views.lm_v2_headline()


VIEWS: dict[str, Callable[[], str]] = {
    "cli": _cli,
    "api": _api,
    "speed-summary": _speed_summary,
    "reproduce-time": _reproduce_time,
    "plan-examples": _plan_examples,
    "lm-v2-headline": _lm_v2_headline,
}


class SyncError(Exception):
    """A page that cannot be synced (unknown view, missing file, unclosed block)."""


def pages(root: Path = ROOT) -> list[Path]:
    """Every page with generated blocks: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _file_body(source: str, page: Path, root: Path) -> str:
    path = root / source
    if not path.is_file():
        raise SyncError(
            f"{page.relative_to(root)}: generated block names {source}, which does not exist"
        )
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    # Headings move one level down: the block sits inside a section of the page.
    lines = ["#" + line if line.startswith("#") else line for line in lines]
    body = "\n".join(lines).strip("\n") + "\n"
    # Relative links point next to the source file; make them relative to the page.
    here = page.parent

    def relink(m: re.Match[str]) -> str:
        target = os.path.relpath(path.parent / m.group(1), here)
        return f"]({Path(target).as_posix()})"

    return LINK.sub(relink, body)


def block_body(
    name: str, page: Path, root: Path = ROOT, cache: dict[str, str] | None = None
) -> str:
    """What the block ``name`` (a path or ``view:NAME``) must hold on ``page``."""
    if name.startswith("view:"):
        view = name[len("view:") :]
        if view not in VIEWS:
            raise SyncError(
                f"{page.relative_to(root)}: unknown view {view!r}; known: {', '.join(VIEWS)}"
            )
        if cache is not None and name in cache:
            return cache[name]
        text = VIEWS[view]()
        text = text if text.endswith("\n") else text + "\n"
        if cache is not None:
            cache[name] = text
        return text
    return _file_body(name, page, root)


def synced(text: str, page: Path, root: Path = ROOT, cache: dict[str, str] | None = None) -> str:
    """``text`` (the content of ``page``) with every generated block regenerated."""
    opened = OPENING.findall(text)
    closed = [m.group("path") for m in BLOCK.finditer(text)]
    if opened != closed:
        missing = [n for n in opened if n not in closed] or opened
        raise SyncError(
            f"{page.relative_to(root)}: block {missing[0]} has no `<!-- end:{missing[0]} -->` line"
        )
    return BLOCK.sub(
        lambda m: m.group(1) + block_body(m.group("path"), page, root, cache) + m.group(4), text
    )


def stale_blocks(old: str, new: str) -> list[str]:
    """Names of the blocks whose bodies differ between two versions of a page."""
    before = {m.group("path"): m.group("body") for m in BLOCK.finditer(old)}
    after = {m.group("path"): m.group("body") for m in BLOCK.finditer(new)}
    return [name for name in after if before.get(name) != after[name]]


def derived_files(root: Path = ROOT) -> dict[Path, str]:
    """Result files that are themselves generated from other result files."""
    from tools import bench_headline

    return {
        root / HEADLINE: bench_headline.headline_text(
            bench_headline.result_files(root / "benchmarks" / "results")
        )
    }


def check(root: Path = ROOT, cache: dict[str, str] | None = None) -> list[str]:
    """One message per out-of-date page or derived file (empty: all in sync).

    ``cache`` keeps computed views between calls (they depend only on the code and the
    result files).
    """
    problems = []
    for path, text in derived_files(root).items():
        if not path.exists() or path.read_text() != text:
            problems.append(f"{path.relative_to(root)} is out of date")
    cache = {} if cache is None else cache
    for page in pages(root):
        current = page.read_text()
        new = synced(current, page, root, cache)
        if new != current:
            diff = "".join(
                list(
                    difflib.unified_diff(
                        current.splitlines(True), new.splitlines(True), "on disk", "generated", n=0
                    )
                )[:12]
            )
            blocks = ", ".join(stale_blocks(current, new)) or "(outside blocks)"
            problems.append(f"{page.relative_to(root)}: stale generated block(s) {blocks}\n{diff}")
    return problems


def write(root: Path = ROOT, cache: dict[str, str] | None = None) -> list[Path]:
    """Rewrite every derived file and page that is out of date; returns what changed."""
    changed = []
    for path, text in derived_files(root).items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    cache = {} if cache is None else cache
    for page in pages(root):
        current = page.read_text()
        new = synced(current, page, root, cache)
        if new != current:
            page.write_text(new)
            changed.append(page)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; fail if a page is out of date"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check()
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print("Generated docs are out of date: run `make readme`.", file=sys.stderr)
            return 1 if problems else 0
        for path in write():
            print(f"updated {path.relative_to(ROOT)}")
    except SyncError as exc:
        print(f"sync_readme: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
