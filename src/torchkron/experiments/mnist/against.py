"""A study against a baseline study: where the Kronecker nets' advantage comes from.

``torchkron report DIR --baseline BASE`` sets the variants of ``DIR`` (e.g. trained on
permuted MNIST, or on Fashion-MNIST) beside those of ``BASE`` (plain MNIST) and answers
three questions, each with its criterion and the seed noise behind it:

1. ``advantage``: how much of the Kronecker nets' advantage over their equal-weight dense
   baselines survives here. For each pair (a Kronecker variant and the ``dense-h<N>``
   with as many weights) the advantage is ``kron - dense`` in final test accuracy (pp);
   the *share retained* is the advantage here over the advantage in ``BASE``. The claim
   "the advantage survives" holds when every advantage here is positive and beyond seed
   noise (``findings.NOISE_FACTOR`` x pooled seed std).
2. ``tying``: whether tying ``U = V`` (``one-kron-mat``) still costs nothing against two
   factors (``two-kron-mat``): better, or within seed noise.
3. ``gap-to-original``: how far each Kronecker input-hidden variant falls behind
   ``original`` here, beside the same gap in ``BASE``; holds when each stays within
   ``findings.ACCURACY_TOLERANCE_PP`` of ``original`` here (the seed's first claim).

Pure functions of two summaries (themselves pure functions of run files).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torchkron.experiments.mnist.findings import (
    ACCURACY_TOLERANCE_PP,
    NOISE_FACTOR,
    Comparison,
    compare,
)

__all__ = ["KRON_INPUT_VARIANTS", "against", "against_markdown", "data_title"]

#: The seed's variants with a Kronecker input-hidden layer and a dense output layer.
KRON_INPUT_VARIANTS = ("one-kron-mat", "two-kron-mat")

Summary = Mapping[str, Any]


def data_title(summary: Summary) -> str:
    """What a study trained on, from its runs' configs: ``MNIST``, ``Fashion-MNIST``,
    ``MNIST, pixels permuted (seed 0)``."""
    from torchkron.experiments.mnist.options import DATASET_TITLES

    configs = [v["config"] for v in summary["variants"]] or [{}]
    titles = sorted({_title(c, DATASET_TITLES) for c in configs})
    return " / ".join(titles)


def _title(config: Mapping[str, Any], titles: Mapping[str, str]) -> str:
    name = str(config.get("dataset", "mnist"))
    text = titles.get(name, name)
    if config.get("permute_pixels") is not None:
        text += f", pixels permuted (seed {config['permute_pixels']})"
    return text


def _pp(c: Comparison) -> str:
    return f"{c.diff:+.2f} pp (2 x pooled std {NOISE_FACTOR * c.pooled_std:.2f})"


def _pairs(variants: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(Kronecker variant, its equal-weight dense baseline), in the summary's order."""
    return [(str(v["matches"]), v["name"]) for v in variants.values() if v.get("matches")]


