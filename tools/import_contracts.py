"""A custom import-linter contract: code outside a package imports only its public names.

import-linter's own contracts see which *modules* import which; they cannot see
``from torchkron.factorization import _divisors``, a private *name* taken from a public
module. This contract reads each importer's source (``ast``) and reports every import of
a name, or a module path segment, that starts with one underscore.

Configured in pyproject.toml (``[tool.importlinter]``, ``contract_types``); ``make lint``
runs it with the other contracts through ``lint-imports`` (which puts the working
directory on ``sys.path``, so ``tools.import_contracts`` imports).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import grimp
from importlinter import Contract, ContractCheck, fields, output


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _source(module: str) -> tuple[Path, str] | None:
    # Located from the top-level package's folder, never by importing: a broken tree (the
    # very thing a contract reports) may not import at all.
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path, path.read_text(encoding="utf-8")
    return None


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    # A module's relative imports count from its package; a package's from itself.
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class PrivateNamesContract(Contract):
    """Across ``containers``, imports name public things only.

    A module inside one container (e.g. ``torchkron.layers``) may import private names of
    its own container; of any other module of ``root`` (another container, or the root
    package's own ``_version``) only public ones: no name, and no module path segment,
    with a single leading underscore.
    """

    type_name = "private_names"

    root = fields.StringField()
    containers = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        root = str(self.root)  # type: ignore[arg-type]
        containers = [str(c) for c in self.containers]  # type: ignore[attr-defined]

        def under(module: str, prefix: str) -> bool:
            return module == prefix or module.startswith(prefix + ".")

        def home(module: str) -> str | None:
            return next((c for c in containers if under(module, c)), None)

        violations: list[str] = []
        for module in sorted(graph.modules):
            own = home(module)
            if own is None:
                continue
            found = _source(module)
            if found is None:
                continue
            path, text = found
            is_package = path.name == "__init__.py"
            for node in ast.walk(ast.parse(text, filename=str(path))):
                targets: list[tuple[str, str | None]] = []
                if isinstance(node, ast.ImportFrom):
                    target = _resolve(module, is_package, node)
                    targets = [(target, alias.name) for alias in node.names]
                elif isinstance(node, ast.Import):
                    targets = [(alias.name, None) for alias in node.names]
                for target, name in targets:
                    if not under(target, root) or under(target, own):
                        continue
                    parts = target.split(".") + ([name] if name else [])
                    if any(_private(p) for p in parts):
                        shown = f"{target}.{name}" if name else target
                        violations.append(f"{module}:{node.lineno} imports {shown}")
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["violations"]:
            output.print_error(f"- {line}", bold=False)
            output.new_line()
        output.print(
            "Import a public name instead (export one from the package that owns it); "
            "private names may change without notice."
        )
