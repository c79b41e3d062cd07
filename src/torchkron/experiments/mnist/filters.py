"""What the first layer looks at: receptive fields of hidden units, saved small and drawn.

Hidden unit ``u`` of a first layer ``W`` (625 x 784) responds to ``W[u] . x``: its 28x28
receptive field is ``W[u]`` reshaped to the image. For a Kronecker layer
``W = U (x) V`` (``U``, ``V`` 25x28, :func:`torch.kron`'s index convention)
``W[i*25 + j, p*28 + q] = U[i, p] V[j, q]``, so unit ``(i, j)``'s field is the outer
product ``U[i, :]^T V[j, :]``: a row filter times a column filter, read straight from
the factors (:func:`kron_fields`; a rank-R layer sums R such products).

A net trained on permuted pixels (``--permute-pixels``) learns fields over the permuted
pixel order; un-permuting them (:func:`~torchkron.experiments.data.permute.unpermute_pixels`)
shows what they look at in the image.

``filters.npz`` keeps only what the figure needs, from the models ``reproduce`` saves
(``DIR/models/<variant>--seed0.pt``, untracked): the factors of each Kronecker layer
(2 x 700 floats), and for a dense layer the fields of the units drawn (float16). The units
drawn are the :data:`UNITS` with the largest outgoing weight norm (the hidden-output
layer's columns), the units the classifier leans on most. ``filters.png`` is drawn from
``filters.npz`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_bytes
from torchkron.experiments.data.permute import pixel_permutation, unpermute_pixels
from torchkron.experiments.mnist.variants import MLP, build_mlp, get_variant
from torchkron.layers import KronLinear

__all__ = [
    "FIGURE_VARIANTS",
    "FILTERS_FILE",
    "UNITS",
    "draw_filters",
    "extract_filters",
    "kron_fields",
    "load_model",
    "receptive_fields",
    "top_units",
]

FILTERS_FILE = "filters.npz"
FIGURE_FILE = "filters.png"
#: The variants drawn: the dense net and the seed's two Kronecker input layers.
FIGURE_VARIANTS = ("original", "one-kron-mat", "two-kron-mat")
#: Units drawn per model.
UNITS = 12
SIDE = 28
FIGURE_DPI = 72


def kron_fields(a: Tensor, b: Tensor, units: Tensor) -> Tensor:
    """Receptive fields ``(n, 28, 28)`` of hidden units of ``W = sum_r a[r] (x) b[r]``.

    Args:
        a: first factor, ``(R, m1, n1)``; ``b``: second factor, ``(R, m2, n2)``.
        units: hidden-unit (row of ``W``) indices, ``(n,)``.
    """
    i, j = units // b.shape[1], units % b.shape[1]  # row u = i*m2 + j
    return torch.einsum("rnp,rnq->npq", a[:, i, :], b[:, j, :])  # (n, n1, n2)


def receptive_fields(model: MLP, units: Tensor) -> Tensor:
    """The first layer's fields of ``units``, flat ``(n, 784)``, in the input's pixel order."""
    hidden = model.hidden
    if isinstance(hidden, KronLinear) and hidden.num_factors == 2:
        a, b = hidden.factors
        return kron_fields(a.detach(), b.detach(), units).flatten(1)
    if isinstance(hidden, nn.Linear):
        return hidden.weight.detach()[units]
    raise UserError(f"no receptive fields for a first layer of type {type(hidden).__name__}")


def top_units(model: MLP, count: int = UNITS) -> Tensor:
    """The ``count`` hidden units with the largest outgoing weight norm, largest first."""
    weight = model.output.weight  # (10, 625)
    assert isinstance(weight, Tensor)
    norms = weight.detach().norm(dim=0)
    # stable: ties keep the lower index, so the choice is reproducible
    return torch.sort(norms, descending=True, stable=True).indices[:count]


def load_model(path: Path, variant: str) -> MLP:
    """The final model ``reproduce`` saved at ``path`` (``torch.load(weights_only=True)``)."""
    try:
        state = torch.load(path, weights_only=True)
        model = build_mlp(get_variant(variant))
        model.load_state_dict(state["state_dict"])
    except FileNotFoundError:
        raise UserError(
            f"No saved model at {path}: reproduce saves it when a run finishes; train "
            f"{variant} seed 0 into {path.parent.parent} first (models/ is not committed)."
        ) from None
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{path} is not a saved {variant} model ({type(exc).__name__}); retrain that run."
        ) from None
    return model


def _run_config(folder: Path, variant: str, seed: int) -> dict[str, Any]:
    record = json.loads((folder / "runs" / f"{variant}--seed{seed}.json").read_text())
    config: dict[str, Any] = record["config"]
    return config


def extract_filters(sources: Sequence[Path], out: Path, *, seed: int = 0) -> Path:
    """Write ``out`` (``filters.npz``) from the saved models of each folder in ``sources``.

    Each source is a reproduce folder holding ``models/<variant>--seed<seed>.pt`` for
    every variant of :data:`FIGURE_VARIANTS`; its runs' configs say what it trained on.
    """
    from torchkron.experiments.mnist.against import data_title

    arrays: dict[str, np.ndarray] = {"sources": np.array([str(i) for i in range(len(sources))])}
    for k, folder in enumerate(sources):
        config = _run_config(folder, FIGURE_VARIANTS[0], seed)
        title = data_title({"variants": [{"config": config}]})
        perm = config.get("permute_pixels")
        arrays[f"{k}/title"] = np.array(title)
        arrays[f"{k}/permute_pixels"] = np.array(-1 if perm is None else int(perm))
        for variant in FIGURE_VARIANTS:
            model = load_model(folder / "models" / f"{variant}--seed{seed}.pt", variant)
            units = top_units(model)
            arrays[f"{k}/{variant}/units"] = units.numpy()
            if isinstance(model.hidden, KronLinear):
                a, b = model.hidden.factors
                arrays[f"{k}/{variant}/a"] = a.detach().numpy()
                arrays[f"{k}/{variant}/b"] = b.detach().numpy()
            else:
                fields = receptive_fields(model, units)
                arrays[f"{k}/{variant}/fields"] = fields.numpy().astype(np.float16)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(out, buf.getvalue())
    return out


def _fields_of(data: Any, key: str) -> Tensor:
    """Flat fields ``(n, 784)`` of one model stored in ``filters.npz``."""
    units = torch.from_numpy(data[f"{key}/units"])
    if f"{key}/a" in data:
        a, b = (torch.from_numpy(data[f"{key}/{f}"]) for f in ("a", "b"))
        return kron_fields(a, b, units).flatten(1)
    return torch.from_numpy(data[f"{key}/fields"].astype(np.float32))


def filter_rows(path: Path) -> list[tuple[str, Tensor]]:
    """The figure's rows: (label, fields ``(n, 28, 28)`` in image space or as learned)."""
    with np.load(path, allow_pickle=False) as data:
        rows: list[tuple[str, Tensor]] = []
        for k in [str(s) for s in data["sources"]]:
            title, perm_seed = str(data[f"{k}/title"]), int(data[f"{k}/permute_pixels"])
            for variant in FIGURE_VARIANTS:
                fields = _fields_of(data, f"{k}/{variant}")
                if perm_seed < 0:
                    rows.append((f"{variant}\n{title}", fields.reshape(-1, SIDE, SIDE)))
                    continue
                perm = pixel_permutation(perm_seed, fields.shape[1])
                image = unpermute_pixels(fields, perm).reshape(-1, SIDE, SIDE)
                rows.append((f"{variant}\n{title}\nin image space", image))
                rows.append((f"{variant}\n{title}\nas learned", fields.reshape(-1, SIDE, SIDE)))
    return rows


