"""The study's arms (LoRA, LoKr, full fine-tuning, scratch), the models they train, and the
LoKr configs whose trainable-parameter counts match each LoRA budget.

Counts are always read off a built PEFT model (``requires_grad`` parameters), never
computed by hand: PEFT decides which LoKr factors it keeps whole and which it splits into
low-rank products, and that changes the count.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.mnist.variants import MLP, build_mlp, get_variant

__all__ = [
    "ALPHA",
    "METHODS",
    "SEARCH_FACTORS",
    "SEARCH_RANKS",
    "SOURCE_VARIANT",
    "TARGETS",
    "Arm",
    "Candidate",
    "adapted_model",
    "closest",
    "kron_shapes",
    "lokr_candidates",
    "lokr_name",
    "require_peft",
    "study_arms",
    "trainable",
]

#: The Linear layers of the MLP that get adapters (PEFT ``target_modules``): both. The
#: head's own weights stay frozen in every adapter arm, for LoRA and LoKr alike.
TARGETS = ("hidden", "output")
#: PEFT's default ``alpha`` of both LoRA and LoKr (scale ``alpha / r``).
ALPHA = 8
SOURCE_VARIANT = "original"
METHODS = ("lora", "lokr", "full", "scratch")
#: LoKr decompose_factor values searched (PEFT's balanced -1 first) and ranks; read at call
#: time, so a test can narrow the search.
SEARCH_FACTORS: tuple[int, ...] = (-1, *range(2, 129))
SEARCH_RANKS: tuple[int, ...] = tuple(range(1, 129))


def require_peft() -> Any:
    """The ``peft`` module, or a UserError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise UserError(
            "torchkron adapt needs PEFT (LoRA and LoKr adapters), which is not installed: "
            '`pip install peft`, or `pip install -e ".[hf]"` in a clone of torchkron.'
        ) from None
    return peft


@dataclass(frozen=True)
class Arm:
    """One way to adapt the source model.

    Attributes:
        name: the arm's id in run file names (``lora-r4``, ``lokr-f5-r18``, ``full``).
        method: one of :data:`METHODS`.
        options: the PEFT config's options (``r``; LoKr's ``decompose_factor`` and
            ``decompose_both``); empty for ``full`` and ``scratch``.
        budget: for LoRA and LoKr, the LoRA arm whose trainable-parameter count this arm
            matches (a LoRA arm names itself).
        matching: how the LoKr config was chosen (the budget's count, the candidates'
            count, PEFT's balanced-factor maximum).
    """

    name: str
    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    budget: str | None = None
    matching: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "options": dict(self.options),
            "budget": self.budget,
            "matching": dict(self.matching),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Arm:
        return cls(
            str(data["name"]),
            str(data["method"]),
            dict(data.get("options") or {}),
            data.get("budget"),
            dict(data.get("matching") or {}),
        )

    @property
    def uses_source(self) -> bool:
        return self.method != "scratch"


def _peft_config(method: str, options: Mapping[str, Any]) -> Any:
    peft = require_peft()
    if method == "lora":
        return peft.LoraConfig(
            r=int(options["r"]), lora_alpha=ALPHA, target_modules=list(TARGETS), bias="none"
        )
    return peft.LoKrConfig(
        r=int(options["r"]),
        alpha=ALPHA,
        decompose_factor=int(options["decompose_factor"]),
        decompose_both=bool(options["decompose_both"]),
        target_modules=list(TARGETS),
    )


def _wrap(model: nn.Module, method: str, options: Mapping[str, Any]) -> nn.Module:
    """``model`` with PEFT adapters of ``method`` on :data:`TARGETS` (LoRA, LoKr), else as is."""
    if method not in ("lora", "lokr"):
        return model
    wrapped: nn.Module = require_peft().get_peft_model(model, _peft_config(method, options))
    return wrapped


def adapted_model(arm: Arm, source: Mapping[str, torch.Tensor] | None, seed: int) -> nn.Module:
    """The model an arm trains: the source MLP with its adapters (LoKr accelerated by
    :func:`torchkron.integrations.peft.accelerate`), the whole source (``full``), or a
    fresh MLP (``scratch``). The global RNG is seeded with ``seed`` first (adapter init)."""
    torch.manual_seed(seed)
    model: nn.Module = build_mlp(get_variant(SOURCE_VARIANT))
    if arm.uses_source:
        if source is None:
            raise UserError(f"Arm {arm.name} adapts the source model, but none was given.")
        model.load_state_dict(source)
    model = _wrap(model, arm.method, arm.options)
    if arm.method == "lokr":
        from torchkron.integrations.peft import accelerate

        report = accelerate(model)
        if len(report.accelerated) != len(TARGETS):
            raise UserError(
                f"Arm {arm.name}: torchkron accelerated {list(report.accelerated)} but the "
                f"study adapts {list(TARGETS)}; the comparison would not be of accelerated "
                "LoKr. Check the installed PEFT version against torchkron's integration."
            )
    return model