def _advantage(
    here: Mapping[str, Any], base: Mapping[str, Any], title: str, btitle: str
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    parts: list[str] = []
    holds: list[bool] = []
    for kron, dense in _pairs(here):
        if kron not in here:
            continue
        c = compare(here[kron], here[dense])
        b = compare(base[kron], base[dense]) if kron in base and dense in base else None
        share = None if b is None or b.diff <= 0 else c.diff / b.diff
        rows.append(
            {
                "kron": kron,
                "dense": dense,
                "advantage": c.diff,
                "noise": NOISE_FACTOR * c.pooled_std,
                "baseline_advantage": None if b is None else b.diff,
                "share_retained": share,
            }
        )
        holds.append(c.diff > 0 and c.beyond_noise)
        there = "" if b is None else f" vs {_pp(b)} on {btitle}"
        kept = "" if share is None else f", {100 * share:.0f}% of it retained"
        parts.append(f"{kron} over {dense}: {_pp(c)} here{there}{kept}")
    return {
        "id": "advantage",
        "claim": f"The Kronecker nets' advantage over equal-weight dense nets survives on {title}.",
        "holds": all(holds) if holds else None,
        "evidence": "; ".join(parts) + ".",
        "criterion": (
            f"every Kronecker variant beats its dense baseline here by more than {NOISE_FACTOR:g}"
            f" x pooled seed std; share retained = advantage here / advantage on {btitle}"
        ),
        "rows": rows,
    }


def _tying(
    here: Mapping[str, Any], base: Mapping[str, Any], title: str, btitle: str
) -> dict[str, Any] | None:
    if not all(n in here for n in KRON_INPUT_VARIANTS):
        return None
    c = compare(here["one-kron-mat"], here["two-kron-mat"])
    ok = c.diff >= 0 or not c.beyond_noise
    there = ""
    if all(n in base for n in KRON_INPUT_VARIANTS):
        there = f" (on {btitle}: {_pp(compare(base['one-kron-mat'], base['two-kron-mat']))})"
    return {
        "id": "tying",
        "claim": f"Tying U = V (one-kron-mat) still costs nothing against U, V on {title}.",
        "holds": ok,
        "evidence": f"one-kron-mat - two-kron-mat: {_pp(c)}{there}.",
        "criterion": f"one-kron-mat is better, or the difference is within {NOISE_FACTOR:g} x "
        "pooled seed std",
    }


def _gap(
    here: Mapping[str, Any], base: Mapping[str, Any], title: str, btitle: str
) -> dict[str, Any] | None:
    if "original" not in here:
        return None
    rows: list[dict[str, Any]] = []
    parts: list[str] = []
    holds: list[bool] = []
    for name in [n for n in here if n != "original" and not here[n].get("matches")]:
        c = compare(here[name], here["original"])
        b = compare(base[name], base["original"]) if name in base and "original" in base else None
        rows.append({"variant": name, "gap": c.diff, "baseline_gap": None if b is None else b.diff})
        if name in KRON_INPUT_VARIANTS:
            holds.append(c.diff >= -ACCURACY_TOLERANCE_PP)
        there = "" if b is None else f" (on {btitle}: {b.diff:+.2f} pp)"
        parts.append(f"{name} {_pp(c)}{there}")
    return {
        "id": "gap-to-original",
        "claim": f"one-kron-mat and two-kron-mat stay within {ACCURACY_TOLERANCE_PP:g} pp of "
        f"original on {title}.",
        "holds": all(holds) if holds else None,
        "evidence": "behind original: " + "; ".join(parts) + ".",
        "criterion": f"each is at most {ACCURACY_TOLERANCE_PP:g} pp below original here; the "
        "out-kron variants are listed for reference",
        "rows": rows,
    }


def against(summary: Summary, baseline: Summary, baseline_name: str) -> dict[str, Any]:
    """The three answers for ``summary`` against ``baseline`` (see the module docstring).

    Returns ``{"baseline", "title", "baseline_title", "findings": [...], "accuracy": [...]}``;
    ``accuracy`` lists each variant's final test accuracy here and in the baseline.
    """
    here = {v["name"]: v for v in summary["variants"]}
    base = {v["name"]: v for v in baseline["variants"]}
    title, btitle = data_title(summary), data_title(baseline)
    found = [
        f
        for f in (
            _advantage(here, base, title, btitle),
            _tying(here, base, title, btitle),
            _gap(here, base, title, btitle),
        )
        if f is not None
    ]
    accuracy = [
        {
            "variant": name,
            "here": dict(v["test_accuracy"]),
            "baseline": dict(base[name]["test_accuracy"]) if name in base else None,
        }
        for name, v in here.items()
    ]
    return {
        "baseline": baseline_name,
        "title": title,
        "baseline_title": btitle,
        "findings": found,
        "accuracy": accuracy,
    }


def against_markdown(
    section: Mapping[str, Any], verdict: Callable[[bool | None], str]
) -> list[str]:
    """The ``results.md`` section for :func:`against`'s result."""
    t, b = section["title"], section["baseline_title"]
    lines = [
        f"## Against {b} (`{section['baseline']}`)",
        "",
        f"| variant | {t}: test accuracy % | {b}: test accuracy % | change (pp) |",
        "|---|---:|---:|---:|",
    ]
    for row in section["accuracy"]:
        h, o = row["here"], row["baseline"]
        there = "—" if o is None else f"{o['mean']:.2f} ± {o['std']:.2f}"
        change = "—" if o is None else f"{h['mean'] - o['mean']:+.2f}"
        lines.append(
            f"| `{row['variant']}` | {h['mean']:.2f} ± {h['std']:.2f} | {there} | {change} |"
        )
    lines.append("")
    for i, f in enumerate(section["findings"], 1):
        lines.append(
            f"{i}. **{verdict(f['holds'])}**: {f['claim']} {f['evidence']} "
            f"Criterion: {f['criterion']}."
        )
    return [*lines, ""]
