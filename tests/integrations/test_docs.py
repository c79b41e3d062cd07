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
