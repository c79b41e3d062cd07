"""Shared fixtures of the kernel tests."""

from __future__ import annotations

import pytest

from torchkron.functional import _calibration, calibrate, clear_weight_cache


@pytest.fixture
def default_constants():
    """The built-in cost-model constants (not this machine's calibration file) and an
    empty cache of W, both restored afterwards."""
    _calibration.override({"devices": calibrate.DEFAULTS})
    clear_weight_cache()
    yield
    _calibration.override(None)
    clear_weight_cache()
