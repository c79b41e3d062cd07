"""Print the architecture numbers of issue 16: import cycles, upward imports, private-name
imports from the harness, the largest source files, and docstring examples.

    python tools/arch_metrics.py

Cycles are strongly connected components of the module import graph of ``torchkron``
(grimp; every import counted, function-level ones too). "Upward" is a library module
importing ``torchkron.experiments``. A private-name import is one from the harness,
``benchmarks/`` or ``tools/`` of a name (module or attribute) starting with ``_`` in the
library.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "torchkron"
HARNESS = "torchkron.experiments"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    # Tarjan's strongly connected components over the module graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def _private_imports(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mod = node.module
                if not mod.startswith("torchkron") or mod.startswith(HARNESS):
                    continue
                parts = mod.split(".")
                for alias in node.names:
                    if any(p.startswith("_") for p in parts) or alias.name.startswith("_"):
                        found.append(f"{path.relative_to(ROOT)}: {mod}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    mod = alias.name
                    internal = mod.startswith("torchkron") and not mod.startswith(HARNESS)
                    if internal and any(p.startswith("_") for p in mod.split(".")):
                        found.append(f"{path.relative_to(ROOT)}: {mod}")
    return found


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    graph = grimp.build_graph("torchkron", include_external_packages=False)
    cycles = _cycles(graph)
    print(f"import cycles: {len(cycles)}")
    for c in cycles:
        print("  " + " <-> ".join(c))
    upward = sorted(
        f"{m} -> {i}"
        for m in graph.modules
        if not m.startswith(HARNESS)
        for i in graph.find_modules_directly_imported_by(m)
        if i.startswith(HARNESS)
    )
    print(f"library modules importing the harness: {len(upward)}")
    for u in upward:
        print("  " + u)
    harness_files = sorted((SRC / "experiments").rglob("*.py"))
    outside = sorted((ROOT / "benchmarks").rglob("*.py")) + sorted((ROOT / "tools").glob("*.py"))
    private = _private_imports(harness_files)
    print(f"private library names imported by the harness: {len(private)}")
    for p in private:
        print("  " + p)
    other = _private_imports(outside)
    print(f"private library names imported by benchmarks/ and tools/: {len(other)}")
    files = sorted(
        (len(p.read_text().splitlines()), p.relative_to(ROOT))
        for p in list(SRC.rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py"))
    )
    print("largest source files:")
    for n, p in reversed(files[-5:]):
        print(f"  {n:5d} {p}")
    lib = [p for p in SRC.rglob("*.py") if HARNESS.split(".")[1] not in p.parts]
    harness = list((SRC / "experiments").rglob("*.py"))
    print(f"library lines: {sum(len(p.read_text().splitlines()) for p in lib)}")
    print(f"harness lines: {sum(len(p.read_text().splitlines()) for p in harness)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
