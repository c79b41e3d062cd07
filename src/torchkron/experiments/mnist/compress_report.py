"""Compress run records -> ``compress.json``, ``compress.md`` and ``compress.png``.

Pure functions of ``OUT/runs/*.json``. Per-config statistics over seeds come from
:func:`torchkron.experiments.mnist.summary.summarize`; each fine-tune record's
``extra.compress`` adds the approximation errors and the accuracy of the dense and the
just-converted net. One row per (factors, layers, rank) compares, at equal weights:

- (a) converted only: the dense model's weights projected onto Kronecker factors;
- (b) converted + fine-tuned for the fine-tune recipe's epochs;
- (c) the same architecture trained from scratch on the full recipe.

Fine-tune runs of another setting (``compress --calibration N`` and/or ``--distill``; their
block holds ``calibration`` / ``distill``) go to each row's ``settings``, with the held
output errors of the plain and their own conversion, and get a section of their own:
does activation-aware conversion lower the output error and raise the accuracy, does
distillation beat label fine-tuning, does any converted arm beat training from scratch.

Differences use the seed-noise criterion of :mod:`torchkron.experiments.mnist.findings`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from torchkron.experiments.common.runs import load_complete_runs
from torchkron.experiments.mnist.findings import ACCURACY_TOLERANCE_PP, NOISE_FACTOR, compare
from torchkron.experiments.mnist.report import SummaryFiles
from torchkron.experiments.mnist.summary import summarize

__all__ = [
    "COMPRESS_JSON",
    "COMPRESS_MD",
    "COMPRESS_PNG",
    "compress_markdown",
    "compress_summary",
    "compress_text",
    "plot_compress",
    "write_compress_report",
]

COMPRESS_JSON = "compress.json"
COMPRESS_MD = "compress.md"
COMPRESS_PNG = "compress.png"
DPI = 150

Record = Mapping[str, Any]
Summary = Mapping[str, Any]
Row = Mapping[str, Any]
_ARMS = ("finetune", "scratch")


def _block(record: Record) -> Mapping[str, Any]:
    block = (record.get("extra") or {}).get("compress")
    return block if isinstance(block, Mapping) else {}


def _group(block: Mapping[str, Any]) -> tuple[int, str]:
    layers = list(block.get("layers") or [])
    tag = "all" if sorted(layers) == ["hidden", "output"] else "-".join(layers)
    return int(block.get("factors", 0)), tag


def setting_key(block: Mapping[str, Any]) -> tuple[int, float, float]:
    """``(calibration images or 0, distillation temperature or 0, label share)`` of a
    fine-tune run; ``(0, 0, 0)`` is the default arm (plain conversion, labels)."""
    distill = block.get("distill") or {}
    return (
        int(block.get("calibration") or 0),
        float(distill.get("temperature") or 0.0),
        float(distill.get("alpha") or 0.0),
    )


def setting_label(key: Sequence[float]) -> str:
    """``plain + labels``, ``activation-aware (N=1024) + distillation (T=4)``..."""
    calibration, temperature, alpha = key
    conversion = f"activation-aware (N={int(calibration)})" if calibration else "plain"
    if not temperature:
        return f"{conversion} + labels"
    share = f", labels {alpha:g}" if alpha else ""
    return f"{conversion} + distillation (T={temperature:g}{share})"


def _arm(variant: Mapping[str, Any] | None, lr_epochs: Mapping[str, Any]) -> dict[str, Any] | None:
    if variant is None:
        return None
    return {
        "name": variant["name"],
        "test_accuracy": dict(variant["test_accuracy"]),
        "test_loss": dict(variant["test_loss"]),
        "seeds": len(variant["seeds"]),
        "epochs": int(variant["epochs"]),
        "lr": variant["config"].get("lr"),
        **lr_epochs,
    }


def _setting_entry(
    block: Mapping[str, Any], variant: Mapping[str, Any], key: tuple[int, float, float]
) -> dict[str, Any]:
    return {
        "key": list(key),
        "label": setting_label(key),
        "arm": _arm(variant, {}),
        "converted": dict(block.get("converted") or {}),
        "output_error": dict(block.get("output_error") or {}),
        "plain_output_error": dict(block.get("plain_output_error") or {}),
        "plain_converted": dict(block.get("plain_converted") or {}),
        "minus_scratch": None,
        "beyond_noise": None,
    }


def _rows(
    records: Sequence[Record], variants: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per (factors, layers, rank) that has a fine-tune or a scratch run."""
    by_key: dict[tuple[int, str, int], dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: (str(r["variant"]), int(r["seed"]))):
        block = _block(record)
        if block.get("arm") not in ("finetune", "scratch") or record["variant"] not in variants:
            continue
        key = (*_group(block), int(block["rank"]))
        row = by_key.setdefault(
            key,
            {
                "factors": key[0],
                "layers": key[1],
                "rank": key[2],
                "weights": int(record["weights"]),
                "source": dict(block.get("source") or {}),
                "conversion": None,
                "finetune": None,
                "scratch": None,
            },
        )
        variant = variants[str(record["variant"])]
        setting = setting_key(block)
        if block["arm"] == "finetune" and any(setting):
            found = row.setdefault("settings", {})
            label = setting_label(setting)
            if label not in found:
                found[label] = _setting_entry(block, variant, setting)
        elif (
            block["arm"] == "finetune"
            and row["finetune"] is None
            # The conversion of a run the summary kept (left-out runs may differ).
            and int(record["seed"]) in variant["seeds"]
        ):
            row["finetune"] = _arm(variant, {})
            row["conversion"] = {
                k: block.get(k)
                for k in ("approximation_error", "shapes", "skipped", "dense", "converted")
            }
        elif block["arm"] == "scratch" and row["scratch"] is None:
            names = [r for r in records if r["variant"] == record["variant"]]
            reused = sum(1 for r in names if _block(r).get("reused_from"))
            row["scratch"] = _arm(variant, {"reused": reused})
    rows = [by_key[k] for k in sorted(by_key)]
    for row in rows:
        source_weights = row["source"].get("weights")
        row["compression"] = source_weights / row["weights"] if source_weights else None
        row["finetune_minus_scratch"] = row["beyond_noise"] = None
        if row["finetune"] and row["scratch"]:
            c = compare(variants[row["finetune"]["name"]], variants[row["scratch"]["name"]])
            row["finetune_minus_scratch"], row["beyond_noise"] = c.diff, c.beyond_noise
        if "settings" in row:
            _compare_settings(row, variants)
    return rows


