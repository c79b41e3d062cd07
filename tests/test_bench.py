"""Smoke test of the benchmark suite on tiny shapes: output files and their schema.

No timing is asserted: these runs are far too short to mean anything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from torchkron.experiments import bench


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(
        [
            "--quick",
            "--out",
            str(tmp_path),
            "--min-run-time",
            "0.001",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            *extra,
        ]
    )


def test_quick_suite_writes_json_and_markdown(tmp_path, capsys):
    assert bench.main(_args(tmp_path, "--dtype", "float32,bfloat16")) == 0
    json_path = tmp_path / "bench-cpu-quick.json"
    md_path = tmp_path / "bench-cpu-quick.md"
    assert json_path.exists()
    assert md_path.exists()
    doc = json.loads(json_path.read_text())
    assert doc["schema"] == bench.SCHEMA
    env = doc["environment"]
    for key in ("torch", "threads", "git_sha", "processor", "device", "hostname"):
        assert key in env
    assert env["threads"] == 1
    assert doc["config"]["dtypes"] == ["float32", "bfloat16"]
    names = {s["name"] for s in doc["shapes"]}
    assert names == {s.name for s in bench.QUICK_SHAPES}
    results = doc["results"]
    # Every (shape, dtype, mode, contender) appears exactly once.
    keys = [(r["shape"], r["dtype"], r["mode"], r["contender"]) for r in results]
    assert len(keys) == len(set(keys))
    expected = len(bench.QUICK_SHAPES) * 2 * len(bench.MODES) * len(bench.contender_names())
    assert len(keys) == expected
    for r in results:
        assert r["status"] in ("ok", "skipped", "error")
        if r["status"] == "ok":
            assert r["median_s"] > 0
            assert r["flops"] > 0
            assert r["gflops_per_s"] > 0
            assert 0 < r["ratio_vs_best"] <= 1.0 + 1e-12
        else:
            assert r["reason"]
    ok = {
        (r["shape"], r["dtype"], r["mode"], r["contender"]) for r in results if r["status"] == "ok"
    }
    for dtype in ("float32", "bfloat16"):
        for mode in bench.MODES:
            assert ("quick-2f", dtype, mode, "KronLinear") in ok
            assert ("quick-2f", dtype, mode, "dense") in ok
            assert ("quick-2f", dtype, mode, "materialize") in ok
    # No contender computed a different function.
    assert not [r for r in results if r["status"] == "error"], [
        (r["contender"], r["reason"]) for r in results if r["status"] == "error"
    ]
    # The shape flagged as too large for dense skips the dense contenders, saying why.
    skipped = {
        r["contender"]: r["reason"]
        for r in results
        if r["shape"] == "quick-nodense" and r["status"] == "skipped"
    }
    assert {"dense", "materialize"} <= skipped.keys()
    assert "dense W" in skipped["dense"]
    kron_train = next(
        r
        for r in results
        if r["shape"] == "quick-nodense" and r["contender"] == "KronLinear" and r["mode"] == "train"
    )
    assert kron_train["auto_impl"] in ("bmm", "fused", "permute", "fastkron")
    assert kron_train["peak_step_bytes"] > 0
    assert kron_train["resident_bytes"] > 0
    assert any(g["goal"].startswith("training-step peak memory") for g in doc["goals"])
    md = md_path.read_text()
    assert "| quick-2f | KronLinear |" in md
    assert "## float32, train" in md
    assert "## bfloat16, forward" in md
    assert "dense W" in md
    assert "wrote" in capsys.readouterr().out


def test_shape_and_contender_selection(tmp_path):
    args = _args(
        tmp_path,
        "--shapes",
        "quick-2f",
        "--contenders",
        "dense,KronLinear",
        "--no-memory",
        "--tag",
        "Smoke Test",
    )
    assert bench.main(args) == 0
    doc = json.loads((tmp_path / "bench-cpu-smoke-test-quick.json").read_text())
    assert {r["contender"] for r in doc["results"]} == {"dense", "KronLinear"}
    assert all("peak_step_bytes" not in r for r in doc["results"])


def test_bad_options_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="unknown shapes"):
        bench.main(_args(tmp_path, "--shapes", "nope"))
    with pytest.raises(SystemExit, match="unknown dtype"):
        bench.main(_args(tmp_path, "--dtype", "float8"))
    with pytest.raises(SystemExit, match="unknown contenders"):
        bench.main(_args(tmp_path, "--contenders", "nope"))


def test_module_entry_point_lists_shapes():
    out = subprocess.run(
        [sys.executable, "-m", "torchkron.experiments.bench", "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for shape in bench.DEFAULT_SHAPES:
        assert shape.name in out
    assert "65536-b64" in out
    assert "(no dense)" in out


def test_import_torchkron_stays_light():
    code = (
        "import sys, torchkron; "
        "bad = [m for m in sys.modules if m.startswith(('matplotlib', 'torchkron.experiments', "
        "'pyfastkron', 'tltorch'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
