"""Sweep run records -> ``summary.json``, ``frontier.md`` and ``frontier.png``.

Pure functions of ``OUT/runs/*.json``: :func:`frontier_summary` reuses
:func:`torchkron.experiments.mnist.summary.summarize` for the per-config statistics over seeds,
then adds what the frontier needs:

- ``variants[i]["point"]``: the config's series, factors, rank, tying, output layer,
  dense width, forward FLOPs per sample and the seed variant it equals (from its spec);
- ``pareto``: the configs on the Pareto front of (weights, mean final test accuracy):
  no other config has at most as many weights and a higher mean accuracy;
- ``budgets``: for weight budgets 1, 3, 10, 30, ... the best config, the best dense and the
  best Kronecker config with at most that many weights, compared with the seed-noise
  criterion of :mod:`torchkron.experiments.mnist.findings`;
- ``findings``: answers computed from those (where Kronecker nets win; whether more
  factors, higher rank, tying or a Kronecker output layer pay off, i.e. reach the front).

Regenerating from the same runs gives identical ``frontier.md`` and ``frontier.png``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_bytes, atomic_write_text
from torchkron.experiments.common.runs import load_complete_runs
from torchkron.experiments.mnist.findings import NOISE_FACTOR, NOT_MEASURED, compare
from torchkron.experiments.mnist.report import SummaryFiles
from torchkron.experiments.mnist.summary import save_summary, summarize
from torchkron.experiments.mnist.tables import format_duration
from torchkron.experiments.mnist.variants import SEED_VARIANTS
from torchkron.functional import dense_flops, kron_flops

__all__ = [
    "DENSE_SERIES",
    "FRONTIER_MD",
    "FRONTIER_PNG",
    "budget_levels",
    "frontier_markdown",
    "frontier_summary",
    "frontier_text",
    "pareto_front",
    "plot_frontier",
    "point_of",
    "write_frontier",
]

FRONTIER_MD = "frontier.md"
FRONTIER_PNG = "frontier.png"
DENSE_SERIES = "dense-width"
DPI = 150

Record = Mapping[str, Any]
Variant = Mapping[str, Any]
Summary = Mapping[str, Any]

_PAYS_OFF = (
    "a config pays off when it is on the Pareto front: no config with at most its weights "
    "has a higher mean final test accuracy"
)


# --- what each config is ---------------------------------------------------------------


def _layer_flops(layer: Mapping[str, Any]) -> int:
    if layer.get("lowrank"):
        return 2 * int(layer["lowrank"]) * (int(layer["in_features"]) + int(layer["out_features"]))
    shapes = layer.get("shapes")
    if shapes is None:
        return dense_flops(int(layer["in_features"]), int(layer["out_features"]))
    return kron_flops([o for o, _ in shapes], [n for _, n in shapes], int(layer.get("rank", 1)))


def _seed_variant(spec: Mapping[str, Any]) -> str | None:
    for seed in SEED_VARIANTS:
        d = seed.to_dict()
        if d["hidden"] == spec.get("hidden") and d["output"] == spec.get("output"):
            return seed.name
    return None


def point_of(record: Record) -> dict[str, Any]:
    """The frontier facts of a run's config, read from its spec alone."""
    spec = record["spec"]
    hidden, output = spec["hidden"], spec["output"]
    shapes = hidden.get("shapes")
    out = "dense" if output.get("shapes") is None else "kron"
    point: dict[str, Any] = {
        "series": DENSE_SERIES,
        "kind": "dense" if shapes is None else "kron",
        "factors": None,
        "rank": None,
        "tied": None,
        "output": out,
        "width": None,
        "hidden_weights": None,
        "flops": _layer_flops(hidden) + _layer_flops(output),
        "seed_variant": _seed_variant(spec),
    }
    if hidden.get("lowrank"):  # a low-rank baseline: its own series, by output layer
        r = int(hidden["lowrank"])
        point |= {"series": f"lowrank-{out}out", "kind": "lowrank", "rank": r}
        point["hidden_weights"] = r * (int(hidden["in_features"]) + int(hidden["out_features"]))
        return point
    if shapes is None:
        point["width"] = int(hidden["out_features"])
        point["hidden_weights"] = int(hidden["in_features"]) * int(hidden["out_features"])
        if out == "kron":
            point["series"] = "dense-kronout"
        return point
    tied, rank = bool(hidden.get("tied")), int(hidden.get("rank", 1))
    sizes = [int(o) * int(n) for o, n in shapes]
    point |= {
        "series": f"kron-k{len(shapes)}-{'tied' if tied else 'untied'}-{out}out",
        "factors": len(shapes),
        "rank": rank,
        "tied": tied,
        "hidden_weights": rank * (sizes[0] if tied else sum(sizes)),
    }
    return point