def trainable(model: nn.Module) -> int:
    """The number of trainable numbers (``requires_grad`` parameters) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def kron_shapes(model: nn.Module) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Each PEFT LoKr layer's Kronecker factor shapes ``(w1, w2)``, ``(out, in)`` each, by
    layer path; a factor kept as a low-rank product ``a @ b`` counts as ``(rows(a), cols(b))``."""
    found: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, p in model.named_parameters():
        path = name.split(".")
        if len(path) < 3 or not path[-2].startswith("lokr_w"):
            continue
        layer, which = ".".join(path[:-2]), path[-2].removeprefix("lokr_")
        found.setdefault(layer, {})[which] = tuple(p.shape)
    shapes = {}
    for layer, parts in found.items():

        def whole(w: str, parts: dict[str, tuple[int, ...]] = parts) -> tuple[int, int]:
            if w in parts:
                return int(parts[w][0]), int(parts[w][1])
            return int(parts[f"{w}_a"][0]), int(parts[f"{w}_b"][1])

        shapes[layer] = (whole("w1"), whole("w2"))
    return shapes


@dataclass(frozen=True)
class Candidate:
    """A LoKr config and what PEFT builds from it on the study's model."""

    options: Mapping[str, Any]
    count: int
    shapes: Mapping[str, tuple[tuple[int, int], tuple[int, int]]]

    @property
    def kronecker(self) -> bool:
        """Whether every layer's delta is a true Kronecker product: both factors have at
        least two rows and two columns. A factor of one row or one column (PEFT's
        ``decompose_factor`` 2 or 4 on this model's 625 outputs) makes the delta a low-rank
        matrix tiled a few times, a LoRA in disguise rather than what the study compares."""
        return all(min(*w1, *w2) >= 2 for w1, w2 in self.shapes.values())


def _factor_key(base: nn.Module, factor: int) -> tuple[tuple[int, int], ...]:
    """The factorisations PEFT's LoKr makes of every target layer's sizes at ``factor``."""
    from peft.tuners.lokr.layer import factorization

    key = []
    for name in TARGETS:
        layer = base.get_submodule(name)
        key += [factorization(layer.in_features, factor), factorization(layer.out_features, factor)]
    return tuple(key)


def lokr_candidates(
    base: nn.Module,
    *,
    factors: Iterable[int] | None = None,
    ranks: Iterable[int] | None = None,
) -> list[Candidate]:
    """Every distinct PEFT LoKr config on ``base``'s :data:`TARGETS`, counted on the built
    model, in order of preference (balanced factor first, ``decompose_both`` off first,
    smaller rank first); configs that build the same parameter shapes are kept once."""
    require_peft()
    seen_keys: set[tuple[tuple[int, int], ...]] = set()
    seen_shapes: set[tuple[Any, ...]] = set()
    found: list[Candidate] = []
    ranks = tuple(SEARCH_RANKS if ranks is None else ranks)
    for factor in SEARCH_FACTORS if factors is None else factors:
        key = _factor_key(base, factor)
        if key in seen_keys:
            continue  # another factor value splits every layer the same way
        seen_keys.add(key)
        for both in (False, True):
            for r in ranks:
                options = {"r": r, "decompose_factor": factor, "decompose_both": both}
                model = _wrap(copy.deepcopy(base), "lokr", options)
                params = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
                if params not in seen_shapes:
                    seen_shapes.add(params)
                    found.append(Candidate(options, trainable(model), kron_shapes(model)))
                if not any(n.endswith(("_a.default", "_b.default")) for n, _ in params):
                    break  # every factor whole: a larger rank builds the same model
    return found


def closest(candidates: Sequence[Candidate], budget: int) -> Candidate:
    """The true-Kronecker candidate whose count is nearest ``budget`` (the first in
    preference order on a tie)."""
    usable = [c for c in candidates if c.kronecker]
    if not usable:
        raise UserError("No LoKr config makes a true Kronecker delta on every adapted layer.")
    return min(usable, key=lambda c: abs(c.count - budget))


def _lora_count(base: MLP, r: int) -> int:
    return trainable(_wrap(copy.deepcopy(base), "lora", {"r": r}))


def lokr_name(options: Mapping[str, Any]) -> str:
    factor = options["decompose_factor"]
    both = "-both" if options["decompose_both"] else ""
    return f"lokr-f{'bal' if factor == -1 else factor}-r{options['r']}{both}"


def study_arms(lora_ranks: Sequence[int]) -> list[Arm]:
    """LoRA at each rank, the LoKr config matching each LoRA count, full fine-tuning and
    training from scratch, in table order."""
    require_peft()
    # On the meta device: shapes only, no memory and no init, several times faster.
    with torch.device("meta"):
        base = build_mlp(get_variant(SOURCE_VARIANT))
    candidates = lokr_candidates(base)
    balanced = [c.count for c in candidates if c.options["decompose_factor"] == -1]
    arms: list[Arm] = []
    for r in sorted(set(lora_ranks)):
        lora = Arm(f"lora-r{r}", "lora", {"r": r}, f"lora-r{r}")
        budget = _lora_count(base, r)
        pick = closest(candidates, budget)
        matching = {
            "budget_count": budget,
            "count": pick.count,
            "relative_gap": (pick.count - budget) / budget,
            "shapes": {k: [list(w1), list(w2)] for k, (w1, w2) in pick.shapes.items()},
            "candidates": len(candidates),
            "balanced_max": max(balanced),
        }
        lokr = Arm(lokr_name(pick.options), "lokr", dict(pick.options), lora.name, matching)
        arms += [lora, lokr]
    return [*arms, Arm("full", "full"), Arm("scratch", "scratch")]
