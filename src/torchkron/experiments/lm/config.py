"""The language-model training recipe: nanoGPT ``shakespeare_char``'s CPU settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torchkron.experiments.common.config import ConfigDict, check_at_least_one
from torchkron.experiments.common.errors import UserError

__all__ = ["OPTIMIZERS", "LMConfig"]

#: How the trainer sets learning rates (see :class:`LMConfig`).
OPTIMIZERS = ("one-rate", "structure-aware", "two-rate")


@dataclass(frozen=True)
class LMConfig(ConfigDict):
    """Every knob of the training loop (nanoGPT ``shakespeare_char`` CPU defaults).

    Attributes:
        iters: optimizer steps.
        batch_size: windows per step.
        lr: peak learning rate.
        min_lr: final learning rate of the cosine (0: ``lr / 10``, nanoGPT's ratio).
        warmup_iters: linear warm-up steps.
        lr_decay_iters: step where the cosine reaches ``min_lr`` (0: ``iters``).
        beta1: AdamW beta1.
        beta2: AdamW beta2.
        weight_decay: AdamW weight decay (matrices, factors, embeddings only).
        grad_clip: gradient-norm clip (0: none).
        eval_interval: evaluate (and checkpoint) every this many steps.
        eval_iters: fixed batches per split at each evaluation.
        full_eval: score the whole validation split at the end.
        threads: torch intra-op threads (0: torch's default).
        device: torch device of the run (``cpu``, ``cuda``...).
        optimizer: ``"one-rate"`` (the first study: every parameter at ``lr``) or
            ``"structure-aware"`` (every non-structured parameter at ``dense_lr``, every
            factor of a structured layer at ``lr`` times its
            :func:`torchkron.lr_multipliers` multiplier) or ``"two-rate"`` (the second
            study's ablation: as ``structure-aware`` but every factor at ``lr`` itself,
            without its multiplier).
        dense_lr: ``structure-aware`` and ``two-rate``: peak rate of every non-structured
            parameter (embeddings, dense attention, norms, head; 0: ``lr``). Unused by
            ``one-rate``.
    """

    iters: int = 2000
    batch_size: int = 12
    lr: float = 1e-3
    min_lr: float = 0.0
    warmup_iters: int = 100
    lr_decay_iters: int = 0
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    full_eval: bool = True
    threads: int = 1
    device: str = "cpu"
    optimizer: str = "one-rate"
    dense_lr: float = 0.0

    def __post_init__(self) -> None:
        check_at_least_one(self, ("iters", "batch_size", "eval_interval", "eval_iters"))
        for name in ("lr", "min_lr", "beta1", "beta2", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value):
                flag = name.replace("_", "-")
                raise UserError(
                    f"--{flag} must be a finite number, got {value}; NaN or infinite "
                    "settings train to NaN."
                )
        if self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}."
            )
        if not (math.isfinite(self.dense_lr) and self.dense_lr >= 0):
            raise UserError(
                f"--dense-lr must be a finite number >= 0 (0: --lr), got {self.dense_lr}."
            )
        for name in ("min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                flag = name.replace("_", "-")
                raise UserError(f"--{flag} must be 0 or more, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}.")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}.")

    @property
    def final_lr(self) -> float:
        return self.min_lr or self.lr / 10

    @property
    def dense_rate(self) -> float:
        """Peak rate of the non-structured parameters."""
        return self.dense_lr or self.lr

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.iters
