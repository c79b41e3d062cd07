"""What structure-aware training changes: init scales and one AdamW step's feature update.

For square layers of width 64 to 1024 (``in = out = width``) this measures

- the init: the std of the dense weight ``W`` each structured layer represents and of its
  outputs on ``N(0, 1)`` inputs, for the default ``init="variance"`` and for
  ``init="per-factor"``, beside ``nn.Linear``'s;
- the feature update: after one AdamW step on a fixed batch (MSE to a random target), the
  relative output change ``||h1 - h0|| / ||h0||`` of each structured layer divided by a
  dense ``nn.Linear``'s at the same base rate, with one learning rate for every tensor
  ("plain") and with :func:`torchkron.param_groups` ("rule").

``tests/test_optim.py`` asserts the property on the same cases (``relative_change``,
``CASES``). Writes ``benchmarks/results/feature-updates.{json,md}``; docs/training.md
shows the Markdown file (``make readme``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_updates.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT / "src"))

from torchkron import KronLinear, LowRankLinear, MonarchLinear, param_groups  # noqa: E402

WIDTHS = (64, 256, 1024)  # squares of powers of two: tied and sqrt(d) shapes exist
BATCH = 32
# The base rate shrinks as 1 / width (muP's Adam rate for a dense layer), so that the
# dense layer's step is equally small, and in its linear regime, at every width.
LR_TIMES_WIDTH = 0.02

# name -> builder(width, init): the structured layers the property is claimed for.
CASES: dict[str, Callable[[int, str], nn.Module]] = {
    "kron k=2 R=1": lambda d, init: KronLinear(d, d, bias=False, init=init),
    "kron k=2 R=4": lambda d, init: KronLinear(d, d, bias=False, rank=4, init=init),
    "kron k=2 tied": lambda d, init: KronLinear(d, d, bias=False, tied=True, init=init),
    "kron k=3 R=1": lambda d, init: KronLinear(d, d, bias=False, num_factors=3, init=init),
    "kron k=3 R=4": lambda d, init: KronLinear(d, d, bias=False, num_factors=3, rank=4, init=init),
    "low-rank r=sqrt(d)": lambda d, init: LowRankLinear(d, d, math.isqrt(d), False, init=init),
    "monarch b=sqrt(d)": lambda d, init: MonarchLinear(d, d, math.isqrt(d), False, init=init),
}


def batch(width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed ``(BATCH, width)`` input and regression target, both ``N(0, 1)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, width, generator=gen), torch.randn(BATCH, width, generator=gen)


def relative_change(
    layer: nn.Module, groups: list[dict[str, Any]], x: torch.Tensor, target: torch.Tensor
) -> float:
    """``||h1 - h0|| / ||h0||`` after one AdamW step on ``mean((layer(x) - target)**2)``."""
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    h0 = layer(x)
    torch.nn.functional.mse_loss(h0, target).backward()
    opt.step()
    with torch.no_grad():
        return float((layer(x) - h0).norm() / h0.norm())


def plain_groups(layer: nn.Module, lr: float) -> list[dict[str, Any]]:
    """One rate for every tensor: what training without the rule does."""
    return [{"params": list(layer.parameters()), "lr": lr}]


def update_ratios(width: int, init: str, seed: int = 0) -> dict[str, tuple[float, float]]:
    """``{case: (plain ratio, rule ratio)}``: each layer's relative change over dense's."""
    x, target = batch(width, seed)
    lr = LR_TIMES_WIDTH / width
    torch.manual_seed(seed)
    dense = nn.Linear(width, width, bias=False)
    ref = relative_change(dense, plain_groups(dense, lr), x, target)
    out = {}
    for name, build in CASES.items():
        ratios = []
        for rule in (False, True):
            torch.manual_seed(seed + 1)
            layer = build(width, init)
            groups = param_groups(layer, lr) if rule else plain_groups(layer, lr)
            ratios.append(relative_change(layer, groups, x, target) / ref)
        out[name] = (ratios[0], ratios[1])
    return out


def init_stats(width: int, init: str, seeds: int = 3) -> dict[str, tuple[float, float]]:
    """``{case: (std of W, std of the outputs)}`` over ``seeds`` draws, ``N(0, 1)`` inputs."""
    builders: dict[str, Callable[[int, str], nn.Module]] = {
        "nn.Linear": lambda d, _: nn.Linear(d, d, bias=False),
        **CASES,
    }
    out = {}
    for name, build in builders.items():
        ws, hs = [], []
        for seed in range(seeds):
            torch.manual_seed(seed)
            layer = build(width, init)
            x, _ = batch(width, seed)
            with torch.no_grad():
                ws.append(layer.weight.std().item())
                hs.append(layer(x).std().item())
        out[name] = (sum(ws) / seeds, sum(hs) / seeds)
    return out


def measure(widths: tuple[int, ...] = WIDTHS) -> dict[str, Any]:
    inits = ("variance", "per-factor")
    return {
        "widths": list(widths),
        "batch": BATCH,
        "lr_times_width": LR_TIMES_WIDTH,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "init": {i: {str(w): init_stats(w, i) for w in widths} for i in inits},
        "updates": {i: {str(w): update_ratios(w, i) for w in widths} for i in inits},
    }


def _tables(by_init: dict[str, Any], widths: list[str], cell: str) -> list[str]:
    """One table per init: a row per layer, a ``cell``-formatted pair per width."""
    head = "| layer | " + " | ".join(widths) + " |\n|---|" + "---:|" * len(widths) + "\n"
    out = []
    for init, by_width in by_init.items():
        rows = [
            f"| {name} | " + " | ".join(cell.format(*by_width[w][name]) for w in widths) + " |\n"
            for name in by_width[widths[0]]
        ]
        out += [f'`init="{init}"`:\n', head + "".join(rows)]
    return out


def render(doc: dict[str, Any]) -> str:
    """The Markdown tables of a ``measure`` result."""
    widths = [str(w) for w in doc["widths"]]
    return "\n".join(
        [
            "# Init scales and feature updates\n",
            f"Square layers, `{' / '.join(widths)}` wide; torch {doc['torch']}, "
            f"{doc['machine']}; `benchmarks/feature_updates.py`.\n",
            "## Init: std of W / std of the outputs (N(0, 1) inputs, 3 draws)\n",
            *_tables(doc["init"], widths, "{:.4f} / {:.3f}"),
            "## One AdamW step: relative output change over nn.Linear's, plain / rule\n\n"
            f"Batch {doc['batch']}, base rate `{doc['lr_times_width']} / width` for every "
            "tensor (plain) or from `param_groups` (rule); within 2x of dense is 0.50 to 2.00.\n",
            *_tables(doc["updates"], widths, "{:.2f} / {:.2f}"),
        ]
    )


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    doc = measure()
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "feature-updates.json", json.dumps(doc, indent=1) + "\n")
    _write(args.out / "feature-updates.md", render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