def _compare_settings(row: dict[str, Any], variants: Mapping[str, Mapping[str, Any]]) -> None:
    """Order a row's settings and compare each with scratch, with the same fine-tune after
    the plain conversion (``vs_plain``) and with label fine-tuning after the same
    conversion (``vs_labels``)."""
    ordered = sorted(row["settings"].values(), key=lambda e: e["key"])
    row["settings"] = {e["label"]: e for e in ordered}
    names = {tuple(e["key"]): e["arm"]["name"] for e in ordered}
    plain = next((e["plain_converted"] for e in ordered if e["plain_converted"]), None)
    if row["finetune"] and (
        # A default arm converted by another library version (another plain start than
        # these runs measured) is no counterpart: the comparison would show that drift.
        plain is None
        or plain == {k: row["conversion"]["converted"][k] for k in ("test_loss", "test_accuracy")}
    ):
        names[(0, 0.0, 0.0)] = row["finetune"]["name"]

    def versus(name: str, other: str | None) -> dict[str, Any] | None:
        if other is None:
            return None
        c = compare(variants[name], variants[other])
        return {"diff": c.diff, "beyond_noise": c.beyond_noise, "measured": c.noise_measured}

    for entry in ordered:
        calibration, temperature, alpha = entry["key"]
        name = entry["arm"]["name"]
        scratch = versus(name, row["scratch"]["name"] if row["scratch"] else None)
        entry["vs_scratch"] = scratch
        if scratch:
            entry["minus_scratch"], entry["beyond_noise"] = scratch["diff"], scratch["beyond_noise"]
        plain = names.get((0, temperature, alpha)) if calibration else None
        labels = names.get((calibration, 0.0, 0.0)) if temperature else None
        entry["vs_plain"], entry["vs_labels"] = versus(name, plain), versus(name, labels)


# --- findings --------------------------------------------------------------------------


def _ranks(rows: Iterable[Row]) -> str:
    return ", ".join(str(r["rank"]) for r in rows) or "none"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _finding(ident: str, question: str, holds: bool | None, answer: str) -> dict[str, Any]:
    return {
        "id": ident,
        "question": question,
        "claim": f"{question} {answer}",
        "holds": holds,
        "answer": answer,
    }


