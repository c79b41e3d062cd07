"""Structure-aware optimisation: per-factor learning rates and weight decay for any model.

A structured layer (:class:`~torchkron.KronLinear`, :class:`~torchkron.LowRankLinear`,
:class:`~torchkron.MonarchLinear`) is a product of factors, each a dense matrix of its own,
smaller, size. Adam moves every entry by about ``lr`` per step, so the change it makes to
a factor's output grows with the factor's fan-in: at the learning rate that suits a
dense layer, a factor with a small fan-in barely moves its layer's features. Following
Qiu et al., "Compute Better Spent" (ICML 2024), :func:`param_groups` gives factor ``i``
of a layer with ``in_features = D`` and ``K`` factor positions the learning rate

    ``lr * D / (fan_in_i * K) * scale_i``

(``scale_i`` is 1 except for ``KronLinear``'s rank-``R`` sums, ``R ** (-1 / (2k))``),
every other parameter ``lr``, and weight decay to matrices and factors only. The
derivation and measurements are in docs/training.md; :func:`lr_multipliers` lists
which tensor gets what.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchkron.layers import KronLinear, LowRankLinear, MonarchLinear

__all__ = ["ParamRule", "lr_multipliers", "param_groups"]

STRUCTURED = (KronLinear, LowRankLinear, MonarchLinear)
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class ParamRule:
    """How :func:`param_groups` trains one parameter.

    Attributes:
        name: the parameter's name in ``model.named_parameters()``.
        shape: its shape.
        multiplier: its learning rate divided by the base ``lr``.
        decay: whether it gets weight decay (matrices and factors: yes; biases, norms,
            scalars and, unless asked, embeddings: no).
        kind: ``"factor"`` (a factor of a structured layer), ``"dense"`` (any other
            tensor of two or more dimensions), ``"embedding"`` or ``"vector"`` (0-D or 1-D:
            biases, norm weights, scalars).
    """

    name: str
    shape: tuple[int, ...]
    multiplier: float
    decay: bool
    kind: str

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        decay = "decay" if self.decay else "no decay"
        return f"{self.name} ({shape}, {self.kind}): lr x {self.multiplier:.4g}, {decay}"


def _factor_multipliers(layer: KronLinear | LowRankLinear | MonarchLinear) -> dict[str, float]:
    """``{parameter name: lr multiplier}`` for the factors of one structured layer."""
    fans = layer.factor_fans()
    positions = sum(f.uses for f in fans)
    return {f.name: layer.in_features / (f.fan_in * positions) * f.scale for f in fans}


def _check_model(model: object, caller: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}; pass the "
            f"model itself, not model.parameters()."
        )
    return model


def lr_multipliers(model: nn.Module, *, decay_embeddings: bool = False) -> list[ParamRule]:
    """Which learning-rate multiplier and weight decay each trainable parameter gets.

    The rows :func:`param_groups` builds its groups from, in ``named_parameters()``
    order; parameters with ``requires_grad=False`` are left out.

    Args:
        model: any ``nn.Module``; its ``KronLinear``, ``LowRankLinear`` and
            ``MonarchLinear`` submodules get per-factor multipliers, everything else 1.
        decay_embeddings: give ``nn.Embedding`` / ``nn.EmbeddingBag`` weights weight
            decay (default: no, as for biases and norms).

    Returns:
        One :class:`ParamRule` per trainable parameter (a shared parameter once).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> from torchkron import KronLinear, lr_multipliers
        >>> model = nn.Sequential(KronLinear(256, 256), nn.LayerNorm(256), nn.Linear(256, 10))
        >>> for rule in lr_multipliers(model):
        ...     print(rule)
        0.factor_0 (1x16x16, factor): lr x 8, decay
        0.factor_1 (1x16x16, factor): lr x 8, decay
        0.bias (256, vector): lr x 1, no decay
        1.weight (256, vector): lr x 1, no decay
        1.bias (256, vector): lr x 1, no decay
        2.weight (10x256, dense): lr x 1, decay
        2.bias (10, vector): lr x 1, no decay
    """
    model = _check_model(model, "lr_multipliers")
    factor: dict[int, float] = {}
    embedding: set[int] = set()
    for module in model.modules():
        if isinstance(module, STRUCTURED):
            for name, mult in _factor_multipliers(module).items():
                factor[id(getattr(module, name))] = mult
        elif isinstance(module, EMBEDDINGS):
            embedding.add(id(module.weight))
    rules = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        shape = tuple(p.shape)
        if id(p) in factor:
            rules.append(ParamRule(name, shape, factor[id(p)], True, "factor"))
        elif id(p) in embedding:
            rules.append(ParamRule(name, shape, 1.0, decay_embeddings, "embedding"))
        elif p.dim() >= 2:
            rules.append(ParamRule(name, shape, 1.0, True, "dense"))
        else:
            rules.append(ParamRule(name, shape, 1.0, False, "vector"))
    return rules


def _check_rate(value: object, name: str, lowest: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < lowest:  # type: ignore[arg-type]
        bound = "> 0" if lowest > 0 else ">= 0"
        raise ValueError(
            f"param_groups: {name} must be a finite number {bound}, got {value!r}; "
            f"e.g. param_groups(model, lr=1e-3, weight_decay=0.1)."
        )
    return float(value)  # type: ignore[arg-type]


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    *,
    decay_embeddings: bool = False,
) -> list[dict[str, Any]]:
    """Parameter groups for any ``torch.optim`` optimizer, with structure-aware rates.

    Every dense parameter trains at ``lr``; every factor of a ``KronLinear``,
    ``LowRankLinear`` or ``MonarchLinear`` at ``lr`` times its multiplier
    (:func:`lr_multipliers`, derived in docs/training.md for Adam-type optimizers);
    matrices and factors get ``weight_decay``, biases, norms, scalars and embeddings
    (unless ``decay_embeddings``) none. Parameters with the same rate and decay share a
    group; each group also carries ``"lr_multiplier"`` and ``"param_names"`` (the
    optimizer keeps extra keys; schedulers such as ``LambdaLR`` scale each group's
    initial ``lr``, so the multipliers survive a schedule).

    The rule is derived for factors drawn at the per-factor scale (``init="per-factor"``);
    measured after one AdamW step it also keeps the default variance-matched init within
    2x of dense (docs/training.md).

    Args:
        model: any ``nn.Module``.
        lr: the learning rate of a dense parameter (the rate you would tune for the dense
            model).
        weight_decay: decoupled (AdamW) or L2 decay for matrices and factors.
        decay_embeddings: also decay embedding weights.

    Returns:
        A list of dicts ``{"params", "lr", "weight_decay", "lr_multiplier",
        "param_names"}`` to pass as an optimizer's first argument.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``lr`` not a finite number > 0, or ``weight_decay`` < 0.

    Examples:
        >>> import torch
        >>> from torchkron import KronLinear, param_groups
        >>> model = nn.Sequential(KronLinear(1024, 1024, init="per-factor"), nn.ReLU())
        >>> opt = torch.optim.AdamW(param_groups(model, lr=1e-3, weight_decay=0.1))
        >>> [(g["param_names"], g["lr"], g["weight_decay"]) for g in opt.param_groups]
        [(['0.factor_0', '0.factor_1'], 0.016, 0.1), (['0.bias'], 0.001, 0.0)]
    """
    model = _check_model(model, "param_groups")
    lr = _check_rate(lr, "lr", math.ulp(0.0))
    weight_decay = _check_rate(weight_decay, "weight_decay", 0.0)
    params = dict(model.named_parameters())
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for rule in lr_multipliers(model, decay_embeddings=decay_embeddings):
        group = groups.setdefault(
            (rule.multiplier, rule.decay),
            {
                "params": [],
                "lr": lr * rule.multiplier,
                "weight_decay": weight_decay if rule.decay else 0.0,
                "lr_multiplier": rule.multiplier,
                "param_names": [],
            },
        )
        group["params"].append(params[rule.name])
        group["param_names"].append(rule.name)
    return list(groups.values())
