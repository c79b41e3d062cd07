"""A reproduction against the committed reference: per variant, how far the means moved.

``torchkron reproduce`` trains into its own folder (``runs/mnist`` by default) and ends by
comparing that folder's ``summary.json`` with the committed one (``results/mnist``): per
variant the committed and the new mean final test accuracy, their difference, and the
difference in units of the pooled seed standard deviation of the two (the yardstick the
findings use; up to 2 counts as seed noise).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_text
from torchkron.experiments.mnist.findings import NOISE_FACTOR, pooled_std
from torchkron.experiments.mnist.summary import IGNORED_CONFIG_KEYS, SUMMARY_FILE

__all__ = [
    "COMPARISON_FILE",
    "REFERENCE_DIR",
    "VariantComparison",
    "compare_summaries",
    "comparison_markdown",
    "default_reference",
    "write_comparison",
]

COMPARISON_FILE = "comparison.md"
#: The committed reference results, relative to a checkout.
REFERENCE_DIR = Path("results") / "mnist"


@dataclass(frozen=True)
class VariantComparison:
    """One variant's mean final test accuracy (percent), committed vs new."""

    name: str
    ref_mean: float
    ref_std: float
    ref_seeds: int
    new_mean: float
    new_std: float
    new_seeds: int
    same_recipe: bool

    @property
    def diff(self) -> float:
        """New minus committed mean, percentage points."""
        return self.new_mean - self.ref_mean

    @property
    def pooled_std(self) -> float:
        return pooled_std(self.ref_std, self.ref_seeds, self.new_std, self.new_seeds)

    @property
    def in_std(self) -> float | None:
        """The difference in pooled seed stds (None when the pooled std is 0)."""
        pooled = self.pooled_std
        return self.diff / pooled if pooled > 0 else None

    @property
    def within_noise(self) -> bool:
        return abs(self.diff) <= NOISE_FACTOR * self.pooled_std


def default_reference() -> Path | None:
    """``results/mnist`` of the current folder, else of this source checkout, if present."""
    checkout = Path(__file__).resolve().parents[4]
    for candidate in (REFERENCE_DIR, checkout / REFERENCE_DIR):
        if (candidate / SUMMARY_FILE).is_file():
            return candidate
    return None


def _load(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text())
    except FileNotFoundError:
        raise UserError(
            f"The reference folder {path} has no {SUMMARY_FILE}; pass --reference to a "
            "folder written by `torchkron reproduce` (or `torchkron report`)."
        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path / SUMMARY_FILE} is not valid JSON ({exc}); regenerate it with "
            f"`torchkron report {path}`."
        ) from None
    if not isinstance(summary, dict) or not isinstance(summary.get("variants"), list):
        raise UserError(f"{path / SUMMARY_FILE} is not a torchkron summary.")
    return summary


def _recipe(variant: Mapping[str, Any]) -> dict[str, Any]:
    config = variant.get("config") or {}
    return {k: v for k, v in config.items() if k not in IGNORED_CONFIG_KEYS}


def compare_summaries(
    reference: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[list[VariantComparison], list[str], list[str]]:
    """The variants of both summaries compared (in the new summary's order), and the names
    of those only in the reference and only in the new one."""
    ref = {v["name"]: v for v in reference["variants"]}
    rows: list[VariantComparison] = []
    for v in new["variants"]:
        r = ref.get(v["name"])
        if r is None:
            continue
        rows.append(
            VariantComparison(
                name=v["name"],
                ref_mean=float(r["test_accuracy"]["mean"]),
                ref_std=float(r["test_accuracy"]["std"]),
                ref_seeds=len(r["seeds"]),
                new_mean=float(v["test_accuracy"]["mean"]),
                new_std=float(v["test_accuracy"]["std"]),
                new_seeds=len(v["seeds"]),
                same_recipe=_recipe(r) == _recipe(v),
            )
        )
    new_names = {v["name"] for v in new["variants"]}
    only_ref = [name for name in ref if name not in new_names]
    only_new = [v["name"] for v in new["variants"] if v["name"] not in ref]
    return rows, only_ref, only_new


def comparison_markdown(
    reference_dir: Path, new_dir: Path, reference: Mapping[str, Any], new: Mapping[str, Any]
) -> str:
    """The comparison as markdown: a table and a one-line verdict."""
    rows, only_ref, only_new = compare_summaries(reference, new)
    lines = [
        f"# {new_dir} against the committed reference {reference_dir}",
        "",
        "Mean final test accuracy (%) over seeds, ± the sample std; the difference is new "
        f"minus committed, also in units of the pooled seed std (|diff| up to "
        f"{NOISE_FACTOR:g} pooled std is seed noise).",
        "",
        "| variant | committed | new | difference (pp) | in pooled seed std | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for c in rows:
        in_std = "—" if c.in_std is None else f"{c.in_std:+.2f}"
        verdict = "within seed noise" if c.within_noise else "beyond seed noise"
        if not c.same_recipe:
            verdict += "; different recipe"
        lines.append(
            f"| `{c.name}` | {c.ref_mean:.2f} ± {c.ref_std:.2f} (n={c.ref_seeds}) "
            f"| {c.new_mean:.2f} ± {c.new_std:.2f} (n={c.new_seeds}) | {c.diff:+.2f} "
            f"| {in_std} | {verdict} |"
        )
    lines.append("")
    beyond = [c.name for c in rows if not c.within_noise]
    if not rows:
        lines.append("No variant is in both; nothing to compare.")
    elif beyond:
        lines.append(
            f"{len(beyond)} of {len(rows)} variant(s) differ beyond seed noise: "
            f"{', '.join(beyond)}."
        )
    else:
        lines.append(f"All {len(rows)} variant(s) agree with the reference within seed noise.")
    if only_ref:
        lines.append(f"Only in the reference (not trained here): {', '.join(only_ref)}.")
    if only_new:
        lines.append(f"Only here (not in the reference): {', '.join(only_new)}.")
    return "\n".join(lines) + "\n"


def write_comparison(out_dir: Path, reference_dir: Path) -> tuple[Path, str]:
    """Write ``out_dir/comparison.md`` comparing it with ``reference_dir``; return it and its
    text."""
    text = comparison_markdown(reference_dir, out_dir, _load(reference_dir), _load(out_dir))
    path = out_dir / COMPARISON_FILE
    atomic_write_text(path, text)
    return path, text
