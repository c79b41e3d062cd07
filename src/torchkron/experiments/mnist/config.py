"""The training recipe: the PyTorch MNIST example's hyper-parameters, all overridable."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

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
        dataset: which MNIST-format dataset the run trains on (a key of
            :data:`~torchkron.experiments.data.mnist.DATASETS`); ``mean``/``std`` must be
            given to match it (:func:`~torchkron.experiments.mnist.options.recipe_for`).
        permute_pixels: seed of one fixed random permutation of the pixels, applied to the
            training and test images alike (``None``: the images as they are).
        distill_temperature: distil from a teacher's predictions at this softmax
            temperature instead of training on the labels alone (``None``: labels only;
            the teacher is given to the trainer, as ``compress --distill`` does).
        distill_alpha: weight of the label loss in a distillation's loss,
            ``alpha * NLL + (1 - alpha) * T^2 KL`` (0: the teacher alone).

    ``dataset``, ``permute_pixels`` and the two ``distill_`` fields appear in
    :meth:`to_dict` only when they differ from their defaults, so the configs (and the
    run files) of plain MNIST runs read as they did before these fields existed.
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
    dataset: str = "mnist"
    permute_pixels: int | None = None
    distill_temperature: float | None = None
    distill_alpha: float = 0.0

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
        if self.permute_pixels is not None and (
            isinstance(self.permute_pixels, bool)
            or not isinstance(self.permute_pixels, int)
            or self.permute_pixels < 0
        ):
            raise UserError(
                f"--permute-pixels must be a whole number 0 or more (the permutation's "
                f"seed), got {self.permute_pixels!r}."
            )
        t = self.distill_temperature
        if t is not None and not (t > 0 and math.isfinite(t)):
            raise UserError(
                f"--temperature must be positive and finite (the distillation's softmax "
                f"temperature), got {t}."
            )
        if not 0 <= self.distill_alpha <= 1:
            raise UserError(
                f"--distill-alpha must be in [0, 1] (the label loss's share), got "
                f"{self.distill_alpha}."
            )
        if self.distill_alpha and self.distill_temperature is None:
            raise UserError(
                f"--distill-alpha {self.distill_alpha} mixes the label loss into a "
                "distillation, but no distillation is set: add --distill, or drop "
                "--distill-alpha."
            )
        from torchkron.experiments.data.mnist import DATASETS

        if self.dataset not in DATASETS:
            raise UserError(
                f"--dataset {self.dataset!r} is not a known dataset; choose one of: "
                f"{', '.join(DATASETS)}."
            )

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        # Left out at their defaults: plain MNIST configs stay byte-identical to those
        # written before the fields existed (committed results, resumed runs).
        for name, default in _OPTIONAL_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data


_OPTIONAL_DEFAULTS: dict[str, object] = {
    "dataset": "mnist",
    "permute_pixels": None,
    "distill_temperature": None,
    "distill_alpha": 0.0,
}
