"""The training recipe: the PyTorch MNIST example's hyper-parameters, all overridable."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from torchkron.experiments.common.config import ConfigDict, check_at_least_one
from torchkron.experiments.common.errors import UserError

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig(ConfigDict):
    """Every knob of a training run. Defaults follow the PyTorch MNIST example.

    Attributes:
        epochs: passes over the training set.
        batch_size: training batch, reshuffled every epoch.
        test_batch_size: evaluation batch.
        lr: Adadelta learning rate.
        rho: Adadelta's running-average coefficient.
        eps: Adadelta's epsilon.
        gamma: StepLR decay per epoch.
        mean: pixel mean after scaling to [0, 1], subtracted.
        std: pixel std after scaling to [0, 1], divided by.
        train_limit: use only the first N training images (0: all); for smoke tests.
        test_limit: use only the first N test images (0: all).
        threads: torch intra-op threads of the run (0: leave torch's default).
    """

    epochs: int = 35
    batch_size: int = 64
    test_batch_size: int = 1000
    lr: float = 1.0
    rho: float = 0.9
    eps: float = 1e-6
    gamma: float = 0.7
    mean: float = 0.1307
    std: float = 0.3081
    train_limit: int = 0
    test_limit: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", float) and not math.isfinite(value):
                raise UserError(
                    f"--{f.name.replace('_', '-')} must be a finite number, got {value}."
                )
        check_at_least_one(self, ("epochs", "batch_size", "test_batch_size"))
        for name in ("train_limit", "test_limit", "threads"):
            if getattr(self, name) < 0:
                flag = name.replace("_", "-")
                raise UserError(
                    f"--{flag} must be 0 (no limit/default) or more, got {getattr(self, name)}."
                )
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}.")
        if not 0 < self.gamma <= 1:
            raise UserError(f"--gamma must be in (0, 1], got {self.gamma}.")
        if not 0 <= self.rho < 1:
            raise UserError(f"--rho must be in [0, 1), got {self.rho}.")
        if not self.eps > 0:
            raise UserError(f"--eps must be positive, got {self.eps}.")
        if not self.std > 0:
            raise UserError(f"--std must be positive, got {self.std}.")
