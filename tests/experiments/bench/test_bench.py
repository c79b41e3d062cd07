"""Smoke test of the benchmark suite on tiny shapes: output files and their schema.

No timing is asserted: these runs are far too short to mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from torchkron.experiments import cli
from torchkron.experiments.bench import contenders, goals, report, suite
from torchkron.experiments.bench import shapes as bench_shapes
from torchkron.experiments.commands import bench
from torchkron.experiments.common.errors import UserError


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
    assert bench.run(_args(tmp_path, "--dtype", "float32,bfloat16")) == 0
    json_path = tmp_path / "bench-cpu-quick.json"
    md_path = tmp_path / "bench-cpu-quick.md"
    assert json_path.exists()
    assert md_path.exists()
    doc = json.loads(json_path.read_text())
    assert doc["schema"] == bench_shapes.SCHEMA
    env = doc["environment"]
    for key in ("torch", "threads", "git_sha", "processor", "device", "hostname"):
        assert key in env
    assert env["threads"] == 1
    assert doc["config"]["dtypes"] == ["float32", "bfloat16"]
    names = {s["name"] for s in doc["shapes"]}
    assert names == {s.name for s in bench_shapes.QUICK_SHAPES}
    results = doc["results"]
    # Every (shape, dtype, mode, contender) appears exactly once.
    keys = [(r["shape"], r["dtype"], r["mode"], r["contender"]) for r in results]
    assert len(keys) == len(set(keys))
    per_shape_dtype = sum(len(bench_shapes.modes_of(n)) for n in contenders.contender_names())
    assert len(keys) == len(bench_shapes.QUICK_SHAPES) * 2 * per_shape_dtype
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
        for mode in bench_shapes.MODES:
            assert ("quick-2f", dtype, mode, "KronLinear") in ok
            assert ("quick-2f", dtype, mode, "dense") in ok
        for mode in bench_shapes.MODES[:2]:
            assert ("quick-2f", dtype, mode, "materialize") in ok
            assert ("quick-2f", dtype, mode, "torchkron:materialize") in ok
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
    assert {"dense", "materialize", "torchkron:materialize", "torchkron:triton"} <= skipped.keys()
    assert "dense W" in skipped["dense"]
    kron_train = next(
        r
        for r in results
        if r["shape"] == "quick-nodense" and r["contender"] == "KronLinear" and r["mode"] == "train"
    )
    assert kron_train["auto_impl"] == "bmm"  # W would not be built for a no-dense shape
    assert kron_train["peak_step_bytes"] > 0
    assert kron_train["saved_bytes"] > 0
    assert set(doc["calibration"]) >= {"peak_flops", "d_half", "bandwidth", "launch_s"}
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
    assert bench.run(args) == 0
    doc = json.loads((tmp_path / "bench-cpu-smoke-test-quick.json").read_text())
    assert {r["contender"] for r in doc["results"]} == {"dense", "KronLinear"}
    assert all("peak_step_bytes" not in r for r in doc["results"])


def test_bad_options_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="unknown shapes"):
        bench.run(_args(tmp_path, "--shapes", "nope"))
    with pytest.raises(UserError, match="unknown dtype"):
        bench.run(_args(tmp_path, "--dtype", "float8"))
    with pytest.raises(UserError, match="unknown contenders"):
        bench.run(_args(tmp_path, "--contenders", "nope"))


@pytest.mark.parametrize("threads", ["-1", "0"])
def test_bad_threads_exit_2_with_a_message(tmp_path, capsys, threads):
    code = cli.main(["bench", "--quick", "--out", str(tmp_path), "--threads", threads])
    assert code == 2
    err = capsys.readouterr().err
    cpus = os.cpu_count() or 1
    assert err == (
        f"torchkron bench: error: --threads must be a positive number of intra-op threads, "
        f"got {threads}; omit it to use all {cpus} CPUs.\n"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("nonsense", "unknown --device 'nonsense'; use cpu, cuda or cuda:N (a torch device name)."),
        ("meta", "--device meta: the suite runs on cpu or cuda only; use one of those."),
    ],
)
def test_bad_device_exit_2_with_a_message(tmp_path, capsys, device, message):
    assert cli.main(["bench", "--quick", "--out", str(tmp_path), "--device", device]) == 2
    assert capsys.readouterr().err == f"torchkron bench: error: {message}\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_a_gpu_is_a_message(capsys):
    assert cli.main(["bench", "--quick", "--device", "cuda"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err


def test_module_entry_point_exits_2_on_bad_input():
    proc = subprocess.run(
        [sys.executable, "-m", "torchkron.experiments.commands.bench", "--device", "nonsense"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown --device 'nonsense'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_quick_run_without_out_never_writes_committed_results(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # a stray benchmarks/results/ would appear here
    args = _args(tmp_path, "--shapes", "quick-2f", "--contenders", "dense", "--no-memory")
    args.out = None
    assert bench.run(args) == 0
    assert (tmp_path / "torchkron-bench" / "bench-cpu-quick.json").is_file()
    assert not (tmp_path / "benchmarks").exists()
    assert report.default_out() == tmp_path / "torchkron-bench"


def test_calibrate_writes_constants_the_library_reads(tmp_path, monkeypatch):
    from torchkron.functional import calibrate

    path = tmp_path / "cal.json"
    args = _args(tmp_path, "--calibrate", "--calibration-file", str(path))
    assert bench.run(args) == 0
    doc = json.loads(path.read_text())
    cpu = doc["devices"]["cpu"]
    for key in ("peak_flops", "d_half", "bandwidth", "launch_s", "onednn_speedup"):
        assert cpu[key] > 0
    # The library reads the file named by $TORCHKRON_CALIBRATION (its default path).
    monkeypatch.setenv("TORCHKRON_CALIBRATION", str(path))
    try:
        calibrate.reload()
        assert calibrate.default_path() == path
        assert calibrate.constants("cpu")["peak_flops"] == cpu["peak_flops"]
    finally:
        monkeypatch.delenv("TORCHKRON_CALIBRATION")
        calibrate.reload()


def test_rank_and_gpu_shapes_are_listed():
    names = {s.name for s in bench_shapes.ALL_SHAPES}
    assert {"768-3072-r1-b1024", "768-3072-r4-b1024", "768-3072-r16-b1024"} <= names
    gpu = {(s.batch, s.name.rsplit("-b", 1)[0]) for s in bench_shapes.GPU_SHAPES}
    assert {(8192, "4096"), (16384, "4096"), (16384, "768-3072-r4")} <= gpu


def test_module_entry_point_lists_shapes():
    out = subprocess.run(
        [sys.executable, "-m", "torchkron.experiments.commands.bench", "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for shape in bench_shapes.DEFAULT_SHAPES:
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


def _row(contender: str, median_s: float, **extra: object) -> dict[str, object]:
    base = {"shape": "1024-b256", "dtype": "float32", "mode": "forward", "status": "ok"}
    return {**base, "contender": contender, "median_s": median_s, **extra}


@pytest.mark.parametrize(
    ("pick", "kron_s", "met_layer", "met_pick"),
    [
        ("bmm", 1.25, False, True),  # right choice; the layer's own timing 25% off (noise)
        ("materialize", 1.0, True, False),  # wrong choice at 2x: caught from the plans' times
    ],
)
def test_auto_goal_judges_the_choice_apart_from_the_layers_timing(
    pick, kron_s, met_layer, met_pick
):
    results = [
        _row("torchkron:bmm", 1.0),
        _row("torchkron:materialize", 2.0),
        _row("KronLinear", kron_s, auto_impl=pick, ratio_vs_best=1.0 / kron_s),
    ]
    found = {g["goal"]: g for g in goals.evaluate_goals(results)}
    layer = found["auto (KronLinear) within 10% of the faster of bmm and materialize"]
    choice = found["auto's pick within 10% of the faster of bmm and materialize (their times)"]
    assert layer["met"] is met_layer
    assert choice["met"] is met_pick
    assert choice["value"] == pytest.approx(1.0 if pick == "bmm" else 0.5)


@pytest.mark.parametrize("name", ["dense", "dense:onednn", "materialize", "torchkron:materialize"])
def test_contenders_holding_w_are_skipped_where_w_would_not_fit(name):
    # 65536 -> 65536: W alone would take 16 GiB (a run once died of it, out of memory).
    shape = next(s for s in bench_shapes.ALL_SHAPES if not s.dense)
    factors = [torch.randn(shape.rank, o, n) for o, n in shape.factors]
    bias = torch.zeros(shape.out_features)
    with pytest.raises(contenders.Skip, match=r"the dense W alone would take 16\.0 GiB"):
        contenders.build_contender(name, shape, factors, bias, torch.float32, torch.device("cpu"))


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    shapes = [s.name for s in bench_shapes.QUICK_SHAPES]
    assert len(shapes) >= 2
    args = [*("--contenders", "dense,KronLinear", "--shapes", ",".join(shapes), "--no-memory")]
    real = suite.bench_shape
    ran: list[str] = []
    killed: list[bool] = []

    def interrupted(shape, dtype, cfg, log, deadline=None):
        if shape.name == shapes[1] and not killed:
            killed.append(True)
            raise RuntimeError("killed")  # as a run cut short (a timeout, a crash)
        ran.append(shape.name)
        return real(shape, dtype, cfg, log, deadline)

    monkeypatch.setattr(suite, "bench_shape", interrupted)
    with pytest.raises(RuntimeError, match="killed"):
        bench.run(_args(tmp_path, *args))
    checkpoint = tmp_path / ".bench-cpu-quick.partial.json"
    assert json.loads(checkpoint.read_text())["done"] == [["float32", shapes[0]]]
    assert not (tmp_path / "bench-cpu-quick.json").exists()

    ran.clear()
    assert bench.run(_args(tmp_path, *args, "--resume")) == 0
    assert ran == shapes[1:]  # the first shape is not timed again
    doc = json.loads((tmp_path / "bench-cpu-quick.json").read_text())
    in_order = list(dict.fromkeys(r["shape"] for r in doc["results"]))
    assert in_order == shapes
    assert not checkpoint.exists()  # removed once the full results are written


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path, capsys):
    checkpoint = tmp_path / ".bench-cpu-quick.partial.json"
    checkpoint.write_text(json.dumps({"key": {"config": "other"}, "done": [], "results": []}))
    shape = bench_shapes.QUICK_SHAPES[0].name
    args = ["--contenders", "dense", "--shapes", shape, "--no-memory", "--resume"]
    assert bench.run(_args(tmp_path, *args)) == 0
    assert "from another configuration or commit; starting over" in capsys.readouterr().out
    doc = json.loads((tmp_path / "bench-cpu-quick.json").read_text())
    assert {r["shape"] for r in doc["results"]} == {shape}