def _vs_scratch(rows: Sequence[Row]) -> dict[str, Any]:
    question = "Does converting + fine-tuning beat training the same net from scratch?"
    both = [r for r in rows if r["finetune_minus_scratch"] is not None]
    if not both:
        return _finding("finetune-vs-scratch", question, None, "Not tested: needs both arms.")
    wins = [r for r in both if r["beyond_noise"] and r["finetune_minus_scratch"] > 0]
    losses = [r for r in both if r["beyond_noise"] and r["finetune_minus_scratch"] < 0]
    ties = [r for r in both if not r["beyond_noise"]]
    first = both[0]
    source_epochs = first["source"].get("epochs")
    spent = (
        f"{source_epochs} dense + {first['finetune']['epochs']} fine-tune epochs"
        if source_epochs
        else f"{first['finetune']['epochs']} fine-tune epochs after the dense training"
    )
    outcomes = [
        f"{label} at {'every rank run' if len(group) == len(both) else 'ranks ' + _ranks(group)}"
        for label, group in (
            ("fine-tuned wins", wins),
            ("scratch wins", losses),
            ("within seed noise", ties),
        )
        if group
    ]
    answer = (
        f"{_sentence('; '.join(outcomes))} (fine-tuned: {spent}; scratch: "
        f"{first['scratch']['epochs']} epochs)."
    )
    return _finding("finetune-vs-scratch", question, bool(wins) and not losses, answer)


def _recovers(rows: Sequence[Row], ident: str, question: str, accuracy: Any) -> dict[str, Any]:
    """From which rank ``accuracy(row)`` is within the tolerance of the dense accuracy."""
    usable = [r for r in rows if r["conversion"] and accuracy(r) is not None]
    if not usable:
        return _finding(ident, question, None, "Not tested: no fine-tune run.")
    dense = float(usable[0]["conversion"]["dense"]["test_accuracy"])
    close = [r for r in usable if accuracy(r) >= dense - ACCURACY_TOLERANCE_PP]
    span = (
        f"{accuracy(usable[0]):.2f}% at rank {usable[0]['rank']} to "
        f"{accuracy(usable[-1]):.2f}% at rank {usable[-1]['rank']}, dense {dense:.2f}%"
    )
    if not close:
        answer = f"At no rank run ({span})."
    else:
        answer = f"Yes, at ranks {_ranks(close)} ({span})."
    return _finding(ident, question, bool(close), answer)


