"""Summary -> ``accuracy.png`` and ``loss.png``: test curves per variant over epochs.

matplotlib is imported here only (inside the functions), so ``import torchkron`` and the
rest of the harness work without it. Figures are drawn on an Agg canvas directly, not
through pyplot: no global backend switch, no figure registry to leak. PNGs carry no
software or time stamp, so rerunning on the same summary gives identical bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_bytes

__all__ = ["ACCURACY_PLOT", "DPI", "LOSS_PLOT", "accuracy_floor", "plot_curves"]

ACCURACY_PLOT = "accuracy.png"
LOSS_PLOT = "loss.png"
DPI = 150
FIGSIZE = (10.0, 5.5)

Summary = Mapping[str, Any]
Variant = Mapping[str, Any]


def accuracy_floor(variants: Sequence[Variant]) -> float:
    """Lower y-limit: a bit below the worst final mean, so the top of the range is legible."""
    worst = min(float(v["test_accuracy"]["mean"]) for v in variants)
    margin = max(1.0, 0.1 * (100.0 - worst))
    return max(0.0, float(math.floor(worst - margin)))


def _zoom_range(variants: Sequence[Variant]) -> tuple[float, float] | None:
    """Y-range of a second panel for the best variants, when the full range hides them.

    Variants within 6 points of the best final mean share the panel; None when every
    variant already fits in a 6-point band.
    """
    finals = [float(v["test_accuracy"]["mean"]) for v in variants]
    best, worst = max(finals), min(finals)
    if best - worst <= 6.0:
        return None
    top = [v for v, f in zip(variants, finals, strict=True) if f >= best - 6.0]
    # The band covers the top variants' curves from their third epoch on.
    lows = [min(v["curves"]["test_accuracy_mean"][2:] or [best]) for v in top]
    low = math.floor(min(lows) - 0.5)
    high = min(100.0, math.ceil(best + 0.5))
    return float(low), float(high)


def _label(v: Variant) -> str:
    return f"{v['name']} ({v['weights']:,} weights)"


def _colours(n: int) -> list[Any]:
    """Distinguishable colours: tab10 for up to 10 lines, tab20 beyond."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _draw(ax: Any, variants: Sequence[Variant], key: str, *, positive: bool) -> None:
    """One mean line per variant with a ±1 std band; dense baselines dashed."""
    for v, colour in zip(variants, _colours(len(variants)), strict=True):
        curves = v["curves"]
        epochs, mean, std = curves["epoch"], curves[f"{key}_mean"], curves[f"{key}_std"]
        # On a log axis the band must stay positive: clip its low edge.
        low = [max(m - s, m / 10) if positive else m - s for m, s in zip(mean, std, strict=True)]
        high = [m + s for m, s in zip(mean, std, strict=True)]
        dashed = v.get("family") == "dense-baseline" or bool(v.get("matches"))
        style = "--" if dashed else "-"
        ax.plot(epochs, mean, style, color=colour, marker=".", linewidth=1.6, label=_label(v))
        if any(s > 0 for s in std):
            ax.fill_between(epochs, low, high, color=colour, alpha=0.18, linewidth=0)


def _seeds_text(variants: Sequence[Variant]) -> str:
    counts = sorted({len(v["seeds"]) for v in variants})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± 1 std over {n} seed(s)"


def _figure(variants: Sequence[Variant], key: str, ylabel: str, title: str, *, log: bool) -> bytes:
    """Render one plot to PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    zoom = None if log else _zoom_range(variants)
    fig = Figure(
        figsize=(FIGSIZE[0] * (1.6 if zoom else 1.0), FIGSIZE[1]), dpi=DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    for i, ax in enumerate(axes):
        _draw(ax, variants, key, positive=log)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log:
            ax.set_yscale("log")
        elif i == 0:
            ax.set_ylim(accuracy_floor(variants), 100.0)
        elif zoom is not None:
            ax.set_ylim(*zoom)
            ax.set_title("zoom on the best variants", fontsize="medium")
    fig.suptitle(f"{title} ({_seeds_text(variants)})")
    # Outside the axes: a legend inside would hide some variant's curve.
    axes[-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return png_bytes(fig)


def png_bytes(fig: Any, dpi: int = DPI) -> bytes:
    """A figure as PNG bytes, identical across reruns (no software/version stamp)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def plot_curves(summary: Summary, out_dir: Path) -> list[Path]:
    """Write ``accuracy.png`` and ``loss.png`` into ``out_dir``; return their paths."""
    variants = [v for v in summary["variants"] if v["curves"]["epoch"]]
    if not variants:
        raise UserError("The summary has no variant with a finished epoch: nothing to plot.")
    from torchkron.experiments.mnist.against import data_title

    title = data_title(summary)  # "MNIST", "Fashion-MNIST", "MNIST, pixels permuted (seed 0)"
    plots = {
        ACCURACY_PLOT: _figure(
            variants, "test_accuracy", "test accuracy (%)", f"{title} test accuracy", log=False
        ),
        LOSS_PLOT: _figure(
            variants, "test_loss", "test loss (NLL)", f"{title} test loss", log=True
        ),
    }
    paths = []
    for name, data in plots.items():
        path = out_dir / name
        atomic_write_bytes(path, data)
        paths.append(path)
    return paths
