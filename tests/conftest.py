"""Shared test configuration."""

from __future__ import annotations

import os

import torch
from hypothesis import settings

# Fewer examples in CI keeps the suite fast; locally the default profile is used.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

torch.set_num_threads(min(2, torch.get_num_threads()))
