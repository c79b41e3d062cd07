"""Shared test configuration."""

from __future__ import annotations

import importlib.util
import os

import torch
from hypothesis import settings

# Without a GPU the Triton kernels are tested in Triton's CPU interpreter, which must be
# chosen before triton is first imported (torch._dynamo imports it along with torchkron).
if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Fewer examples in CI keeps the suite fast; locally the default profile is used.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

torch.set_num_threads(min(2, torch.get_num_threads()))
