"""A tampered or foreign calibration file (issue 17): each constant's range is checked on
load; a bad value warns once, naming the file and the value, and falls back to the
default, so the first forward never crashes."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from tests.reference import random_factors, reference_weight

from torchkron.functional import _calibration, calibrate, kron_linear

DEFAULT_CPU = calibrate.DEFAULTS["cpu"]


@pytest.fixture
def calibration_file(tmp_path, monkeypatch):
    path = tmp_path / "calibration.json"
    monkeypatch.setenv(calibrate.ENV, str(path))
    _calibration.override(None)
    calibrate.reload()
    yield path
    calibrate.reload()


def _forward_is_correct() -> None:
    """The first forward (impl="auto" prices its plans with the constants) and a backward."""
    for grad in (False, True):
        factors = [f.requires_grad_(grad) for f in random_factors([(4, 5), (3, 6)], 2, seed=1)]
        x = torch.randn(7, 30, dtype=torch.float64)
        with torch.set_grad_enabled(grad):
            y = kron_linear(x, factors)
        torch.testing.assert_close(y, x @ reference_weight([f.detach() for f in factors]).T)
        if grad:
            y.sum().backward()


def _load_warns_once(path, text: str, match: str) -> dict[str, float]:
    path.write_text(text)
    calibrate.reload()
    with pytest.warns(UserWarning, match=match) as record:
        _forward_is_correct()
    got = calibrate.constants("cpu")
    assert len([w for w in record if "calibration file" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later lookups and forwards are silent
        _forward_is_correct()
        assert calibrate.constants("cpu") == got
    return got


def _escaped(path) -> str:
    return re.escape(str(path))


def _doc(**cpu: object) -> str:
    return json.dumps({"devices": {"cpu": {**DEFAULT_CPU, **cpu}}})


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("d_half", 1e300, r"d_half=1e\+300 \(allowed: 0\.001 to 1e\+06\)"),
        ("peak_flops", 5e-324, r"peak_flops=5e-324 \(allowed: 1e\+06 to 1e\+18\)"),
        ("bandwidth", 1e-30, r"bandwidth=1e-30 \(allowed: 1e\+06 to 1e\+15\)"),
        ("launch_s", 1e9, r"launch_s=1000000000\.0 \(allowed: 1e-09 to 1\)"),
        ("onednn_speedup", 0.0, r"onednn_speedup=0\.0 \(allowed: 0\.001 to 1000\)"),
        ("d_half", -4.0, r"d_half=-4\.0 \(allowed"),
        ("d_half", "32", r"d_half='32' \(not a number\)"),
        ("d_half", True, r"d_half=True \(not a number\)"),
        ("d_half", [32.0], r"d_half=\[32\.0\] \(not a number\)"),
        ("d_half", None, r"d_half=None \(not a number\)"),
    ],
)
def test_out_of_range_or_wrong_type_falls_back_per_constant(calibration_file, key, value, shown):
    match = (
        rf"calibration file {_escaped(calibration_file)}: .*devices\.cpu\.{shown}.*defaults? used"
    )
    good = "launch_s" if key != "launch_s" else "bandwidth"  # a valid non-default value
    fine = DEFAULT_CPU[good] * 2
    got = _load_warns_once(calibration_file, _doc(**{good: fine, key: value}), match)
    want = {**DEFAULT_CPU, good: fine}
    assert got == want  # only the bad constant falls back; the good ones are used


def test_huge_integer_falls_back(calibration_file):
    text = _doc().replace('"d_half": 32.0', '"d_half": ' + "9" * 400)
    assert "9" * 400 in text
    got = _load_warns_once(
        calibration_file, text, r"devices\.cpu\.d_half=an integer of 400 digits \(allowed"
    )
    assert got == DEFAULT_CPU


def test_deeply_nested_json_is_ignored(calibration_file):
    text = '{"devices": {"cpu": ' + "[" * 20_000 + "]" * 20_000 + "}}"
    got = _load_warns_once(
        calibration_file,
        text,
        rf"ignoring the calibration file {_escaped(calibration_file)} \(nested too deeply\).*bench "
        r"--calibrate",
    )
    assert got == DEFAULT_CPU


def test_oversized_file_is_not_read(calibration_file):
    text = json.dumps({"devices": {"cpu": DEFAULT_CPU}, "pad": "x" * (1 << 20)})
    got = _load_warns_once(
        calibration_file,
        text,
        rf"ignoring the calibration file {_escaped(calibration_file)} \(\d+ bytes, more than the "
        r"65536 a calibration takes\)",
    )
    assert got == DEFAULT_CPU


@pytest.mark.parametrize(
    ("doc", "shown"),
    [
        ([1, 2], r"expected an object with a 'devices' mapping"),
        ({"devices": [1]}, r"expected an object with a 'devices' mapping"),
    ],
)
def test_wrong_structure_is_ignored(calibration_file, doc, shown):
    match = rf"ignoring the calibration file {_escaped(calibration_file)} \({shown}\)"
    assert _load_warns_once(calibration_file, json.dumps(doc), match) == DEFAULT_CPU


def test_a_device_entry_that_is_not_an_object_warns(calibration_file):
    text = json.dumps({"devices": {"cpu": "fast", "cuda": {"peak_flops": 1e15}}})
    got = _load_warns_once(
        calibration_file, text, r"devices\.cpu='fast' \(not an object of constants\)"
    )
    assert got == DEFAULT_CPU
    assert calibrate.constants("cuda")["peak_flops"] == 1e15


def test_valid_file_is_used_silently(calibration_file):
    calibration_file.write_text(_doc(d_half=7.0, onednn_speedup=1.0))
    calibrate.reload()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert calibrate.constants("cpu") == {**DEFAULT_CPU, "d_half": 7.0}
        _forward_is_correct()


def test_override_applies_the_same_ranges_silently():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _calibration.override({"devices": {"cpu": {"d_half": 1e300, "launch_s": 2e-5}}})
        assert calibrate.constants("cpu") == {**DEFAULT_CPU, "launch_s": 2e-5}
        _forward_is_correct()
    finally:
        _calibration.override(None)
