"""Generate the library API reference (docs/api.md) from the public docstrings.

Every name in ``torchkron.__all__`` and ``torchkron.functional.__all__`` gets its
signature (without annotations, as ``help()`` would show the call) and its docstring,
with the Google-style sections (Args, Returns, Shape, Examples, ...) turned into Markdown
and reST roles (``:func:`x```, ````x````) into code spans. ``python tools/sync_readme.py``
puts the result into docs/api.md between the ``<!-- generated:view:api -->`` markers, so
the page cannot drift from the code; ``--check`` (the README test) fails when it did.

    python tools/gen_api_docs.py          # print the generated reference
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The order a reader needs them in; names not listed follow alphabetically.
ORDER = (
    "KronLinear",
    "kronify",
    "KronifyReport",
    "LayerReport",
    "KRONIFY_MAPPING",
    "factor_shapes",
    "layer_factorizations",
    "nearest_kronecker",
    "kron_linear",
    "kron_weight",
)
SKIP = {"__version__", "functional"}
# nn.Module plumbing that is public by name but not part of this library's API.
SKIP_MEMBERS = {"extra_repr"}
SECTIONS = (
    "Args",
    "Arguments",
    "Attributes",
    "Returns",
    "Yields",
    "Raises",
    "Warns",
    "Shape",
    "Examples",
    "Example",
    "Note",
    "Notes",
)
ITEM_SECTIONS = {"Args", "Arguments", "Attributes", "Raises", "Warns"}
ROLE = re.compile(r":(?:func|meth|class|data|attr|mod|obj|exc):`~?([^`]+)`")


def _inline(text: str) -> str:
    """reST inline markup to Markdown: roles and double backticks become code spans."""
    text = ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text)


def _prose(lines: list[str]) -> list[str]:
    """Paragraph text; a paragraph ending in ``::`` introduces an indented literal block."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            stripped = line.rstrip()[:-2].rstrip()
            out.append(_inline(stripped + (":" if stripped else "")))
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            out += ["", "```text", *textwrap.dedent("\n".join(block)).strip("\n").split("\n")]
            out += ["```", ""]
            continue
        out.append(_inline(line))
        i += 1
    return out


def _items(body: list[str]) -> list[str]:
    """``name: text`` entries (continuation lines indented) as a Markdown list."""
    out: list[str] = []
    for line in body:
        if line and not line.startswith(" "):
            name, sep, rest = line.partition(":")
            out.append(f"- `{name.strip()}`: {_inline(rest.strip())}" if sep else f"- {line}")
        elif line.strip():
            out.append("  " + _inline(line[4:] if line.startswith("    ") else line.lstrip()))
        else:
            out.append("")
    return out


def render_docstring(doc: str) -> list[str]:
    """A Google-style docstring as Markdown lines."""
    lines = inspect.cleandoc(doc).split("\n")
    out: list[str] = []
    current: list[str] = []
    section: str | None = None

    def flush() -> None:
        body = textwrap.dedent("\n".join(current)).strip("\n").split("\n")
        if section is None:
            out.extend(_prose(body))
        elif section in ("Examples", "Example"):
            out.extend([f"**{section}**", "", "```pycon", *body, "```"])
        elif section in ITEM_SECTIONS:
            out.extend([f"**{section}**", "", *_items(body)])
        else:
            out.extend([f"**{section}**", "", *_prose(body)])
        out.append("")

    for line in lines:
        header = line.strip().rstrip(":")
        if line.endswith(":") and not line.startswith(" ") and header in SECTIONS:
            if current:
                flush()
            section, current = header, []
            continue
        current.append(line)
    if current:
        flush()
    while out and not out[-1].strip():
        out.pop()
    return out


def _signature(obj: Callable[..., Any], name: str) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return f"{name}{sig.replace(parameters=params, return_annotation=inspect.Signature.empty)}"


def _attribute_doc(name: str, modules: list[ModuleType]) -> str:
    """The string literal after ``NAME = ...`` in a module's source (attribute docstring)."""
    for module in modules:
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError):
            continue
        body = tree.body
        for node, nxt in itertools.pairwise(body):
            targets = (
                [node.target]
                if isinstance(node, ast.AnnAssign)
                else node.targets
                if isinstance(node, ast.Assign)
                else []
            )
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                return nxt.value.value
    return ""


def _members(cls: type) -> list[tuple[str, Any]]:
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_") or name in SKIP_MEMBERS:
            continue
        func = value.__func__ if isinstance(value, classmethod | staticmethod) else value
        if isinstance(func, property) or inspect.isfunction(func):
            members.append((name, value))
    return members


def render_object(qualname: str, obj: Any, modules: list[ModuleType]) -> list[str]:
    short = qualname.rsplit(".", 1)[-1]
    lines = [f"### `{qualname}`", ""]
    if inspect.isclass(obj) or inspect.isfunction(obj):
        lines += ["```python", _signature(obj, short), "```", ""]
        lines += render_docstring(obj.__doc__ or "")
    else:
        doc = _attribute_doc(short, modules)
        lines += [f"A `{type(obj).__name__}`.", ""] + (render_docstring(doc) if doc else [])
    if inspect.isclass(obj):
        for name, value in _members(obj):
            func = value.__func__ if isinstance(value, classmethod | staticmethod) else value
            # Its own docstring only: inherited ones (nn.Module.forward's) are torch's text.
            own = (func.fget if isinstance(func, property) else func).__doc__
            if not own:
                continue
            kind = "property" if isinstance(func, property) else "method"
            head = (
                f"`{short}.{name}`"
                if kind == "property"
                else f"`{_signature(func, f'{short}.{name}')}`"
            )
            if isinstance(value, classmethod):
                head += " (classmethod)"
            elif kind == "property":
                head += " (property)"
            lines += ["", f"#### {head}", "", *render_docstring(own)]
    lines.append("")
    return lines


def _ordered(names: list[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(ORDER)), n.lower()))


def render() -> str:
    """The generated part of docs/api.md."""
    sys.path.insert(0, str(ROOT / "src"))
    import importlib

    torchkron = importlib.import_module("torchkron")
    functional = importlib.import_module("torchkron.functional")
    sources = [
        importlib.import_module(f"torchkron.{m}")
        for m in ("layers.kron", "surgery.converters", "factorization", "functional")
    ]
    lines = ["## `torchkron`", ""]
    for name in _ordered([n for n in torchkron.__all__ if n not in SKIP]):
        lines += render_object(f"torchkron.{name}", getattr(torchkron, name), sources)
    lines += ["## `torchkron.functional`", ""]
    lines += [*render_docstring(inspect.getdoc(functional) or ""), ""]
    for name in _ordered(list(functional.__all__)):
        lines += render_object(f"torchkron.functional.{name}", getattr(functional, name), sources)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