def compress_findings(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The report's questions, answered per group of rows (first group's rows)."""
    tol = f"within {ACCURACY_TOLERANCE_PP:g} pp of the dense model"
    return [
        _vs_scratch(rows),
        _recovers(
            rows,
            "conversion-alone",
            f"Does conversion alone keep the accuracy {tol}?",
            lambda r: r["conversion"]["converted"]["test_accuracy"],
        ),
        _recovers(
            rows,
            "finetune-recovers",
            f"Does fine-tuning bring the converted net {tol}?",
            lambda r: r["finetune"]["test_accuracy"]["mean"] if r["finetune"] else None,
        ),
    ]


def _plain_errors(row: Row) -> dict[str, float]:
    for entry in row.get("settings", {}).values():
        if entry["plain_output_error"]:
            return dict(entry["plain_output_error"])
    return {}


def _aware(row: Row) -> dict[str, Any] | None:
    """The row's first activation-aware setting (its conversion is that of every
    activation-aware setting of the same ``N``)."""
    return next((e for e in row.get("settings", {}).values() if e["key"][0]), None)


def _fmt_errors(errors: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in errors.items())


def _aware_error(rows: Sequence[Row]) -> dict[str, Any]:
    question = (
        "Does activation-aware conversion lower the output error of the converted layers "
        "on held data?"
    )
    pairs: list[tuple[Row, dict[str, Any]]] = []
    for r in rows:
        e = _aware(r)
        if e is not None and e["output_error"] and _plain_errors(r):
            pairs.append((r, e))
    if not pairs:
        return _finding("aware-output-error", question, None, "Not tested: no run with both.")
    lower = [
        r for r, e in pairs if all(e["output_error"][k] < v for k, v in _plain_errors(r).items())
    ]
    (r0, e0), (r1, e1) = pairs[0], pairs[-1]
    span = (
        f"plain {_fmt_errors(_plain_errors(r0))} vs activation-aware "
        f"{_fmt_errors(e0['output_error'])} at rank {r0['rank']}; plain "
        f"{_fmt_errors(_plain_errors(r1))} vs {_fmt_errors(e1['output_error'])} at rank "
        f"{r1['rank']}"
    )
    if len(lower) == len(pairs):
        answer = f"Yes, at every rank run ({span})."
    elif lower:
        answer = f"At ranks {_ranks(lower)} only ({span})."
    else:
        answer = f"No, at no rank run ({span})."
    return _finding("aware-output-error", question, len(lower) == len(pairs), answer)


def _plain_converted(row: Row) -> float | None:
    """The plain conversion's accuracy as the runs of the settings measured it (they run
    the current code; the default arm's record may be older), else the default arm's."""
    settings = list(row.get("settings", {}).values())
    for entry in settings:
        if entry["plain_converted"]:
            return float(entry["plain_converted"]["test_accuracy"])
    for entry in settings:
        if not entry["key"][0] and entry["converted"]:
            return float(entry["converted"]["test_accuracy"])
    if row["conversion"]:
        return float(row["conversion"]["converted"]["test_accuracy"])
    return None


def _aware_accuracy(rows: Sequence[Row]) -> dict[str, Any]:
    question = "Does activation-aware conversion raise the accuracy right after conversion?"
    pairs: list[tuple[Row, float, float]] = []
    for r in rows:
        e, plain = _aware(r), _plain_converted(r)
        if e and e["converted"] and plain is not None:
            pairs.append((r, plain, float(e["converted"]["test_accuracy"])))
    if not pairs:
        return _finding("aware-converted", question, None, "Not tested: no run with both.")
    higher = [r for r, p, a in pairs if a > p]
    lower = [r for r, p, a in pairs if a < p]
    equal = [r for r, p, a in pairs if a == p]
    span = "; ".join(f"rank {r['rank']}: {p:.2f}% -> {a:.2f}%" for r, p, a in pairs)
    if len(higher) == len(pairs):
        answer = f"Yes, at every rank run (plain -> activation-aware: {span})."
    else:
        parts = [
            f"{word} at ranks {_ranks(group)}"
            for word, group in (("higher", higher), ("lower", lower), ("equal", equal))
            if group
        ]
        answer = f"{_sentence('; '.join(parts))} (plain -> activation-aware: {span})."
    return _finding("aware-converted", question, len(higher) == len(pairs), answer)


def _tally(
    pairs: Sequence[tuple[Row, Mapping[str, Any]]], mine: str, theirs: str
) -> tuple[str, bool, bool]:
    """``(sentence, any win, any loss)`` of ``mine`` against ``theirs`` over ranks."""
    wins = [r for r, c in pairs if c["beyond_noise"] and c["diff"] > 0]
    losses = [r for r, c in pairs if c["beyond_noise"] and c["diff"] < 0]
    ties = [r for r, c in pairs if not c["beyond_noise"]]
    every = len(pairs)
    parts = [
        f"{label} at {'every rank run' if len(group) == every else 'ranks ' + _ranks(group)}"
        for label, group in (
            (f"{mine} higher", wins),
            (f"{theirs} higher", losses),
            ("within seed noise", ties),
        )
        if group
    ]
    diffs = [c["diff"] for _, c in pairs]
    unmeasured = [r for r, c in pairs if not c["measured"]]
    note = (
        f"; one seed each at ranks {_ranks(unmeasured)}: noise not measured there"
        if unmeasured
        else ""
    )
    text = (
        f"{_sentence(mine)} vs {theirs}: {'; '.join(parts)} (difference {min(diffs):+.2f} to "
        f"{max(diffs):+.2f} pp{note})"
    )
    return text, bool(wins), bool(losses)


def _versus(
    rows: Sequence[Row], ident: str, question: str, field: str, other: Any
) -> dict[str, Any]:
    """Each setting against its counterpart ``field`` (``vs_plain`` / ``vs_labels`` /
    ``vs_scratch``), per setting; holds when some setting wins somewhere and none loses."""
    labels = sorted(
        {
            (tuple(e["key"]), lbl)
            for r in rows
            for lbl, e in r.get("settings", {}).items()
            if e[field]
        }
    )
    texts, wins, losses = [], False, False
    for key, label in labels:
        pairs = [
            (r, r["settings"][label][field])
            for r in rows
            if label in r.get("settings", {}) and r["settings"][label][field]
        ]
        text, won, lost = _tally(pairs, label, other(key))
        texts.append(text)
        wins, losses = wins or won, losses or lost
    if not texts:
        return _finding(ident, question, None, "Not tested: no pair of arms run.")
    return _finding(ident, question, wins and not losses, "; ".join(texts) + ".")


def _any_beats_scratch(rows: Sequence[Row]) -> dict[str, Any]:
    question = "Does any converted arm beat training the same net from scratch?"
    arms: list[tuple[str, list[tuple[Row, dict[str, Any]]]]] = []
    default = [
        (
            r,
            {
                "diff": r["finetune_minus_scratch"],
                "beyond_noise": r["beyond_noise"],
                "measured": r["finetune"]["seeds"] + r["scratch"]["seeds"] > 2,
            },
        )
        for r in rows
        if r["finetune_minus_scratch"] is not None
    ]
    if default:
        arms.append((setting_label((0, 0.0, 0.0)), default))
    labels = sorted(
        {
            (tuple(e["key"]), lbl)
            for r in rows
            for lbl, e in r.get("settings", {}).items()
            if e["vs_scratch"]
        }
    )
    for _, label in labels:
        arms.append(
            (
                label,
                [
                    (r, r["settings"][label]["vs_scratch"])
                    for r in rows
                    if label in r.get("settings", {}) and r["settings"][label]["vs_scratch"]
                ],
            )
        )
    if not arms:
        return _finding("any-vs-scratch", question, None, "Not tested: needs both arms.")
    texts, winners = [], []
    for label, pairs in arms:
        text, won, _ = _tally(pairs, label, "scratch")
        texts.append(text)
        if won:
            winners.append(label)
    head = f"Yes: {', '.join(winners)}" if winners else "No"
    return _finding("any-vs-scratch", question, bool(winners), f"{head}. " + "; ".join(texts) + ".")


def setting_findings(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The questions of the activation-aware / distillation section (empty without it)."""
    if not any(r.get("settings") for r in rows):
        return []

    def plain_of(key: tuple[int, float, float]) -> str:
        return setting_label((0, key[1], key[2]))

    def labels_of(key: tuple[int, float, float]) -> str:
        return setting_label((key[0], 0.0, 0.0))

    return [
        _aware_error(rows),
        _aware_accuracy(rows),
        _versus(
            rows,
            "aware-finetuned",
            "After the same fine-tuning, does the activation-aware start end higher?",
            "vs_plain",
            plain_of,
        ),
        _versus(
            rows,
            "distill-vs-labels",
            "Does distillation beat label fine-tuning after the same conversion?",
            "vs_labels",
            labels_of,
        ),
        _any_beats_scratch(rows),
    ]


