"""docs/ and the README: links resolve, prose numbers are generated ones, the CLI and API
references cover everything public, and the generators behave."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from tools import bench_headline, gen_api_docs, gen_cli_docs, result_views, sync_readme

ROOT = Path(__file__).resolve().parents[1]
PAGES = sync_readme.pages(ROOT)
# Pages other branches are writing; the README already links them. Drop an entry once
# the page is merged (a present page is checked like any other).
PENDING: set[str] = set()
# Pages whose prose discusses results: each number there must be one of the page's
# generated numbers (rounded as the prose rounds it).
RESULT_PAGES = (
    "README.md",
    "docs/reproduction.md",
    "docs/frontier.md",
    "docs/speed.md",
    "docs/adapters.md",
)
# Numbers in result prose that are not measurements, with the reason.
NOT_RESULTS = {
    ("README.md", "3.10"): "the minimum Python version",
    ("docs/reproduction.md", "0.1307"): "the recipe's pixel mean (a CLI default)",
    ("docs/reproduction.md", "0.3081"): "the recipe's pixel std (a CLI default)",
    ("docs/frontier.md", "27x"): "ratio of two generated weight counts (203,264 / 7,650)",
    ("docs/speed.md", "100 MiB"): "a bound; the measured 97.0 MiB is in the speed table",
}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
HAND = re.compile(r"^<!-- hand-measured -->\n(.*?)^<!-- end:hand-measured -->$", re.S | re.M)
# A number in generated text; not digits inside a word (a git SHA, a file name), but
# ratios (71.4x) and shapes (784x625) count.
NUMBER = re.compile(r"(?<![0-9a-wyzA-Z._])\d+(?:,\d{3})*(?:\.\d+)?(?![0-9a-wyzA-Z]|\.\d)")
# A number that states a result: with decimals, or followed by a unit.
CLAIM = re.compile(
    r"(?<![\w.^*/-])(\d+(?:,\d{3})*(?:\.\d+)?)"
    r"(?:\s*(%|x\b|pp\b|points?\b|ms\b|us\b|s\b|min\b|MiB\b|GiB\b|GB/s\b))?"
)


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: Counter[str] = Counter()
    anchors = set()
    for m in re.finditer(r"^#{1,6} (.+)$", FENCE.sub("", text), re.M):
        slug = _slug(m.group(1))
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def _links(text: str) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_resolves(page):
    text = page.read_text()
    for target in _links(text):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            assert rel in PENDING, f"{_rel(page)} links {target}, which does not exist"
            continue
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest.read_text()), f"{_rel(page)}: no #{anchor} in {rel}"


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen or not page.exists() or page.suffix != ".md":
            continue
        seen.add(page)
        todo += [(page.parent / t.partition("#")[0]).resolve() for t in _links(page.read_text())]
    for page in PAGES[1:]:
        assert page in seen, f"no link leads from README.md to {_rel(page)}"


def _generated_numbers(text: str) -> list[float]:
    """Every number of the page's generated blocks."""
    numbers = []
    for m in sync_readme.BLOCK.finditer(text):
        numbers += [float(n.replace(",", "")) for n in NUMBER.findall(m.group("body"))]
    return numbers


def _prose(text: str) -> str:
    text = sync_readme.BLOCK.sub("", text)
    text = HAND.sub("", text)
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.sub(r"\]\([^)]*\)", "]", text)


def unbacked_numbers(text: str, generated: list[float]) -> list[str]:
    """Result-like numbers of the prose that no generated number rounds to."""
    out = []
    for m in CLAIM.finditer(_prose(text)):
        token, unit = m.group(1), m.group(2)
        if "." not in token and not unit:
            continue  # a bare integer: a size, a count, a config value
        value = float(token.replace(",", ""))
        places = len(token.split(".")[1]) if "." in token else 0
        tolerance = 0.5 * 10**-places + 1e-9
        if not any(abs(g - value) <= tolerance for g in generated):
            out.append(m.group(0).strip())
    return out


@pytest.mark.parametrize("name", RESULT_PAGES)
def test_numbers_in_result_prose_are_generated_numbers(name):
    text = (ROOT / name).read_text()
    allowed = {token for page, token in NOT_RESULTS if page == name}
    unbacked = [n for n in unbacked_numbers(text, _generated_numbers(text)) if n not in allowed]
    assert not unbacked, (
        f"{name}: {unbacked} appear in the prose but in no generated block; quote a "
        "generated number, add a generated block for it, or mark the paragraph hand-measured"
    )