# --- the front and the budgets ---------------------------------------------------------


def pareto_front(points: Iterable[tuple[str, float, float]]) -> list[str]:
    """Names on the Pareto front of ``(name, weights, accuracy)`` points, by weights.

    A point is on the front when no other point has at most its weights and a higher
    accuracy (of two equal points, the one first by name).
    """
    front: list[str] = []
    best = -math.inf
    for name, _, accuracy in sorted(points, key=lambda p: (p[1], -p[2], p[0])):
        if accuracy > best:
            front.append(name)
            best = accuracy
    return front


def budget_levels(weights: Sequence[int]) -> list[int]:
    """Budgets 1, 3, 10, 30, ... from the decade of the smallest weight count up to the
    first budget that covers the largest."""
    if not weights:
        return []
    level = 10 ** math.floor(math.log10(max(1, min(weights))))
    levels: list[int] = []
    while True:
        for step in (1, 3):
            if step * level >= min(weights):
                levels.append(step * level)
            if step * level >= max(weights):
                return levels
        level *= 10


def _best(variants: Iterable[Variant]) -> Variant | None:
    # Highest mean accuracy; ties to fewer weights, then name: independent of input order.
    return min(
        variants,
        key=lambda v: (-v["test_accuracy"]["mean"], v["weights"], v["name"]),
        default=None,
    )


def _budget_rows(variants: Sequence[Variant]) -> list[dict[str, Any]]:
    rows = []
    for budget in budget_levels([v["weights"] for v in variants]):
        within = [v for v in variants if v["weights"] <= budget]
        best = _best(within)
        dense = _best(v for v in within if v["point"]["kind"] == "dense")
        kron = _best(v for v in within if v["point"]["kind"] == "kron")
        row: dict[str, Any] = {
            "budget": budget,
            "best": best["name"] if best else None,
            "best_dense": dense["name"] if dense else None,
            "best_kron": kron["name"] if kron else None,
            "kron_minus_dense": None,
            "beyond_noise": None,
        }
        if dense and kron:
            c = compare(kron, dense)
            row["kron_minus_dense"], row["beyond_noise"] = c.diff, c.beyond_noise
        rows.append(row)
    return rows


# --- findings --------------------------------------------------------------------------


def _short(a: Variant, b: Variant) -> str:
    c = compare(a, b)
    where = "beyond" if c.beyond_noise else "within"
    noise = (
        f"{where} seed noise" if c.noise_measured else f"seed noise not measured ({NOT_MEASURED})"
    )
    return (
        f"{a['name']} vs {b['name']}: {c.diff:+.2f} pp ({noise}), "
        f"{a['weights']:,} vs {b['weights']:,} weights"
    )


def _finding(
    ident: str, question: str, holds: bool | None, answer: str, evidence: list[str]
) -> dict[str, Any]:
    return {
        "id": ident,
        "question": question,
        "claim": f"{question} {answer}",
        "holds": holds,
        "answer": answer,
        "evidence": "; ".join(evidence) if evidence else "no paired config was run",
        "evidence_items": list(evidence),
    }


