"""What the LM runs were, read from their run files: recipes, sessions, machine use.

The report states the recipe, the sweep's length, the sessions and the runs side by side
from these functions, never from text written ahead of the runs; and it pools seeds only
within one recipe (:func:`recipe_groups`), so a run trained with other settings gets a row
of its own, labelled by the settings that differ (:func:`recipe_label`).
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torchkron.experiments.common.runs import RunRecord

__all__ = [
    "describe_study",
    "recipe",
    "recipe_groups",
    "recipe_label",
    "sessions",
    "study_facts",
]

#: Settings that change how fast a run goes, never its numbers: not part of a recipe.
SPEED_ONLY = ("threads", "device")
#: The settings the report's recipe sentence names, in its order.
SHOWN = (
    "n_layer",
    "n_head",
    "n_embd",
    "block_size",
    "batch_size",
    "iters",
    "beta1",
    "beta2",
    "weight_decay",
    "warmup_iters",
    "min_lr",
    "lr_decay_iters",
    "grad_clip",
    "dropout",
)


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def recipe(r: RunRecord) -> dict[str, Any]:
    """Every setting of run ``r`` that changes its numbers: the training config (less
    threads and device), the model spec (nested structures as ``mlp.rank``...) and the
    text's md5 (as ``text_md5``)."""
    out: dict[str, Any] = {}
    config = {k: v for k, v in (r.get("config") or {}).items() if k not in SPEED_ONLY}
    _flat("", config, out)
    _flat("", r.get("spec") or {}, out)
    data = r.get("data")
    if isinstance(data, Mapping) and "md5" in data:
        out["text_md5"] = data["md5"]
    return out