def test_a_hand_typed_result_in_prose_is_caught():
    text = (ROOT / "docs" / "reproduction.md").read_text()
    generated = _generated_numbers(text)
    assert unbacked_numbers(text, generated) == ["0.1307", "0.3081"]
    edited = text.replace("31 to 61 points", "31 to 66 points", 1)
    assert edited != text
    assert unbacked_numbers(edited, generated) == ["0.1307", "0.3081", "66 points"]
    frontier = (ROOT / "docs" / "frontier.md").read_text()
    generated = _generated_numbers(frontier)
    assert "98.20 ± 0.09%" in _prose(frontier)
    assert unbacked_numbers(frontier.replace("98.20 ± 0.09%", "98.99 ± 0.09%", 1), generated) == [
        "98.99",
        "27x",
    ]


def test_hand_measured_notes_are_labelled():
    for page in PAGES:
        for m in HAND.finditer(page.read_text()):
            assert m.group(1).startswith("**Hand-measured"), _rel(page)


def test_cli_reference_covers_every_command_and_option():
    text = (ROOT / "docs" / "cli.md").read_text()
    commands = gen_cli_docs.subcommands(gen_cli_docs.build_parser())
    assert {"reproduce", "train", "report", "bench", "plan", "sweep", "compress"} <= set(commands)
    for name, parser in commands.items():
        assert f"### `torchkron {name}`" in text
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text, f"docs/cli.md lacks {name} {option}"


def test_api_reference_covers_every_public_name():
    import torchkron
    import torchkron.functional

    text = (ROOT / "docs" / "api.md").read_text()
    for name in set(torchkron.__all__) - gen_api_docs.SKIP:
        assert f"### `torchkron.{name}`" in text
    for name in torchkron.functional.__all__:
        assert f"### `torchkron.functional.{name}`" in text
    assert "KronLinear(in_features, out_features, bias=True, *, shapes=None" in text


def test_docstring_sections_become_markdown():
    doc = """Do a thing with ``x``, see :func:`torchkron.kronify`.

    Args:
        x: the input,
            continued.
        y: another.

    Examples:
        >>> 1 + 1
        2
    """
    assert gen_api_docs.render_docstring(doc) == [
        "Do a thing with `x`, see `torchkron.kronify`.",
        "",
        "**Args**",
        "",
        "- `x`: the input,",
        "  continued.",
        "- `y`: another.",
        "",
        "**Examples**",
        "",
        "```pycon",
        ">>> 1 + 1",
        "2",
        "```",
    ]


# api.md's python blocks are signatures, not statements.
@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "api.md"], ids=_rel)
def test_python_code_in_the_pages_compiles(page):
    for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)):
        compile(code, f"{_rel(page)} block {i}", "exec")


def _session(command: str, wall: float, **extra: object) -> dict[str, object]:
    env = {"processor": "CPU X", "cpu_count": 2, "torch": "2.13.0+cpu"}
    return {
        "command": command,
        "started_at": "2026-01-02T03:04:05+00:00",
        "wall_seconds": wall,
        "workers": 2,
        "runs": 27,
        "environment": env,
        **extra,
    }


def test_reproduce_time_is_the_last_complete_session(tmp_path):
    sessions = [
        _session("torchkron reproduce", 481.0),
        _session("torchkron reproduce --resume", 60.0),
        _session("torchkron reproduce", 90.0, complete=False),
    ]
    (tmp_path / "sessions.json").write_text(json.dumps(sessions))
    assert result_views.reproduce_time(tmp_path) == (
        "`make reproduce` took **8 min 01 s** of wall time for 27 runs on a 2-core machine "
        "(CPU X, 2 worker processes, torch 2.13.0+cpu), measured 2026-01-02 "
        "(`results/mnist/sessions.json`).\n"
    )
    (tmp_path / "sessions.json").write_text(json.dumps(sessions[1:]))
    assert result_views.reproduce_time(tmp_path).startswith("_No complete reproduce session")


def test_format_duration():
    assert result_views.format_duration(12.34) == "12.3 s"
    assert result_views.format_duration(480.68) == "8 min 01 s"
    assert result_views.format_duration(3725) == "1 h 02 min"


