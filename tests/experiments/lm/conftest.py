"""The LM tests' text: a few words in random order, a corpus a tiny GPT learns in steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis"]


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(WORDS), (1500,), generator=g).tolist()
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "input.txt").write_text(" ".join(WORDS[i] for i in idx) + "\n")
    return folder