# --- the summary ----------------------------------------------------------------------------


def compress_summary(
    records: Iterable[Record], *, generated_at: str | None = None
) -> dict[str, Any]:
    """``compress.json``: the per-config summary, the rows and the findings per group."""
    records = list(records)

    # Each arm (and each fine-tune setting) on its own: they use different recipes by
    # design, and a config warning should flag only runs that differ within one of them.
    def arm_key(record: Record) -> tuple[int, tuple[int, float, float]]:
        block = _block(record)
        finetune = block.get("arm") == "finetune"
        return (0 if finetune else 1, setting_key(block) if finetune else (0, 0.0, 0.0))

    keys = sorted({arm_key(r) for r in records if _block(r).get("arm") in _ARMS}) or [
        (0, (0, 0.0, 0.0))
    ]
    arms = [
        summarize([r for r in records if arm_key(r) == key], generated_at=generated_at)
        for key in keys
    ]
    variants = {v["name"]: v for s in arms for v in s["variants"]}
    rows = _rows(records, variants)
    groups = sorted({(r["factors"], r["layers"]) for r in rows})
    return {
        "schema": 1,
        "kind": "compress",
        "generated_at": max(str(s["generated_at"]) for s in arms),
        "runs": sum(int(s["runs"]) for s in arms),
        "environment": {
            k: sorted({x for s in arms for x in s["environment"][k]}, key=str)
            for k in arms[0]["environment"]
        },
        "noise_criterion": f"|diff| > {NOISE_FACTOR:g} x pooled sample std over seeds",
        "groups": [
            {
                "factors": factors,
                "layers": layers,
                "rows": [r for r in rows if (r["factors"], r["layers"]) == (factors, layers)],
                "findings": compress_findings(
                    [r for r in rows if (r["factors"], r["layers"]) == (factors, layers)]
                ),
                "setting_findings": setting_findings(
                    [r for r in rows if (r["factors"], r["layers"]) == (factors, layers)]
                ),
            }
            for factors, layers in groups
        ],
        "variants": [v for s in arms for v in s["variants"]],
        "warnings": [w for s in arms for w in s["warnings"]],
        "wall_seconds": sum(float(s["wall_seconds"]) for s in arms),
    }