def test_smoke_bench_runs_never_reach_the_headline(tmp_path):
    src = ROOT / "benchmarks" / "results" / "bench-cpu.json"
    shutil.copy(src, tmp_path / "bench-cpu.json")
    shutil.copy(src, tmp_path / "bench-cpu-quick.json")
    assert [p.name for p in bench_headline.result_files(tmp_path)] == ["bench-cpu.json"]
    once = bench_headline.headline_text([tmp_path / "bench-cpu.json"])
    both = bench_headline.headline_text(
        [tmp_path / "bench-cpu-quick.json", tmp_path / "bench-cpu.json"]
    )
    assert both == once


def test_speed_summary_rows_come_from_the_bench_file():
    doc = json.loads((ROOT / "benchmarks" / "results" / "bench-cpu.json").read_text())
    cell = {
        r["contender"]: r
        for r in doc["results"]
        if (r["shape"], r["dtype"], r["mode"]) == ("4096-b1024", "float32", "train")
    }
    ratio = cell["dense"]["median_s"] / cell["KronLinear"]["median_s"]
    text = bench_headline.speed_summary([ROOT / "benchmarks" / "results" / "bench-cpu.json"])
    row = next(
        line
        for line in text.splitlines()
        if line.startswith("| 4096 -> 4096, 64x64 (x) 64x64, batch")
    )
    assert f"| {ratio:.2f}x |" in row
    assert bench_headline.speed_summary([ROOT / "nope.json"]) == "_No benchmark results found._\n"


def test_lm_v2_headline_pairs_each_cell_with_the_first_study(tmp_path):
    def row(config, group, budget, family, losses, params=1):
        mean = sum(losses) / len(losses) if losses else None
        return {
            "config": config, "group": group, "budget": budget, "family": family,
            "parameters": params, "val_losses": losses, "val_mean": mean,
            "val_std": 0.004 if len(losses) > 1 else None,
        }  # fmt: skip

    measured = {"measured": True, "text": "...", "gap": 0.071, "se": 0.003, "verdict": "higher"}
    summary = {
        "machine": {"processor": "CPU X", "cpu_count": 2, "torch": "2.13.0+cpu"},
        "runs": 9,
        "first_study_runs": 75,
        "rows": [
            row("dense", "none", "", "dense", [1.77, 1.78], params=804096),
            row("kron-mlp-k2-r4", "mlp", "b4", "kron", [1.84, 1.85, 1.85]),
            row("kron-mlp-k2-r4-nomult", "mlp", "b4", "kron-nomult", [1.95, 1.96]),
            row("lowrank-mlp-r4", "mlp", "b4", "lowrank", [2.18]),
            row("kron-attn-k2-r4", "attn", "b4", "kron", []),  # not run: no row
            row("kron-mlp-k2-r4-e160", "wide", "flops", "kron", [1.80], params=9),
        ],
        "first_study_rows": [row("kron-mlp-k2-r4", "mlp", "b4", "kron", [2.0, 2.016])],
        "findings": [
            {"question": "MLP at 3.9%: Kronecker vs dense", "v2": measured,
             "v1": {**measured, "gap": 0.232, "se": 0.024}},
            {"question": "Kronecker in attention (R=4) vs dense", "v2": {"measured": False},
             "v1": measured},
            {"question": "equal compute: Kronecker MLP (R=4) vs dense",
             "v2": {**measured, "se": None, "verdict": "too few seeds"},
             "v1": {"measured": False}},
        ],
    }  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = result_views.lm_v2_headline(tmp_path)
    # the ablation's family is not a column: it never replaces Kronecker's own cell
    assert "| MLP, 3.9% | 1.847 ± 0.004 (2.008) | 2.180 (1 seed) | — | — |" in text
    assert "attention" not in text
    assert "7.8%" not in text
    assert "References: dense (804,096 params) 1.775 ± 0.004 (2 seeds); " in text
    assert "kron-mlp-k2-r4-e160 (9 params) 1.800 (1 seed)." in text
    assert [line for line in text.splitlines() if line.startswith("- ")] == [
        "- MLP at 3.9%: Kronecker vs dense: +0.071, SE 0.003, higher "
        "(v1: +0.232, SE 0.024, higher)",
        "- equal compute: Kronecker MLP (R=4) vs dense: +0.071, too few seeds",
    ]
    assert "torch 2.13.0+cpu; 9 + 75 runs." in text
