"""Where a run keeps its files, and torch files written atomically."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkron.experiments.common.files import atomic_write_bytes
from torchkron.experiments.common.runs import run_filename

__all__ = ["RunPaths", "first_line", "save_torch"]


@dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its record, checkpoint and final model."""

    record: Path
    checkpoint: Path
    model: Path

    @classmethod
    def under(cls, out_dir: Path, variant: str, seed: int) -> RunPaths:
        stem = run_filename(variant, seed).removesuffix(".json")
        return cls(
            out_dir / "runs" / f"{stem}.json",
            out_dir / "checkpoints" / f"{stem}.pt",
            out_dir / "models" / f"{stem}.pt",
        )


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (a crash leaves the old file)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, at most 160 characters, for error messages."""
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else ""