# --- markdown -------------------------------------------------------------------------------


def _pm(arm: Mapping[str, Any] | None) -> str:
    if arm is None:
        return "—"
    acc = arm["test_accuracy"]
    if arm["seeds"] == 1:
        return f"{acc['mean']:.2f}"
    return f"{acc['mean']:.2f} ± {acc['std']:.2f} (n={arm['seeds']})"


def _errors(row: Row) -> str:
    conv = row["conversion"]
    if not conv:
        return "—"
    parts = [f"{k} {v:.4f}" for k, v in (conv["approximation_error"] or {}).items()]
    parts += [f"{k} dense" for k in conv.get("skipped") or {}]
    return ", ".join(parts)


def _epochs_line(rows: Sequence[Row]) -> str:
    source = rows[0]["source"]
    s = source.get("epochs")
    dense = f"{s}" if s else "unknown"
    ft = next((r["finetune"] for r in rows if r["finetune"]), None)
    sc = next((r["scratch"] for r in rows if r["scratch"]), None)
    parts = [f"(a) converted only: the dense model's {dense} epochs, no more"]
    if ft:
        parts.append(f"(b) {dense} dense + {ft['epochs']} fine-tune epochs at lr {ft['lr']:g}")
    if sc:
        parts.append(f"(c) {sc['epochs']} epochs from scratch at lr {sc['lr']:g}")
    return "Epochs per arm: " + "; ".join(parts) + "."


def _epochs_headers(rows: Sequence[Row]) -> tuple[str, str, str]:
    """``(S ep)``, ``(S+E ep)``, ``(C ep)``: the epochs behind each arm's column."""
    s = rows[0]["source"].get("epochs") or "?"
    ft = next((r["finetune"]["epochs"] for r in rows if r["finetune"]), None)
    sc = next((r["scratch"]["epochs"] for r in rows if r["scratch"]), None)
    return (
        f"({s} ep)",
        f"({s}+{ft} ep)" if ft is not None else "",
        f"({sc} ep)" if sc is not None else "",
    )