def _kron_vs_dense(budgets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    both = [b for b in budgets if b["kron_minus_dense"] is not None]
    wins = [b for b in both if b["beyond_noise"] and b["kron_minus_dense"] > 0]
    losses = [b for b in both if b["beyond_noise"] and b["kron_minus_dense"] < 0]
    ties = [b for b in both if not b["beyond_noise"]]

    def budgets_text(rows: Sequence[Mapping[str, Any]]) -> str:
        return ", ".join(f"<= {b['budget']:,}" for b in rows) or "no budget"

    question = "Where do Kronecker nets beat dense nets with no more weights?"
    if not both:
        return _finding("kron-vs-dense", question, None, "Not tested: needs both kinds.", [])
    answer = (
        f"Kronecker wins at weight budgets {budgets_text(wins)}; dense wins at "
        f"{budgets_text(losses)}; within seed noise at {budgets_text(ties)}."
    )
    evidence = [
        f"<= {b['budget']:,}: {b['best_kron']} vs {b['best_dense']} {b['kron_minus_dense']:+.2f} pp"
        for b in both
    ]
    return _finding("kron-vs-dense", question, bool(wins), answer, evidence)


def _kron_vs_lowrank(variants: Sequence[Variant]) -> dict[str, Any]:
    """Each low-rank config against the best Kronecker config with no more weights."""
    question = "Do Kronecker nets beat low-rank (U V^T) nets with no more weights?"
    lowrank = [v for v in variants if v["point"]["kind"] == "lowrank"]
    pairs: list[tuple[Variant, Variant]] = []
    for low in sorted(lowrank, key=lambda v: v["weights"]):
        kron = _best(
            v for v in variants if v["point"]["kind"] == "kron" and v["weights"] <= low["weights"]
        )
        if kron is not None:
            pairs.append((kron, low))
    if not pairs:
        return _finding("kron-vs-lowrank", question, None, "Not tested: needs both kinds.", [])
    wins = [(k, lo) for k, lo in pairs if compare(k, lo).beyond_noise and compare(k, lo).diff > 0]
    answer = (
        f"Kronecker wins beyond seed noise against {len(wins)} of {len(pairs)} low-rank "
        "configs, each against the best Kronecker config with no more weights."
    )
    return _finding(
        "kron-vs-lowrank",
        question,
        len(wins) == len(pairs),
        answer,
        [_short(k, lo) for k, lo in pairs],
    )


def _pays_off(
    ident: str,
    question: str,
    variants: Sequence[Variant],
    front: set[str],
    is_option: Callable[[Mapping[str, Any]], bool],
    baseline_of: Callable[[Mapping[str, Any]], Mapping[str, Any] | None],
) -> dict[str, Any]:
    """Does the option (``is_option(point)``) reach the front? With paired comparisons.

    ``baseline_of(point)`` gives the point facts the option is compared against (e.g. the
    same config with two factors), or None.
    """
    options = [v for v in variants if is_option(v["point"])]
    if not options:
        return _finding(ident, question, None, "Not tested: no such config was run.", [])
    on_front = [v["name"] for v in options if v["name"] in front]
    by_point = {_key(v["point"]): v for v in variants}
    pairs = []
    for v in options:
        base = baseline_of(v["point"])
        other = by_point.get(_key(base)) if base is not None else None
        if other is not None:
            pairs.append(_short(v, other))
    answer = (
        f"Yes: {len(on_front)} of {len(options)} such configs are on the Pareto front "
        f"({', '.join(on_front)})."
        if on_front
        else f"No: none of the {len(options)} such configs is on the Pareto front."
    )
    return _finding(ident, question, bool(on_front), answer, pairs)


def _key(point: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(point.get(k) for k in ("kind", "factors", "rank", "tied", "output", "width"))


def _with(point: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    return {**point, **changes}


def frontier_findings(summary: Summary) -> list[dict[str, Any]]:
    """The frontier's questions answered from ``summary`` (variants with points)."""
    variants = summary["variants"]
    front = set(summary["pareto"])
    kron = [v for v in variants if v["point"]["kind"] == "kron"]
    min_rank: dict[str, int] = {}
    for v in kron:
        series = v["point"]["series"]
        min_rank[series] = min(min_rank.get(series, v["point"]["rank"]), v["point"]["rank"])
    return [
        _kron_vs_dense(summary["budgets"]),
        _kron_vs_lowrank(variants),
        _pays_off(
            "more-factors",
            "Do more factors (k = 3, 4) pay off?",
            variants,
            front,
            lambda p: p["kind"] == "kron" and p["factors"] > 2,
            lambda p: _with(p, factors=2),
        ),
        _pays_off(
            "higher-rank",
            "Does a Kronecker rank above the lowest run pay off?",
            variants,
            front,
            lambda p: p["kind"] == "kron" and p["rank"] > min_rank[p["series"]],
            lambda p: _with(p, rank=min_rank[p["series"]]),
        ),
        _pays_off(
            "tying",
            "Does tying the factors (U (x) U) pay off?",
            variants,
            front,
            lambda p: p["kind"] == "kron" and bool(p["tied"]),
            lambda p: _with(p, tied=False),
        ),
        _pays_off(
            "kron-output",
            "Does a Kronecker hidden-output layer (5x25 (x) 2x25) pay off?",
            variants,
            front,
            lambda p: p["kind"] == "kron" and p["output"] == "kron",
            lambda p: _with(p, output="dense"),
        ),
    ]


# --- the summary -------------------------------------------------------------------------


def frontier_summary(
    records: Iterable[Record], *, generated_at: str | None = None
) -> dict[str, Any]:
    """The sweep summary: :func:`summarize`'s statistics plus points, front, budgets and
    the frontier findings (which replace the seed's claims)."""
    records = list(records)
    summary = summarize(records, generated_at=generated_at)
    spec_of: dict[str, Record] = {}
    for r in sorted(records, key=lambda r: (str(r["variant"]), int(r["seed"]))):
        spec_of.setdefault(str(r["variant"]), r)
    for v in summary["variants"]:
        v["point"] = point_of(spec_of[v["name"]])
    variants = summary["variants"]
    summary["kind"] = "frontier"
    summary["pareto"] = pareto_front(
        (v["name"], v["weights"], v["test_accuracy"]["mean"]) for v in variants
    )
    summary["budgets"] = _budget_rows(variants)
    summary["pays_off_criterion"] = _PAYS_OFF
    summary["noise_criterion"] = f"|diff| > {NOISE_FACTOR:g} x pooled sample std over seeds"
    summary["findings"] = frontier_findings(summary)
    return summary


# --- markdown ----------------------------------------------------------------------------


def _answer_word(holds: bool | None) -> str:
    return {True: "yes", False: "no", None: "not tested"}[holds]


def _pm(stats: Mapping[str, float]) -> str:
    return f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _seeds_epochs(variants: Sequence[Variant]) -> str:
    seeds = sorted({len(v["seeds"]) for v in variants})
    epochs = sorted({int(v["epochs"]) for v in variants})

    def span(values: Sequence[int]) -> str:
        return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"

    return f"{span(seeds)} seed(s) x {span(epochs)} epoch(s)"


def _config_cell(v: Variant) -> str:
    seed = v["point"]["seed_variant"]
    return f"`{v['name']}`" + (f" (= {seed})" if seed else "")


def _budget_table(summary: Summary) -> list[str]:
    by_name = {v["name"]: v for v in summary["variants"]}

    def cell(name: str | None) -> str:
        if name is None:
            return "—"
        v = by_name[name]
        return f"`{name}` {v['test_accuracy']['mean']:.2f} ({v['weights']:,})"

    lines = [
        "| weights ≤ | best config, accuracy % (weights) | best dense | best Kronecker "
        "| Kronecker − dense (pp) |",
        "|---:|---|---|---|---:|",
    ]
    for b in summary["budgets"]:
        diff = "—"
        if b["kron_minus_dense"] is not None:
            mark = "" if b["beyond_noise"] else " (within noise)"
            diff = f"{b['kron_minus_dense']:+.2f}{mark}"
        cells = [f"{b['budget']:,}", cell(b["best"]), cell(b["best_dense"])]
        cells += [cell(b["best_kron"]), diff]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _config_table(variants: Sequence[Variant], front: set[str], reference: str | None) -> list[str]:
    lines = [
        "| config | series | weights | FLOPs/sample | compression vs "
        f"{reference or 'dense'} | test accuracy % (mean ± std) | min–max | front |",
        "|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for v in sorted(variants, key=lambda v: (v["point"]["series"], v["weights"], v["name"])):
        acc = v["test_accuracy"]
        compression = "—" if v["compression"] is None else f"{v['compression']:,.1f}x"
        cells = [
            _config_cell(v),
            v["point"]["series"],
            f"{v['weights']:,}",
            f"{v['point']['flops']:,}",
            compression,
            _pm(acc),
            f"{acc['min']:.2f}–{acc['max']:.2f}",
            "●" if v["name"] in front else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def frontier_markdown(summary: Summary) -> str:
    """``frontier.md``: setup, figure, findings, budgets, front, every config, warnings."""
    variants = summary["variants"]
    by_name = {v["name"]: v for v in variants}
    env = summary["environment"]
    lines = [
        "# The accuracy-vs-size frontier: Kronecker and dense MLPs on MNIST (784 -> h -> 10)",
        "",
        f"{len(variants)} configs, {_seeds_epochs(variants)}, {summary['runs']} runs; "
        f"torch {', '.join(map(str, env.get('torch', []))) or 'unknown'}; machine "
        f"{', '.join(map(str, env.get('processor', []))) or 'unknown'}. Accuracy is the final "
        "test accuracy, mean ± sample std over seeds; weights exclude biases.",
        "",
        f"![accuracy against weights]({FRONTIER_PNG})",
        "",
        "## Findings",
        "",
        f"Criteria: {summary['pays_off_criterion']}; a difference is beyond seed noise "
        f"when {summary['noise_criterion']}.",
        "",
    ]
    for i, f in enumerate(summary["findings"], 1):
        lines.append(f"{i}. **{f['question']}** {f['answer']}")
        items = f.get("evidence_items") or [f["evidence"]]
        # Folded: the paired comparisons are long, the answers are what most readers need.
        lines += ["", "   <details><summary>Evidence</summary>", ""]
        lines += [f"   - {item}" for item in items]
        lines += ["", "   </details>", ""]
    lines += ["", "## Best accuracy at each weight budget", "", *_budget_table(summary), ""]
    lines += ["## Pareto front", "", "| config | weights | test accuracy % |", "|---|---:|---:|"]
    for name in summary["pareto"]:
        v = by_name[name]
        lines.append(f"| {_config_cell(v)} | {v['weights']:,} | {_pm(v['test_accuracy'])} |")
    lines += ["", "## Every config", ""]
    lines += _config_table(variants, set(summary["pareto"]), summary["compression_reference"])
    lines.append("")
    if summary.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in summary["warnings"]], ""]
    wall = float(summary["wall_seconds"])
    lines.append(f"Training time: {format_duration(wall)} summed over {summary['runs']} runs.")
    return "\n".join(lines) + "\n"


def frontier_text(summary: Summary) -> str:
    """A console digest: the front and the findings."""
    by_name = {v["name"]: v for v in summary["variants"]}
    lines = ["Pareto front (weights, mean test accuracy %):"]
    for name in summary["pareto"]:
        v = by_name[name]
        lines.append(f"  {name:<32} {v['weights']:>9,}  {v['test_accuracy']['mean']:6.2f}")
    lines += [
        f"[{_answer_word(f['holds'])}] {f['question']} {f['answer']}" for f in summary["findings"]
    ]
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


# --- the plot ----------------------------------------------------------------------------


def _series_order(variants: Sequence[Variant]) -> list[str]:
    names = {v["point"]["series"] for v in variants}
    return sorted(names, key=lambda s: (s != DENSE_SERIES, s))


def _zoom_floor(variants: Sequence[Variant]) -> float:
    best = max(v["test_accuracy"]["mean"] for v in variants)
    worst = min(v["test_accuracy"]["mean"] for v in variants)
    return float(max(worst - 0.5, math.floor(best - 4.0)))


def _draw(
    ax: Any, variants: Sequence[Variant], front: Sequence[str], *, label: Callable[[float], bool]
) -> None:
    """Series, dense curve and front on ``ax``; seed variants whose accuracy passes
    ``label`` get their name written beside them."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    kron_series = [s for s in _series_order(variants) if s != DENSE_SERIES]
    for series in _series_order(variants):
        members = sorted(
            (v for v in variants if v["point"]["series"] == series), key=lambda v: v["weights"]
        )
        dense = series == DENSE_SERIES
        colour = "black" if dense else cmap(kron_series.index(series) % cmap.N)
        ax.errorbar(
            [v["weights"] for v in members],
            [v["test_accuracy"]["mean"] for v in members],
            yerr=[v["test_accuracy"]["std"] for v in members],
            color=colour,
            marker="s" if dense else "o",
            markersize=4,
            linewidth=1.8 if dense else 1.2,
            linestyle="-" if dense else ("--" if members[0]["point"]["tied"] else "-"),
            capsize=2,
            label="dense 784-h-10 (width h)" if dense else series,
        )
    by_name = {v["name"]: v for v in variants}
    points = [by_name[n] for n in front]
    ax.step(
        [v["weights"] for v in points],
        [v["test_accuracy"]["mean"] for v in points],
        where="post",
        color="grey",
        linewidth=3,
        alpha=0.35,
        label="Pareto front (mean)",
        zorder=0,
    )
    for v in variants:
        seed = v["point"]["seed_variant"]
        if seed and label(v["test_accuracy"]["mean"]):
            ax.annotate(
                seed,
                (v["weights"], v["test_accuracy"]["mean"]),
                xytext=(6, -10),
                textcoords="offset points",
                fontsize=7,
                arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.6},
            )
    ax.set_xscale("log")
    ax.set_xlabel("weights (log scale, biases excluded)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)


def plot_frontier(summary: Summary) -> bytes:
    """``frontier.png`` as bytes: the full range on the left, the top zoomed on the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = summary["variants"]
    if not variants:
        raise UserError("The sweep summary has no config: nothing to plot.")
    fig = Figure(figsize=(15.0, 6.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    full, zoom = fig.subplots(1, 2)
    floor = _zoom_floor(variants)
    # Each seed variant is labelled once: in the zoom, or on the left when below it.
    _draw(full, variants, summary["pareto"], label=lambda acc: acc < floor)
    _draw(zoom, variants, summary["pareto"], label=lambda acc: acc >= floor)
    full.set_title("all configs")
    best = max(v["test_accuracy"]["mean"] for v in variants)
    zoom.set_ylim(floor, min(100.0, best) + 0.3)
    zoom.set_title(f"zoom on accuracy >= {floor:g}%")
    fig.suptitle(
        f"MNIST: final test accuracy (mean ± 1 std over seeds) against weights, "
        f"{_seeds_epochs(variants)}; the seed's variants labelled"
    )
    handles, labels = full.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    from torchkron.experiments.mnist.plots import png_bytes

    return png_bytes(fig, DPI)


# --- files -------------------------------------------------------------------------------


def write_frontier(out_dir: Path, *, plots: bool = True) -> SummaryFiles:
    """Write ``summary.json``, ``frontier.md`` and (unless ``plots=False``) ``frontier.png``."""
    summary = frontier_summary(load_complete_runs(out_dir, "sweep"))
    summary_path = save_summary(out_dir, summary)
    markdown = out_dir / FRONTIER_MD
    atomic_write_text(markdown, frontier_markdown(summary))
    plot = None
    if plots:
        plot = out_dir / FRONTIER_PNG
        atomic_write_bytes(plot, plot_frontier(summary))
    return SummaryFiles(summary_path, markdown, plot, summary)
