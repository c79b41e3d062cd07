"""The suite's GPU options (``--timer``, ``--graphs``, ``--budget``, ``--shape-set``) and
the GPU session script's CPU dry run.

No GPU here: the CUDA-only pieces (CUDA events, graph capture) are replaced by stand-ins
where a test needs them to run, so what is tested is the plumbing around them: which
modes exist, how rows, files and reports carry them, and what is refused on the CPU.
No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchkron.experiments.bench import goals, report, suite
from torchkron.experiments.bench import shapes as bench_shapes
from torchkron.experiments.commands import bench
from torchkron.experiments.common.errors import UserError

ROOT = Path(__file__).resolve().parents[3]
FAST = ("--min-run-time", "0.001", "--rounds", "1", "--warmup", "0", "--threads", "1")


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def _quick(tmp_path: Path, *extra: str) -> argparse.Namespace:
    return _parse("--quick", "--out", str(tmp_path), *FAST, "--no-memory", *extra)


def _cfg(**changes: object) -> suite.SuiteConfig:
    """A one-shape float32 CPU suite of nn.Linear, fast and without memory probes."""
    kw: dict[str, object] = {
        "device": torch.device("cpu"),
        "dtypes": [torch.float32],
        "shapes": [bench_shapes.QUICK_SHAPES[0]],
        "contenders": ["dense"],
        "threads": 1,
        "min_run_time": 0.001,
        "rounds": 1,
        "warmup": 0.0,
        "memory": False,
    }
    return suite.SuiteConfig(**{**kw, **changes})  # type: ignore[arg-type]


def test_timer_auto_is_events_on_cuda_and_benchmark_on_the_cpu():
    args = _parse()
    assert bench._gpu_options(args, torch.device("cuda"))["timer"] == "events"
    assert bench._gpu_options(args, torch.device("cpu"))["timer"] == "benchmark"
    forced = _parse("--timer", "benchmark", "--graphs", "--budget", "250")
    assert bench._gpu_options(forced, torch.device("cuda:0")) == {
        "timer": "benchmark",
        "graphs": True,
        "budget": 250.0,
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--timer", "events"), r"--timer events need a CUDA device, but --device is cpu; use"),
        (("--graphs",), r"--graphs need a CUDA device, but --device is cpu; use --device cuda"),
        (("--budget", "0"), r"--budget must be a finite number of seconds > 0, got 0.0; omit"),
        (("--budget", "nan"), r"--budget must be a finite number of seconds > 0, got nan"),
        (("--shape-set", "cpu"), r"--quick and --shape-set cpu both choose the shapes; pass one"),
    ],
)
def test_gpu_options_refused_with_the_fix(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        bench.run(_quick(tmp_path, *argv))


def test_shape_sets():
    cpu, cuda = bench_shapes.SHAPE_SETS["cpu"], bench_shapes.SHAPE_SETS["cuda"]
    assert bench_shapes.shape_set(None, "cpu") == cpu
    assert bench_shapes.shape_set(None, "cuda") == cuda
    assert bench_shapes.shape_set("priority", "cpu", quick=True) == bench_shapes.QUICK_SHAPES
    assert set(cpu) < set(cuda)
    priority = [s.name for s in bench_shapes.PRIORITY_SHAPES]
    assert len(priority) == len(set(priority)) == 18
    # the issue-11 goal shape first, the no-dense shape last; every name runnable by --shapes
    assert priority[0] in bench_shapes.BF16_GOALS
    assert priority[-1] == "65536-b64"
    assert set(priority) <= {s.name for s in bench_shapes.ALL_SHAPES}
    assert {s.name for s in bench_shapes.DEFAULT_SHAPES} <= set(priority)
    parsed = _parse("--shape-set", "priority")
    assert [s.name for s in bench_shapes.shape_set(parsed.shape_set, "cuda")] == priority


def test_graph_modes_are_rows_tables_and_goals_of_their_own(tmp_path, monkeypatch):
    # Graph capture needs CUDA; here the "replay" is the eager step itself.
    captured: list[object] = []

    def fake_replay(fn, device):
        captured.append(fn)
        return fn

    monkeypatch.setattr(suite, "cuda_graph_replay", fake_replay)
    cfg = _cfg(contenders=["dense", "KronLinear"], graphs=True)
    doc = suite.run_suite(cfg, log=lambda _: None)
    keys = [(r["mode"], r["contender"]) for r in doc["results"]]
    assert len(keys) == len(set(keys))
    for name in cfg.contenders:
        assert {m for m, c in keys if c == name} == set(bench_shapes.modes_of(name, graphs=True))
    assert len(captured) == 2 * len(cfg.contenders)  # forward and train, each contender
    graph_rows = [r for r in doc["results"] if r["mode"] in bench_shapes.GRAPH_MODES]
    assert graph_rows
    assert all(r["status"] == "ok" for r in graph_rows)
    assert doc["config"]["graphs"] is True
    md = report.markdown(doc)
    assert "## float32, forward_graph" in md
    assert "## float32, train_graph" in md
    assert "captured once as a CUDA graph and replayed" in md
    judged = {(g["goal"], g["mode"]) for g in doc["goals"]}
    assert ("KronLinear within 10% of the best contender", "train_graph") in judged


def test_event_timer_is_what_the_suite_times_with(monkeypatch):
    calls: list[tuple[object, float]] = []

    def fake_events(fn, device, min_run_time):
        fn()
        calls.append((device, min_run_time))
        return [2e-3] * 5

    monkeypatch.setattr(suite, "event_blocks", fake_events)
    cfg = _cfg(min_run_time=0.015, rounds=2, timer="events")
    doc = suite.run_suite(cfg, log=lambda _: None)
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    assert ok
    assert all(r["median_s"] == 2e-3 for r in ok)
    assert calls == [(torch.device("cpu"), 0.015)] * (2 * len(ok))
    assert doc["config"]["timer"] == "events"
    assert "between two CUDA events" in report.markdown(doc)


def test_files_of_runs_without_the_gpu_options_keep_their_form(tmp_path):
    assert bench.run(_quick(tmp_path, "--contenders", "dense", "--shapes", "quick-2f")) == 0
    doc = json.loads((tmp_path / "bench-cpu-quick.json").read_text())
    assert set(doc["config"]) == {
        "device",
        "dtypes",
        "threads",
        "min_run_time_s",
        "rounds",
        "warmup_s",
        "contenders",
        "tag",
        "train_flops",
    }
    assert "pairs_not_run" not in doc
    assert {r["mode"] for r in doc["results"]} == set(bench_shapes.modes_of("dense"))
    assert "`blocked_autorange(min_run_time=0.001)`" in report.markdown(doc)


def test_the_budget_cuts_off_later_shapes_and_resume_runs_them(tmp_path, monkeypatch, capsys):
    names = [s.name for s in bench_shapes.QUICK_SHAPES]
    clock = [1000.0]
    monkeypatch.setattr(suite.time, "monotonic", lambda: clock[0])
    real = suite.bench_shape
    ran: list[tuple[str, str]] = []

    def one_shape_per_budget(shape, dtype, cfg, log, deadline=None):
        ran.append((shape.name, str(dtype).removeprefix("torch.")))
        rows = real(shape, dtype, cfg, log, deadline)
        clock[0] += 100.0  # every pair "takes" 100 s
        return rows

    monkeypatch.setattr(suite, "bench_shape", one_shape_per_budget)
    args = ["--contenders", "dense,KronLinear", "--dtype", "float32,bfloat16", "--budget", "150"]
    assert bench.run(_quick(tmp_path, *args)) == 0
    # shape by shape under a budget: both dtypes of the first shape, then the time is up
    assert ran == [(names[0], "float32"), (names[0], "bfloat16")]
    doc = json.loads((tmp_path / "bench-cpu-quick.json").read_text())
    assert doc["config"]["budget_s"] == 150.0
    assert doc["pairs_not_run"] == 2 * (len(names) - 1)
    late = [r for r in doc["results"] if r["shape"] != names[0]]
    assert late
    assert {r["status"] for r in late} == {"skipped"}
    assert {r["reason"] for r in late} == {"not run: the time budget (--budget 150 s) ran out"}
    assert "time budget 150 s" in report.markdown(doc)
    out = capsys.readouterr().out
    assert "the same command with --resume runs them" in out
    checkpoint = tmp_path / ".bench-cpu-quick.partial.json"
    assert json.loads(checkpoint.read_text())["done"] == [
        ["float32", names[0]],
        ["bfloat16", names[0]],
    ]

    ran.clear()
    args[-1] = "1000"  # another budget may continue the run
    assert bench.run(_quick(tmp_path, *args, "--resume")) == 0
    assert [n for n, _ in ran] == [n for n in names[1:] for _ in range(2)]
    doc = json.loads((tmp_path / "bench-cpu-quick.json").read_text())
    assert doc["pairs_not_run"] == 0
    assert not [r for r in doc["results"] if "budget" in r.get("reason", "")]
    assert {r["status"] for r in doc["results"] if r["shape"] != "quick-nodense"} == {"ok"}
    assert not checkpoint.exists()


def test_a_budget_spent_inside_a_shape_skips_its_remaining_modes():
    cfg = _cfg(budget=5.0)
    rows = suite.bench_shape(cfg.shapes[0], torch.float32, cfg, lambda _: None, deadline=0.0)
    assert {(r["mode"], r["status"]) for r in rows} == {
        (m, "skipped") for m in bench_shapes.modes_of("dense")
    }


def test_bfloat16_gpu_goal():
    def row(mode: str, dtype: str, ratio: float) -> dict[str, object]:
        return {
            "shape": "4096-b16384",
            "dtype": dtype,
            "mode": mode,
            "contender": "KronLinear",
            "status": "ok",
            "median_s": 1.0,
            "ratio_vs_dense": ratio,
            "ratio_vs_best": 1.0,
        }

    rows = [row("train", "bfloat16", 3.5), row("train_graph", "bfloat16", 2.0)]
    rows.append(row("train", "float32", 9.0))  # the goal is about bfloat16 only
    found = [
        (g["mode"], g["value"], g["met"])
        for g in goals.evaluate_goals(rows)
        if g["goal"] == "KronLinear bfloat16 train >= 3x nn.Linear (GPU)"
    ]
    assert found == [("train", 3.5, True), ("train_graph", 2.0, False)]


def test_gpu_session_dry_run_runs_the_benchmark_on_the_cpu(tmp_path):
    # benchmarks/gpu.sh --dry-run without its correctness part (CHECK=0; that part is
    # tests/functional/test_triton.py::test_gpu_check_dry_run_passes_on_the_cpu).
    env = {**os.environ, "CHECK": "0", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)

    def dry_run(extra: list[str]) -> subprocess.CompletedProcess[str]:
        script = str(ROOT / "benchmarks" / "gpu.sh")
        command = ["bash", script, "--dry-run", str(tmp_path), *extra]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    extra = ["--shapes", "quick-2f,quick-nodense", "--contenders", "dense,torchkron:bmm,nope"]
    proc = dry_run(extra)
    # an unknown contender is refused by name, and the script reports the failing part
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "unknown contenders ['nope']" in proc.stdout
    assert "torchkron bench exited 2" in proc.stdout
    extra[-1] = "dense,torchkron:bmm"
    proc = dry_run(extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "gpu-env-cpu.txt").read_text().startswith("date: ")
    assert "wrote" in (tmp_path / "bench-cpu-gpu.log").read_text()
    doc = json.loads((tmp_path / "bench-cpu-gpu-quick.json").read_text())
    assert doc["config"]["tag"] == "gpu"
    assert doc["config"]["budget_s"] == 120.0
    assert doc["config"]["dtypes"] == ["bfloat16", "float32"]
    status = {
        (r["shape"], r["dtype"], r["contender"], r["mode"]): r["status"] for r in doc["results"]
    }
    assert status[("quick-2f", "bfloat16", "dense", "train")] == "ok"
    assert status[("quick-2f", "float32", "torchkron:bmm", "forward")] == "ok"
    assert status[("quick-nodense", "float32", "dense", "forward")] == "skipped"
    assert "| quick-2f |" in (tmp_path / "bench-cpu-gpu-quick.md").read_text()
