"""``accuracy.png``: test accuracy against trainable parameters, one line per method."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchkron.experiments.common.files import atomic_write_bytes
from torchkron.experiments.mnist.plots import png_bytes

__all__ = ["plot_accuracy"]

_STYLE = {
    "lora": ("LoRA", "o-"),
    "lokr": ("LoKr (accelerated)", "s-"),
    "full": ("full fine-tuning", "D"),
    "scratch": ("scratch", "x"),
}


def plot_accuracy(summary: Mapping[str, Any], path: Path) -> Path:
    """Draw the summary's arms (mean ± std over seeds) into ``path``; returns it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for method, (label, style) in _STYLE.items():
        arms = [
            a
            for a in summary["arms"]
            if a["method"] == method and a["test_accuracy"]["mean"] is not None
        ]
        if not arms:
            continue
        ax.errorbar(
            [a["trainable"] for a in arms],
            [a["test_accuracy"]["mean"] for a in arms],
            yerr=[a["test_accuracy"]["std"] for a in arms],
            fmt=style,
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("MNIST MLP adapted to Fashion-MNIST (mean ± std over seeds)")
    atomic_write_bytes(path, png_bytes(fig))
    return path
