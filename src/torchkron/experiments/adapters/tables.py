"""``results.md`` of the adapters study, from its summary alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchkron.experiments.common.progress import format_duration

__all__ = ["results_markdown"]

Summary = Mapping[str, Any]
Arm = Mapping[str, Any]
_TITLES = {"lora": "LoRA", "lokr": "LoKr (accelerated)", "full": "full fine-tuning"}


def _config(arm: Arm) -> str:
    o = arm["options"]
    if arm["method"] == "lora":
        return f"r = {o['r']}"
    if arm["method"] == "lokr":
        factor = "balanced" if o["decompose_factor"] == -1 else o["decompose_factor"]
        both = ", decompose_both" if o["decompose_both"] else ""
        shapes = arm["matching"].get("shapes") or {}
        kron = "; ".join(
            f"{k.rsplit('.', 1)[-1]} {w1[0]}x{w1[1]} (x) {w2[0]}x{w2[1]}"
            for k, (w1, w2) in shapes.items()
        )
        return f"factor {factor}, r = {o['r']}{both}" + (f" ({kron})" if kron else "")
    if arm["method"] == "full":
        return "every weight of the source"
    return "a fresh MLP, every weight"


def _acc(arm: Arm) -> str:
    acc = arm["test_accuracy"]
    if acc["mean"] is None:
        return "not run"
    return f"{acc['mean']:.2f} ± {acc['std']:.2f} (n={len(arm['seeds'])})"


def _budget(arm: Arm, named: Mapping[str, Arm]) -> str:
    if arm["method"] != "lokr" or arm["budget"] not in named:
        return ""
    gap = arm["matching"]["relative_gap"]
    return f"{100 * gap:+.1f}% vs {arm['budget']}"


def _table(arms: Sequence[Arm]) -> list[str]:
    named = {a["name"]: a for a in arms}
    lines = [
        "| arm | method | config | trainable parameters | vs LoRA budget | picked lr | "
        "test accuracy % (mean ± std) |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for a in arms:
        lr = "diverged" if a["picked_lr"] is None else f"{a['picked_lr']:g}"
        lines.append(
            f"| {a['name']} | {_TITLES.get(a['method'], a['method'])} | {_config(a)} | "
            f"{a['trainable']:,} | {_budget(a, named)} | {lr}{' (edge)' if a['edge'] else ''} | "
            f"{_acc(a)} |"
        )
    return lines


def _grid(arms: Sequence[Arm]) -> list[str]:
    rates = sorted({g["lr"] for a in arms for g in a["grid"]})
    lines = [
        "| arm | " + " | ".join(f"lr {r:g}" for r in rates) + " |",
        "|---|" + "---:|" * len(rates),
    ]
    for a in arms:
        cells = {g["lr"]: g["val_accuracy"] for g in a["grid"]}
        row = []
        for r in rates:
            value = cells.get(r, "")
            text = "diverged" if value is None else (f"{value:.2f}" if value != "" else "")
            row.append(f"**{text}**" if r == a["picked_lr"] else text)
        lines.append(f"| {a['name']} | " + " | ".join(row) + " |")
    return lines


def _findings(summary: Summary) -> list[str]:
    comps = summary["comparisons"]
    named = {a["name"]: a for a in summary["arms"]}
    lines = [f"Criterion: a difference is beyond seed noise when {summary['noise_criterion']}."]
    lokr = [c for c in comps if c["kind"] == "lokr-vs-lora"]
    if lokr:
        wins = sum(c["beyond_noise"] and c["diff"] > 0 for c in lokr)
        losses = sum(c["beyond_noise"] and c["diff"] < 0 for c in lokr)
        ties = len(lokr) - wins - losses
        lines += [
            "",
            f"**Does LoKr match LoRA at equal trainable parameters?** Over {len(lokr)} "
            f"budget(s): LoKr is above LoRA beyond seed noise at {wins}, below it at "
            f"{losses}, within seed noise at {ties}.",
            "",
        ]
        for c in lokr:
            a, b = named[c["a"]], named[c["b"]]
            lines.append(
                f"- LoRA's {b['trainable']:,}-parameter budget (LoKr at {a['trainable']:,}): "
                f"{c['text']}."
            )
    for kind, title in (
        ("vs-full", "Against full fine-tuning"),
        ("vs-scratch", "Against training from scratch"),
        ("full-vs-scratch", "Does the MNIST source help at all?"),
    ):
        group = [c for c in comps if c["kind"] == kind]
        if group:
            lines += ["", f"**{title}** (same epochs):", ""]
            lines += [f"- {c['text']}." for c in group]
    return lines


def _setup(summary: Summary) -> list[str]:
    config = summary["config"]
    src = summary["source"] or {}
    recipe = src.get("config") or {}
    source = (
        f"Source: the seed's `original` MLP (784-625-10, ReLU), seed {src.get('seed')}, trained "
        f"on MNIST by the reproduction's recipe for {recipe.get('epochs', src.get('epochs'))} "
        f"epochs (MNIST test accuracy {src.get('mnist_test_accuracy', 0):.2f}%; on "
        f"Fashion-MNIST before adaptation {src.get('fashion_test_accuracy', 0):.2f}%, its "
        "digit classes mean nothing there)."
        if src
        else "Source: none of these runs adapts the source model."
    )
    limit = config["train_limit"] or "all"
    return [
        source,
        "",
        f"Target: Fashion-MNIST (normalised with its own mean and std); training images: {limit} "
        f"less the last {config['val_size']:,}, which are held out to pick each arm's learning "
        "rate; test accuracy on the test set. Every arm: Adam at its picked rate, cosine "
        f"decay to 0 over {config['epochs']} epochs, batch {config['batch_size']}. "
        "Adapters (PEFT LoRA; PEFT LoKr accelerated by `torchkron.integrations.peft."
        "accelerate`) sit on both Linear layers, alpha 8 (PEFT's default), no bias, no dropout; "
        "the base weights and biases are frozen, so the head learns only through its "
        "adapter, for LoRA and LoKr alike. Full fine-tuning trains every weight of the source, "
        "scratch every weight of a fresh MLP. Each LoKr config is the one whose trainable-"
        "parameter count, counted on the built PEFT model, is nearest its LoRA budget among "
        "the configs whose delta is a true Kronecker product (both factors at least 2x2).",
    ]


def results_markdown(summary: Summary) -> str:
    """The report: setup, table, findings, the rate search, provenance."""
    arms = summary["arms"]
    lokr = [a for a in arms if a["method"] == "lokr"]
    balanced = lokr[0]["matching"].get("balanced_max") if lokr else None
    env = summary["environment"]
    lines = [
        "# Adapting the MNIST MLP to Fashion-MNIST: LoKr against LoRA at equal trainable "
        "parameters",
        "",
        *_setup(summary),
        "",
        *_table(arms),
        "",
        "Test accuracy at the last epoch, mean and sample std over the reported seeds (none "
        "of them the seed of the rate search). Trainable parameters are counted on the "
        "built model (`requires_grad`).",
        *(
            [
                "",
                f"PEFT's default LoKr factor (balanced, -1) reaches at most {balanced:,} "
                "trainable parameters on this model, whatever the rank: below every LoRA "
                "budget here, so the matched configs use other factors.",
            ]
            if balanced
            else []
        ),
        "",
        "## Findings",
        "",
        *_findings(summary),
        "",
        "## Learning-rate search",
        "",
        "Validation accuracy % (held-out training images) at the last epoch, seed 0; the "
        "picked rate in bold. An arm whose best rate was the largest (or smallest) it had "
        "tried also tried the next rate of the 1-3-10 ladder beyond it (`--extend`), so each "
        "pick lies inside its arm's search unless marked (edge) above.",
        "",
        *_grid(arms),
        "",
        f"Runs: {summary['runs']} run files, {format_duration(summary['seconds'])} of "
        f"training in all; torch {', '.join(env['torch'])}, peft {', '.join(env['peft'])}, "
        f"{', '.join(env['processor'])}, {', '.join(env['threads'])} thread(s) per run. "
        f"Command: {'; '.join(f'`{c}`' for c in summary['commands'])}.",
    ]
    if summary["source"] and summary["source"].get("mixed"):
        lines += ["", "Warning: these runs were adapted from more than one source model."]
    return "\n".join(lines) + "\n"
