"""Copy generated result files into README.md between marker comments.

The README never holds hand-typed results: each block between
``<!-- generated:PATH -->`` and ``<!-- end:PATH -->`` is replaced by the file PATH
(relative to the repository root), minus its first heading line and with its other
headings one level lower. ``--check`` fails if any
block is out of date (used by the tests).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(<!-- generated:(?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end:(?P=path) -->)", re.S
)


LINK = re.compile(r"\]\((?!https?:|/|#)([^)\s]+)\)")


def _body(path: str) -> str:
    text = (ROOT / path).read_text()
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    # Headings move one level down: the block sits inside a README section.
    lines = ["#" + line if line.startswith("#") else line for line in lines]
    body = "\n".join(lines).strip("\n") + "\n"
    # Relative links and images point next to the source file; make them relative to the
    # README instead.
    folder = Path(path).parent.as_posix()
    return LINK.sub(lambda m: f"]({folder}/{m.group(1)})" if folder != "." else m.group(0), body)


def synced(readme: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + _body(m.group("path")) + m.group(4), readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is out of date")
    args = parser.parse_args(argv)
    readme_path = ROOT / "README.md"
    current = readme_path.read_text()
    new = synced(current)
    if args.check:
        if new != current:
            print("README.md is out of date: run `make readme`", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