def draw_filters(path: Path) -> Path:
    """Draw ``filters.png`` beside ``path`` (``filters.npz``); return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from torchkron.experiments.mnist.plots import png_bytes

    rows = filter_rows(path)
    cols = max(f.shape[0] for _, f in rows)
    width, height = 0.75 * cols + 2.0, 0.8 * len(rows) + 0.45  # inches
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (label, fields) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < fields.shape[0]:
                field = fields[c].numpy()
                scale = float(np.abs(field).max()) or 1.0
                ax.imshow(field, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(
        "First-layer receptive fields of the hidden units the output layer weighs most "
        "(red +, blue -, each on its own scale)",
        fontsize=9,
    )
    fig.subplots_adjust(
        # Margins in inches: room for the row labels and the title at any size.
        left=1.9 / width,
        right=0.99,
        bottom=0.05 / height,
        top=1 - 0.4 / height,
        wspace=0.08,
        hspace=0.12,
    )
    out = path.with_name(FIGURE_FILE)
    atomic_write_bytes(out, _palette_png(png_bytes(fig, FIGURE_DPI)))
    return out


def _palette_png(data: bytes, colours: int = 32) -> bytes:
    """``data`` (a PNG) reduced to ``colours`` colours: the permuted fields are pixel noise,
    which a full-colour PNG stores at several times the size."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        buf = io.BytesIO()
        image.convert("RGB").quantize(colours).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
