"""``torchkron sweep``: the grid, the frontier computed from run files, and the command
end to end on a tiny synthetic MNIST-format dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.experiments.run_factory import make_record
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.mnist.frontier import (
    budget_levels,
    frontier_markdown,
    frontier_summary,
    pareto_front,
    plot_frontier,
)
from torchkron.experiments.mnist.sweep import (
    DEFAULT_RANKS,
    DEFAULT_WIDTHS,
    Grid,
    dense_config,
    grid_specs,
    kron_config,
)
from torchkron.experiments.mnist.variants import SEED_VARIANTS, MLPSpec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--epochs", "2", "--batch-size", "32", "--test-batch-size", "50", "--quiet"]
TWO = ["--only", "kron-k2-r1-untied-denseout", "dense-h8"]


# --- the grid --------------------------------------------------------------------------


def test_default_grid():
    specs = grid_specs(Grid())
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 45
    assert [s.name for s in specs if s.family == "dense-width"] == [
        f"dense-h{h}" for h in DEFAULT_WIDTHS
    ]
    kron = [s for s in specs if s.family != "dense-width"]
    # Ranks 1-8 for every k, 16 too for k = 3 (fixed: the committed runs are this grid).
    assert DEFAULT_RANKS == {2: (1, 2, 4, 8), 3: (1, 2, 4, 8, 16), 4: (1, 2, 4, 8)}
    assert len(kron) == 4 * 2 * 2 + 5 * 2 + 4 * 2  # k=2 tied and untied; k=3, 4 untied
    assert {s.family for s in kron if s.hidden.linear.tied} == {
        "kron-k2-tied-denseout",
        "kron-k2-tied-kronout",
    }
    assert all(s.hidden.weights() < 784 * 625 for s in kron)
    assert next(s for s in specs if s.name == "kron-k4-r8-untied-kronout").weights() == 1055
    # Every seed variant is a grid point with the same layers, named in its description.
    for seed in SEED_VARIANTS:
        (same,) = [s for s in specs if (s.hidden, s.output) == (seed.hidden, seed.output)]
        assert same.description.endswith(f"the seed's {seed.name}")
    assert {
        s.name: s.description.rsplit(" ", 1)[-1] for s in specs if "the seed's" in s.description
    } == {
        "dense-h625": "original",
        "kron-k2-r1-tied-denseout": "one-kron-mat",
        "kron-k2-r1-untied-denseout": "two-kron-mat",
        "kron-k2-r1-tied-kronout": "one-kron-mat-out-kron",
        "kron-k2-r1-untied-kronout": "two-kron-mat-out-kron",
    }


def test_grid_subsets():
    grid = Grid(factors=(3,), ranks=(2, 4), ties=("untied", "tied"), outputs=("kron",), widths=())
    assert [s.name for s in grid_specs(grid)] == [
        "kron-k3-r2-untied-kronout",
        "kron-k3-r4-untied-kronout",
    ]
    only = Grid(only=("kron-k2-r1-*", "dense-h64"))
    assert [s.name for s in grid_specs(only)] == [
        "dense-h64",
        "kron-k2-r1-untied-denseout",
        "kron-k2-r1-untied-kronout",
        "kron-k2-r1-tied-denseout",
        "kron-k2-r1-tied-kronout",
    ]
    # Ranks whose input-hidden layer is as big as the dense one are dropped.
    assert [s.name for s in grid_specs(Grid(factors=(2,), ranks=(349, 350), widths=()))] == [
        "kron-k2-r349-untied-denseout",
        "kron-k2-r349-untied-kronout",
        "kron-k2-r349-tied-denseout",
        "kron-k2-r350-tied-denseout",
        "kron-k2-r349-tied-kronout",
        "kron-k2-r350-tied-kronout",
    ]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (Grid(only=("kron-k9-*",)), "--only 'kron-k9-*' matches no config of the grid"),
        (Grid(factors=(5,)), "784 -> 625 cannot be split into 5 factors"),
        (Grid(factors=(1,)), "--factors must be 2 or more"),
        (Grid(factors=(3,), ties=("tied",), widths=()), "The grid is empty"),
    ],
)
def test_grid_errors(grid, message):
    with pytest.raises(UserError, match=message.replace("*", r"\*")):
        grid_specs(grid)


def test_cli_list(capsys):
    assert main(["sweep", "--list", "--only", "dense-h1", "--seeds", "2", "--epochs", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "dense-h1        794  dense 784x1 and 1x10 (794 weights)",
        "1 configs x 2 seed(s) = 2 runs, 6 epochs.",
    ]


# --- the frontier from fabricated runs ------------------------------------------------


def test_pareto_front_and_budgets():
    points = [("a", 100, 90.0), ("b", 200, 89.0), ("c", 200, 95.0), ("d", 50, 80.0)]
    points += [("e", 400, 95.0), ("f", 800, 97.0)]
    assert pareto_front(points) == ["d", "a", "c", "f"]
    assert pareto_front([("y", 10, 1.0), ("x", 10, 1.0)]) == ["x"]
    assert budget_levels([794, 496_250]) == [
        1_000,
        3_000,
        10_000,
        30_000,
        100_000,
        300_000,
        1_000_000,
    ]
    assert budget_levels([285, 300]) == [300]
    assert budget_levels([]) == []


def _record(spec: MLPSpec, seed: int, final: float) -> dict[str, Any]:
    return make_record(
        spec, seed, [final - 1.0, final], test_loss=[0.8, 0.4], train_loss=[1.0, 0.5]
    )


#: Final accuracies per seed: Kronecker wins at small budgets, dense at the largest.
FINALS: dict[str, tuple[MLPSpec, list[float]]] = {
    s.name: (s, acc)
    for s, acc in [
        (dense_config(1, order=1), [40.0, 41.0, 42.0]),
        (dense_config(8, order=8), [90.0, 90.2, 90.4]),
        (dense_config(625, order=625), [98.3, 98.4, 98.5]),
        (kron_config(2, 1, False, "dense", order=2000), [97.0, 97.2, 97.4]),
        (kron_config(2, 4, False, "dense", order=2004), [97.8, 97.9, 98.0]),
        (kron_config(2, 1, True, "dense", order=2201), [94.8, 95.0, 95.2]),
        (kron_config(3, 1, False, "dense", order=3000), [95.0, 95.1, 95.2]),
        (kron_config(2, 1, False, "kron", order=2100), [93.0, 93.1, 93.2]),
    ]
}


def _summary() -> dict[str, Any]:
    records = [_record(s, i, a) for s, accs in FINALS.values() for i, a in enumerate(accs)]
    return frontier_summary(records, generated_at="2026-01-01T00:00:00+00:00")


def test_frontier_summary_points_front_budgets_and_findings():
    summary = _summary()
    points = {v["name"]: v["point"] for v in summary["variants"]}
    assert points["kron-k2-r4-untied-denseout"] | {"flops": 0} == {
        "series": "kron-k2-untied-denseout",
        "kind": "kron",
        "factors": 2,
        "rank": 4,
        "tied": False,
        "output": "dense",
        "width": None,
        "hidden_weights": 5600,
        "flops": 0,
        "seed_variant": None,
    }
    assert points["dense-h625"]["seed_variant"] == "original"
    assert points["kron-k2-r1-tied-denseout"]["seed_variant"] == "one-kron-mat"
    assert points["dense-h8"]["flops"] == 2 * (784 * 8 + 8 * 10)
    assert summary["pareto"] == [
        "dense-h1",
        "kron-k2-r1-untied-kronout",
        "kron-k3-r1-untied-denseout",
        "kron-k2-r1-untied-denseout",
        "kron-k2-r4-untied-denseout",
        "dense-h625",
    ]
    budgets = {b["budget"]: b for b in summary["budgets"]}
    assert sorted(budgets) == [1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
    assert budgets[10_000]["best_dense"] == "dense-h8"
    assert budgets[10_000]["best_kron"] == "kron-k2-r1-untied-denseout"
    assert budgets[10_000]["kron_minus_dense"] == pytest.approx(7.0)
    assert budgets[10_000]["beyond_noise"] is True
    assert budgets[1_000_000]["best"] == "dense-h625"
    answers = {f["id"]: (f["holds"], f["answer"]) for f in summary["findings"]}
    assert answers == {
        "kron-vs-dense": (
            True,
            "Kronecker wins at weight budgets <= 3,000, <= 10,000, <= 30,000, <= 100,000, "
            "<= 300,000; dense wins at <= 1,000,000; within seed noise at no budget.",
        ),
        "kron-vs-lowrank": (None, "Not tested: needs both kinds."),
        "more-factors": (
            True,
            "Yes: 1 of 1 such configs are on the Pareto front (kron-k3-r1-untied-denseout).",
        ),
        "higher-rank": (
            True,
            "Yes: 1 of 1 such configs are on the Pareto front (kron-k2-r4-untied-denseout).",
        ),
        "tying": (False, "No: none of the 1 such configs is on the Pareto front."),
        "kron-output": (
            True,
            "Yes: 1 of 1 such configs are on the Pareto front (kron-k2-r1-untied-kronout).",
        ),
    }
    tying = next(f for f in summary["findings"] if f["id"] == "tying")
    assert tying["evidence"] == (
        "kron-k2-r1-tied-denseout vs kron-k2-r1-untied-denseout: -2.20 pp (beyond seed "
        "noise), 6,950 vs 7,650 weights"
    )


def test_frontier_markdown_and_plot_are_deterministic():
    a, b = _summary(), _summary()
    text = frontier_markdown(a)
    assert text == frontier_markdown(b)
    assert "| `dense-h625` (= original) | dense-width | 496,250 |" in text
    assert "| 10,000 | `kron-k2-r1-untied-denseout` 97.20 (7,650) | `dense-h8` 90.20 (6,352)" in (
        text
    )
    png = plot_frontier(a)
    assert png.startswith(PNG_SIGNATURE)
    assert png == plot_frontier(b)


# --- the command end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"))


def _sweep(synth: Path, out: Path, seeds: int, *extra: str) -> int:
    args = ["sweep", "--data-dir", str(synth), "--out", str(out), "--seeds", str(seeds)]
    return main([*args, "--jobs", "1", *TWO, *FAST, *extra])


def _runs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "runs").glob("*.json"))}


def test_sweep_end_to_end_resumes_without_redoing_runs(synth, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert _sweep(synth, out, 1) == 0
    first = _runs(out)
    assert sorted(first) == ["dense-h8--seed0.json", "kron-k2-r1-untied-denseout--seed0.json"]
    record = json.loads(first["kron-k2-r1-untied-denseout--seed0.json"])
    assert (record["family"], record["order"], record["complete"]) == (
        "kron-k2-untied-denseout",
        2001,
        True,
    )
    assert record["command"].startswith("torchkron sweep --data-dir")
    for name in ("summary.json", "frontier.md", "frontier.png", "sweep.log"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert [v["name"] for v in summary["variants"]] == ["dense-h8", "kron-k2-r1-untied-denseout"]
    assert summary["kind"] == "frontier"

    # Without --resume it refuses; with it, a second seed is added and seed 0 is kept.
    assert _sweep(synth, out, 2) == 2
    assert "already holds runs" in capsys.readouterr().err
    log_before = (out / "sweep.log").read_text()
    assert _sweep(synth, out, 2, "--resume") == 0
    second = _runs(out)
    assert len(second) == 4
    assert {k: second[k] for k in first} == first  # finished runs are not redone
    session = (out / "sweep.log").read_text()[len(log_before) :]
    assert session.splitlines()[0].endswith(
        "--seeds 2 --jobs 1 " + " ".join(TWO + FAST) + " --resume"
    )
    assert "= 8 epochs, 4 already done" in session
    trained = [line for line in session.splitlines() if " epoch " in line]
    assert [line.split("] ")[1].split("  ")[0] for line in trained] == [
        "kron-k2-r1-untied-denseout seed 1 epoch 1/2",
        "kron-k2-r1-untied-denseout seed 1 epoch 2/2",
        "dense-h8 seed 1 epoch 1/2",
        "dense-h8 seed 1 epoch 2/2",
    ]

    # The frontier files are a pure function of the run files.
    md, png = (out / "frontier.md").read_bytes(), (out / "frontier.png").read_bytes()
    (out / "frontier.md").unlink()
    (out / "frontier.png").unlink()
    assert main(["sweep", "--out", str(out), "--report-only"]) == 0
    assert (out / "frontier.md").read_bytes() == md
    assert (out / "frontier.png").read_bytes() == png
    assert _runs(out) == second


def test_sweep_with_worker_processes_matches_in_process(synth, tmp_path):
    out = tmp_path / "par"
    assert _sweep(synth, out, 1, "--no-plots") == 0
    par = tmp_path / "par2"
    args = ["sweep", "--data-dir", str(synth), "--out", str(par), "--seeds", "1", "--jobs", "2"]
    assert main([*args, *TWO, *FAST, "--no-plots"]) == 0
    for name in ("dense-h8--seed0.json", "kron-k2-r1-untied-denseout--seed0.json"):
        a = json.loads((out / "runs" / name).read_text())["history"]
        b = json.loads((par / "runs" / name).read_text())["history"]
        assert a["test_loss"] == b["test_loss"]
    assert not (par / "frontier.png").exists()


def test_report_only_without_runs(tmp_path, capsys):
    assert main(["sweep", "--out", str(tmp_path / "none"), "--report-only"]) == 2
    assert capsys.readouterr().err == (
        f"torchkron sweep: error: No runs folder at {tmp_path / 'none' / 'runs'}; run "
        f"`torchkron sweep --out {tmp_path / 'none'}` first.\n"
    )