def _group_lines(group: Mapping[str, Any]) -> list[str]:
    rows = group["rows"]
    source = rows[0]["source"]
    dense_acc = next(
        (r["conversion"]["dense"]["test_accuracy"] for r in rows if r["conversion"]), None
    )
    dense = "" if dense_acc is None else f", test accuracy {dense_acc:.2f}%"
    a, b, c = _epochs_headers(rows)
    lines = [
        f"## {group['factors']} factors, layers converted: {group['layers']}",
        "",
        f"Source: `{source.get('checkpoint', '?')}` ({source.get('variant', '?')}, "
        f"{source.get('weights', 0):,} weights{dense}). {_epochs_line(rows)}",
        "",
        f"| rank | weights | compression | approximation error | (a) converted % {a} "
        f"| (b) fine-tuned % {b} | (c) scratch % {c} | (b) − (c) pp |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        conv = r["conversion"]
        converted = f"{conv['converted']['test_accuracy']:.2f}" if conv else "—"
        diff = "—"
        if r["finetune_minus_scratch"] is not None:
            mark = "" if r["beyond_noise"] else " (within noise)"
            diff = f"{r['finetune_minus_scratch']:+.2f}{mark}"
        compression = "—" if r["compression"] is None else f"{r['compression']:,.1f}x"
        cells = [str(r["rank"]), f"{r['weights']:,}", compression, _errors(r), converted]
        cells += [_pm(r["finetune"]), _pm(r["scratch"]), diff]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Findings:", ""]
    lines += [f"{i}. **{f['question']}** {f['answer']}" for i, f in enumerate(group["findings"], 1)]
    reused = sum(r["scratch"]["reused"] for r in rows if r["scratch"])
    if reused:
        lines += ["", f"{reused} scratch run(s) were copied from a sweep with the same recipe."]
    return [*lines, "", *_settings_lines(group)]


def _settings_lines(group: Mapping[str, Any]) -> list[str]:
    """The section of the activation-aware / distillation arms (none without them)."""
    rows = [r for r in group["rows"] if r.get("settings")]
    if not rows:
        return []
    labels = sorted(
        {(tuple(e["key"]), lbl) for r in rows for lbl, e in r["settings"].items()},
    )
    aware = sorted({int(k[0]) for k, _ in labels if k[0]})
    default = setting_label((0, 0.0, 0.0))
    head = ["rank", "weights", "output error: plain"]
    head += [f"output error: activation-aware (N={n})" for n in aware]
    head += ["(a) plain %"] + [f"(a) activation-aware (N={n}) %" for n in aware]
    head += [f"(b) {default} %"] + [f"(b) {lbl} %" for _, lbl in labels] + ["(c) scratch %"]
    ft = next(e["arm"] for r in rows for e in r["settings"].values())
    lines = [
        "### Activation-aware conversion and distillation",
        "",
        "Output error: relative `||(W - W_hat) X|| / ||W X||` of the converted layer(s), `X` "
        "the inputs the dense layer sees for the test images (held out: calibration uses "
        "the first N training images). (a): test accuracy right after conversion; (b): after "
        f"{ft['epochs']} fine-tune epochs at lr {ft['lr']:g}, on the labels or by distillation "
        "(T^2 KL to the dense source's predictions at temperature T); (c) as above. Mean ± "
        "sample std over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * 2 + "---|" * (1 + len(aware)) + "---:|" * (len(head) - 3 - len(aware)),
    ]
    for r in rows:
        settings = r["settings"]
        by_key = {tuple(e["key"]): e for e in settings.values()}
        cells = [str(r["rank"]), f"{r['weights']:,}", _fmt_errors(_plain_errors(r)) or "—"]
        for n in aware:
            e = next((e for k, e in by_key.items() if k[0] == n and e["output_error"]), None)
            cells.append(_fmt_errors(e["output_error"]) if e else "—")
        plain_acc = _plain_converted(r)
        cells.append("—" if plain_acc is None else f"{plain_acc:.2f}")
        for n in aware:
            e = next((e for k, e in by_key.items() if k[0] == n and e["converted"]), None)
            cells.append(f"{e['converted']['test_accuracy']:.2f}" if e else "—")
        cells.append(_pm(r["finetune"]))
        cells += [_pm(settings[lbl]["arm"]) if lbl in settings else "—" for _, lbl in labels]
        cells.append(_pm(r["scratch"]))
        lines.append("| " + " | ".join(cells) + " |")
    drift = [
        r["rank"]
        for r in rows
        if r["conversion"] and _plain_converted(r) != r["conversion"]["converted"]["test_accuracy"]
    ]
    if drift:
        lines += [
            "",
            f"(a) plain is the plain conversion as the runs of this section measured it; at "
            f"ranks {', '.join(map(str, drift))} the default arm's record above (made by an "
            "earlier library version, whose SVD differs in round-off) has another value.",
        ]
    lines += ["", "Findings:", ""]
    lines += [
        f"{i}. **{f['question']}** {f['answer']}"
        for i, f in enumerate(group["setting_findings"], len(group["findings"]) + 1)
    ]
    return [*lines, ""]


def compress_markdown(summary: Summary) -> str:
    """``compress.md``: per group a table over ranks and the findings, then warnings."""
    env = summary["environment"]
    lines = [
        "# Compressing a trained dense MLP: converted, fine-tuned, or trained from scratch",
        "",
        "Final MNIST test accuracy at equal weight counts (biases excluded): (a) the dense "
        "weights replaced by their nearest Kronecker layers, (b) that net fine-tuned, (c) "
        "the same architecture trained from scratch; mean ± sample std over seeds. "
        f"A difference is beyond seed noise when {summary['noise_criterion']}. "
        f"torch {', '.join(map(str, env.get('torch', []))) or 'unknown'}; machine "
        f"{', '.join(map(str, env.get('processor', []))) or 'unknown'}.",
        "",
        f"![accuracy and approximation error against rank]({COMPRESS_PNG})",
        "",
    ]
    for group in summary["groups"]:
        lines += _group_lines(group)
    if summary.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in summary["warnings"]], ""]
    return "\n".join(lines)


def compress_text(summary: Summary) -> str:
    """A console digest: the findings of each group."""
    lines = []
    for group in summary["groups"]:
        lines.append(f"{group['factors']} factors, layers {group['layers']}:")
        found = [*group["findings"], *group.get("setting_findings", [])]
        lines += [f"  {f['question']} {f['answer']}" for f in found]
    return "\n".join(lines)


# --- the plot -------------------------------------------------------------------------------


