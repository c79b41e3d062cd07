"""A tiny MNIST-format dataset (28x28, 10 classes) that a small MLP can learn in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torchkron.experiments.data.idx import write_idx
from torchkron.experiments.data.mnist import FILES


def write_synthetic_mnist(
    folder: Path, *, n_train: int = 192, n_test: int = 64, seed: int = 0
) -> Path:
    """Each class is a fixed random 28x28 template plus noise; written as .gz IDX files."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, (10, 28, 28))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        noise = rng.normal(0, 60, (n, 28, 28))
        images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
        return images, labels.astype(np.uint8)

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": train_x,
        "train_labels": train_y,
        "test_images": test_x,
        "test_labels": test_y,
    }
    for role, name in FILES.items():
        write_idx(folder / f"{name}.gz", arrays[role])
    return folder