def _key(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def recipe_groups(runs: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """``runs`` split by recipe: most runs first (then the earliest run file's order)."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(_key(recipe(r)), []).append(r)
    return sorted(groups.values(), key=lambda g: -len(g))  # stable: first seen first


def recipe_label(settings: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """The settings where ``settings`` differs from ``reference``, e.g. ``iters 20, lr 0.5``."""
    keys = list(dict.fromkeys([*settings, *reference]))
    diffs = [
        f"{k} {_value(k, settings.get(k, '—'))}"
        for k in keys
        if settings.get(k, "—") != reference.get(k, "—")
    ]
    return ", ".join(diffs)


def _value(key: str, value: Any) -> str:
    if key == "dropout" and isinstance(value, float):
        return format(value, "g")
    return str(value)


def _time(text: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def sessions(records: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """Spans of time in which some run was training (from each run file's start and end),
    in order: runs that overlap or touch belong to one span. A run resumed in a later
    session keeps its first start, so two sessions may read as one: a lower bound."""
    spans = sorted(
        (a, b)
        for r in records
        if (a := _time(r.get("started_at"))) is not None
        and (b := _time(r.get("finished_at"))) is not None
    )
    merged: list[list[_dt.datetime]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a.isoformat(), b.isoformat()) for a, b in merged]


def _jobs(command: Any) -> int | None:
    """``--jobs`` of a recorded command line (1 when it has none), None if unreadable."""
    try:
        words = shlex.split(str(command))
    except ValueError:
        return None
    for i, w in enumerate(words):
        text = w.removeprefix("--jobs=") if w.startswith("--jobs=") else None
        if w == "--jobs" and i + 1 < len(words):
            text = words[i + 1]
        if text is not None:
            return int(text) if text.isdigit() else None
    return 1


def _values(
    rows: Sequence[tuple[str, Mapping[str, Any], int]], key: str
) -> list[tuple[Any, list[str], int]]:
    """Each value of ``key`` over the rows (label, recipe, runs): its rows and run count,
    the value of most runs first."""
    by: dict[str, tuple[Any, list[str], int]] = {}
    for label, settings, n in rows:
        if key not in settings:
            continue
        v = settings[key]
        value, labels, runs = by.get(_key({"v": v}), (v, [], 0))
        by[_key({"v": v})] = (value, [*labels, label], runs + n)
    return sorted(by.values(), key=lambda x: -x[2])


def _nanogpt() -> dict[str, Any]:
    """nanoGPT's ``shakespeare_char`` CPU settings: the defaults of the harness."""
    from torchkron.experiments.lm.config import LMConfig
    from torchkron.experiments.lm.gpt import GPTSpec

    out: dict[str, Any] = {}
    _flat("", LMConfig().to_dict(), out)
    _flat("", GPTSpec().to_dict(), out)
    return out


def study_facts(
    rows: Sequence[tuple[str, Mapping[str, Any], int]],
    sweeps: Sequence[RunRecord],
    records: Sequence[RunRecord],
) -> dict[str, Any]:
    """The facts the report's description states, JSON-able.

    Args:
        rows: the table's rows that hold finished runs: (label, recipe, number of runs).
        sweeps: the finished learning-rate sweep runs.
        records: every run file (sessions, commands, text split).
    """
    settings = {k: _values(rows, k) for k in SHOWN}
    jobs = Counter(_jobs(r.get("command")) for r in records if r.get("command"))
    spans = sessions(records)
    val = sorted(
        {
            round(100 * d["val_chars"] / (d["train_chars"] + d["val_chars"]))
            for r in records
            if isinstance(d := r.get("data"), Mapping) and {"val_chars", "train_chars"} <= set(d)
        }
    )
    nanogpt = _nanogpt()
    return {
        # The value of most runs, then each other value with the rows that have it.
        "settings": {
            k: [[v, labels if i else [], n] for i, (v, labels, n) in enumerate(vs)]
            for k, vs in settings.items()
        },
        "not_nanogpt": [k for k, vs in settings.items() if vs and vs[0][0] != nanogpt.get(k)],
        "biases": sorted({bool(s.get("bias")) for _, s, _ in rows}),
        "full_eval": sorted({bool(s.get("full_eval", True)) for _, s, _ in rows}),
        "sweep_iters": sorted({int(r["config"]["iters"]) for r in sweeps}),
        "sweep_seeds": sorted({int(r["seed"]) for r in sweeps}),
        "jobs": [[j, n] for j, n in jobs.most_common() if j is not None],
        "sessions": len(spans),
        "first_start": spans[0][0] if spans else None,
        "last_end": spans[-1][1] if spans else None,
        "val_percent": val,
    }


def _names(labels: Sequence[str]) -> str:
    shown = ", ".join(labels[:3])
    return shown + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")


def _setting(
    facts: Mapping[str, Any], key: str, phrase: Callable[[str], str], none: str = "?"
) -> str:
    """``phrase`` of the value most runs share, then each other value with its configs."""
    values = facts["settings"].get(key) or []
    if not values:
        return phrase(none)
    text = phrase(_value(key, values[0][0]))
    others = "; ".join(f"{_value(key, v)} in {_names(labels)}" for v, labels, _ in values[1:])
    return f"{text} ({others})" if others else text


def _only(facts: Mapping[str, Any], key: str, value: Any) -> bool:
    values = facts["settings"].get(key) or []
    return len(values) == 1 and values[0][0] == value


def _numbers(values: Sequence[Any], one: str, many: str) -> str:
    text = " or ".join(str(v) for v in values)
    return f"{one} {text}" if len(values) == 1 else f"{many} {text}"


def describe_study(facts: Mapping[str, Any]) -> tuple[str, str, str]:
    """The report's recipe sentence, runs side by side, and sessions clause, from ``facts``."""

    def s(key: str, phrase: Callable[[str], str]) -> str:
        return _setting(facts, key, phrase)

    floor = (
        "lr/10"
        if _only(facts, "min_lr", 0.0)
        else _setting(facts, "min_lr", lambda v: f"min_lr {v} (0: lr/10)")
    )
    decay = (
        ""
        if _only(facts, "lr_decay_iters", 0)
        else _setting(facts, "lr_decay_iters", lambda v: f" at iteration {v} (0: the last)")
    )
    adam = s("beta2", lambda v: f"AdamW beta2 {v}")
    if not _only(facts, "beta1", 0.9):
        adam = s("beta1", lambda v: f"AdamW beta1 {v}") + ", " + s("beta2", lambda v: f"beta2 {v}")
    parts = [
        s("n_layer", lambda v: f"{v} layers"),
        s("n_head", lambda v: f"{v} heads"),
        s("n_embd", lambda v: f"n_embd {v}"),
        s("block_size", lambda v: f"block {v}"),
        s("batch_size", lambda v: f"batch {v}"),
        s("iters", lambda v: f"{v} iterations"),
        adam,
        s("weight_decay", lambda v: f"weight decay {v}"),
        s("warmup_iters", lambda v: f"lr warm-up {v}") + f" then cosine to {floor}{decay}",
        s("grad_clip", lambda v: f"grad clip {v}"),
        s("dropout", lambda v: f"dropout {v}"),
    ]
    if facts["sweep_iters"]:
        sweep = (
            f"({' or '.join(map(str, facts['sweep_iters']))} iterations, schedule "
            f"compressed, {_numbers(facts['sweep_seeds'], 'seed', 'seeds')})"
        )
    else:
        sweep = "(no sweep run finished)"
    split = " or ".join(f"{p}%" for p in facts["val_percent"]) or "?"
    scored = (
        f"over the whole validation split (last {split})"
        if facts["full_eval"] == [True]
        else "over the whole validation split where scored, else the fixed evaluation batches"
    )
    differs = facts["not_nanogpt"]
    name = (
        "nanoGPT's `shakespeare_char` CPU recipe"
        if not differs
        else f"nanoGPT's `shakespeare_char` CPU recipe but for {', '.join(differs)}"
    )
    recipe_text = (
        f"Recipe: {name} ({', '.join(parts)}); each structure "
        f"family at the best learning rate of its sweep {sweep}; narrower dense models use "
        f"dense's learning rate. Validation loss = mean cross-entropy (nats per character) "
        f"{scored} after the last step."
    )
    jobs = facts["jobs"]
    side = f"{jobs[0][0]} runs side by side" if jobs else "? runs side by side"
    if len(jobs) > 1:
        rest = ", ".join(f"{_plural(n, 'run')} with --jobs {j}" for j, n in jobs[1:])
        side += f" (but {rest})"
    n = facts["sessions"]
    when = (
        f" between {facts['first_start'][:16].replace('T', ' ')} and "
        f"{facts['last_end'][:16].replace('T', ' ')} UTC"
        if facts["first_start"]
        else ""
    )
    machine = (
        f"runs trained in {_plural(n, 'session')} at least{when} (spans of time in which "
        "some run was training, from the run files' start and end times), so per-run times "
        "reflect each session's machine load and compare only roughly; compare speed with "
        "the side-by-side step times of `lm bench` instead."
    )
    return recipe_text, side, machine


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
