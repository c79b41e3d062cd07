"""Every python block of docs/models.md runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("safetensors")

from . import models  # noqa: F401  (offline mode, quiet logging)

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_models_doc_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 10
    namespace: dict[str, object] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i}", "exec"), namespace)
    report = namespace["report"]
    assert report.replaced  # type: ignore[attr-defined]


def test_no_install_line_names_an_unpublished_package():
    # No "torchkron" package is published: `pip install "torchkron[hf]"` would install
    # nothing, or whatever someone else uploads under that name.
    root = DOC.parents[1]
    files = [root / "README.md", *root.glob("docs/*.md"), *root.glob("src/torchkron/**/*.py")]
    offenders = [str(f.relative_to(root)) for f in files if "torchkron[" in f.read_text()]
    assert offenders == []


def test_save_without_safetensors_says_how_to_install(monkeypatch):
    import sys

    import torch

    import torchkron

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(
        ImportError,
        match=re.escape(
            "torchkron.save/load need safetensors: pip install safetensors (or, in a clone of "
            "the torchkron repository, pip install -e '.[hf]')."
        ),
    ):
        torchkron.save(torch.nn.Linear(2, 2), "unused.safetensors")