def _draw_group(acc_ax: Any, err_ax: Any, group: Mapping[str, Any], suffix: str) -> None:
    rows = group["rows"]
    ranks = [r["rank"] for r in rows]
    conv = [r for r in rows if r["conversion"]]
    if conv:
        dense = conv[0]["conversion"]["dense"]["test_accuracy"]
        acc_ax.axhline(dense, color="black", linestyle=":", label=f"dense source{suffix}")
        acc_ax.plot(
            [r["rank"] for r in conv],
            [r["conversion"]["converted"]["test_accuracy"] for r in conv],
            "o-",
            label=f"(a) converted{suffix}",
        )
        layers = sorted({k for r in conv for k in r["conversion"]["approximation_error"]})
        for layer in layers:
            err_ax.plot(
                [r["rank"] for r in conv],
                [r["conversion"]["approximation_error"][layer] for r in conv],
                "o-",
                label=f"{layer}{suffix}",
            )
    for arm, marker in (("finetune", "s"), ("scratch", "^")):
        have = [r for r in rows if r[arm]]
        if have:
            acc_ax.errorbar(
                [r["rank"] for r in have],
                [r[arm]["test_accuracy"]["mean"] for r in have],
                yerr=[r[arm]["test_accuracy"]["std"] for r in have],
                marker=marker,
                capsize=2,
                label=f"({'b' if arm == 'finetune' else 'c'}) "
                f"{'fine-tuned' if arm == 'finetune' else 'from scratch'}{suffix}",
            )
    labels = sorted({(tuple(e["key"]), k) for r in rows for k, e in r.get("settings", {}).items()})
    for _, label in labels:
        have = [r for r in rows if label in r.get("settings", {})]
        arms = [r["settings"][label]["arm"] for r in have]
        acc_ax.errorbar(
            [r["rank"] for r in have],
            [a["test_accuracy"]["mean"] for a in arms],
            yerr=[a["test_accuracy"]["std"] for a in arms],
            marker="D",
            markersize=4,
            capsize=2,
            linestyle="--",
            label=f"(b) {label}{suffix}",
        )
    acc_ax.set_xticks(ranks, [f"{r['rank']}\n{r['weights']:,}" for r in rows], fontsize=7)


def plot_compress(summary: Summary) -> bytes:
    """``compress.png`` as bytes: accuracy of the three arms and approximation error."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not summary["groups"]:
        raise UserError("The compress summary has no run: nothing to plot.")
    fig = Figure(figsize=(14.0, 5.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    acc_ax, err_ax = fig.subplots(1, 2)
    several = len(summary["groups"]) > 1
    for group in summary["groups"]:
        suffix = f" (k={group['factors']}, {group['layers']})" if several else ""
        _draw_group(acc_ax, err_ax, group, suffix)
    acc_ax.set_xlabel("Kronecker rank (and weights)")
    acc_ax.set_ylabel("final test accuracy (%)")
    acc_ax.set_title("accuracy at equal weights")
    acc_ax.grid(True, alpha=0.3)
    acc_ax.legend(fontsize="small", loc="best")
    err_ax.set_xticks(sorted({r["rank"] for g in summary["groups"] for r in g["rows"]}))
    err_ax.set_xlabel("Kronecker rank")
    err_ax.set_ylabel("relative Frobenius error ||W - W_kron|| / ||W||")
    err_ax.set_title("approximation error per layer")
    err_ax.grid(True, alpha=0.3)
    if err_ax.get_legend_handles_labels()[0]:
        err_ax.legend(fontsize="small")
    from torchkron.experiments.mnist.plots import png_bytes

    return png_bytes(fig, DPI)


# --- files ----------------------------------------------------------------------------------


def write_compress_report(out_dir: Path, *, plots: bool = True) -> SummaryFiles:
    """Write ``compress.json``, ``compress.md`` and (unless ``plots=False``) ``compress.png``."""
    summary = compress_summary(
        load_complete_runs(out_dir, "compress", keep=lambda r: bool(_block(r).get("arm")))
    )
    path = out_dir / COMPRESS_JSON
    atomic_write_json(path, summary)
    markdown = out_dir / COMPRESS_MD
    atomic_write_text(markdown, compress_markdown(summary))
    plot = None
    if plots:
        plot = out_dir / COMPRESS_PNG
        atomic_write_bytes(plot, plot_compress(summary))
    return SummaryFiles(path, markdown, plot, summary)
