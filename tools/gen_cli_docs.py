"""Generate the CLI reference (docs/cli.md) from the ``torchkron`` argparse parsers.

The reference is rendered from the parser objects themselves (every subcommand, every
argument group, every option with its metavar, help text and default), not from
``--help`` output, so it does not depend on the terminal width or the Python version's
help formatter. ``python tools/sync_readme.py`` puts it into docs/cli.md between the
``<!-- generated:view:cli -->`` markers; ``--check`` (the README test) fails when a
parser changed and the page was not regenerated.

    python tools/gen_cli_docs.py          # print the generated reference
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    """The ``torchkron`` parser, as the console script builds it."""
    sys.path.insert(0, str(ROOT / "src"))
    from torchkron.experiments.cli import build_parser as _build

    return _build()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{name: subparser}`` in the order ``torchkron --help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def _md(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _help(action: argparse.Action, prog: str) -> str:
    """The help text with ``%(default)s`` and friends expanded, as argparse prints it."""
    if not action.help or action.help == argparse.SUPPRESS:
        text = ""
    else:
        params: dict[str, Any] = dict(vars(action), prog=prog)
        params = {k: v for k, v in params.items() if v is not argparse.SUPPRESS}
        for key in ("default", "choices"):
            value = params.get(key)
            if isinstance(value, Path):
                params[key] = value.as_posix()
        if params.get("choices") is not None:
            params["choices"] = ", ".join(map(str, params["choices"]))
        text = action.help % params
    default = action.default
    shown = default not in (None, False, argparse.SUPPRESS) and not isinstance(
        action, argparse._HelpAction | argparse._VersionAction
    )
    if shown and "default" not in text:
        value = default.as_posix() if isinstance(default, Path) else default
        text = f"{text} (default: {value})".strip()
    if action.choices is not None and "choices" not in (action.help or ""):
        text = f"{text} (one of: {', '.join(map(str, action.choices))})".strip()
    return _md(text)


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    meta = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
    name = meta if isinstance(meta, str) else " ".join(meta)
    if action.nargs in ("+", argparse.ONE_OR_MORE):
        return f"{name} [{name} ...]"
    if action.nargs in ("*", argparse.ZERO_OR_MORE):
        return f"[{name} ...]"
    if action.nargs == "?":
        return f"[{name}]"
    if isinstance(action.nargs, int) and action.nargs > 1:
        return " ".join([name] * action.nargs)
    return name


def _argument(action: argparse.Action) -> str:
    meta = _metavar(action)
    if not action.option_strings:
        return f"`{meta}`"
    names = ", ".join(action.option_strings)
    required = " (required)" if action.required else ""
    return f"`{names}{' ' + meta if meta else ''}`{required}"


def _usage(name: str, parser: argparse.ArgumentParser) -> str:
    words = [f"torchkron {name}"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            words.append(_metavar(action))
        elif action.required:
            words.append(f"{action.option_strings[0]} {_metavar(action)}".strip())
    words.append("[options]")
    return " ".join(words)


def render_command(name: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    lines = [f"### `torchkron {name}`", ""]
    text = parser.description or summary
    if text:
        lines += [_md(text), ""]
    lines += ["```console", f"$ {_usage(name, parser)}", "```", ""]
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS
        ]
        if not actions:
            continue
        title = group.title or "options"
        lines += [f"**{title[0].upper()}{title[1:]}**", "", "| argument | meaning |", "|---|---|"]
        lines += [f"| {_argument(a)} | {_help(a, f'torchkron {name}')} |" for a in actions]
        lines.append("")
    return lines


def render() -> str:
    """The generated part of docs/cli.md."""
    parser = build_parser()
    commands = subcommands(parser)
    summaries = _summaries(parser)
    lines = ["| command | what it does |", "|---|---|"]
    lines += [f"| [`{n}`](#torchkron-{n}) | {_md(summaries.get(n, ''))} |" for n in commands]
    lines.append("")
    for name, sub in commands.items():
        lines += render_command(name, sub, summaries.get(name, ""))
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
