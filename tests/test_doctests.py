"""Every docstring example (``>>>``) in ``src/torchkron`` runs and prints what it shows.

One test per module (found by walking the package, so a new module is covered without
listing it). Examples see the module's globals, as ``pytest --doctest-modules`` gives
them; output is compared with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``. A module that
cannot import (its optional package is missing) has no examples to run here.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import torchkron

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = ["torchkron"]
    for info in pkgutil.walk_packages(torchkron.__path__, prefix="torchkron."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def _examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, name) if t.examples]


MODULES = _modules()


def _safe_examples(name: str) -> list[doctest.DocTest]:
    try:
        return _examples(name)
    except ImportError:
        return []


# A module that needs a missing optional package does not import; it has nothing to run.
WITH_EXAMPLES = [n for n in MODULES if _safe_examples(n)]


def test_the_walk_finds_the_packages() -> None:
    # A broken walk (e.g. a renamed package) would skip every example silently.
    for name in ("torchkron.functional._dispatch", "torchkron.layers.kron", "torchkron.surgery"):
        assert name in MODULES
    assert sum(len(t.examples) for n in WITH_EXAMPLES for t in _safe_examples(n)) >= 80


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name: str) -> None:
    tests = _examples(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    torch.manual_seed(0)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
