"""A fresh clone's `make reproduce`: untracked output, comparison with the committed
reference, resume, git stamp, the wall-time line and progress when piped."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from tests.experiments.run_factory import make_record
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.cli import main
from torchkron.experiments.common.environment import git_sha
from torchkron.experiments.common.progress import EpochEvent, Progress
from torchkron.experiments.common.runs import load_complete_runs
from torchkron.experiments.mnist.compare import compare_summaries, comparison_markdown
from torchkron.experiments.mnist.report import load_sessions, reproduction_session
from torchkron.experiments.mnist.summary import summarize
from torchkron.experiments.mnist.tables import results_markdown

ROOT = Path(__file__).resolve().parents[3]
FAST = ["--epochs", "2", "--batch-size", "32", "--test-batch-size", "50", "--jobs", "1"]
VARIANTS = ["--variants", "one-kron-mat", "dense-h9", "--seeds", "2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_reproduce_trains_into_untracked_folder_and_compares(synth, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A stand-in for the committed reference: an explicit --out results/mnist.
    argv = ["reproduce", "--data-dir", str(synth), "--out", "results/mnist", "--lr", "0.5"]
    code = main([*argv, *VARIANTS, *FAST, "--quiet", "--no-compare"])
    assert code == 0
    reference = _snapshot(tmp_path / "results" / "mnist")
    capsys.readouterr()

    code = main(["reproduce", "--data-dir", str(synth), *VARIANTS, *FAST])
    assert code == 0
    out = capsys.readouterr().out
    assert _snapshot(tmp_path / "results" / "mnist") == reference  # reference untouched
    new = tmp_path / "runs" / "mnist"
    for name in ("results.md", "summary.json", "accuracy.png", "loss.png", "comparison.md"):
        assert (new / name).is_file(), name
    assert len(list((new / "runs").glob("*.json"))) == 4
    comparison = (new / "comparison.md").read_text()
    assert comparison.startswith("# runs/mnist against the committed reference results/mnist")
    for variant in ("one-kron-mat", "dense-h9"):
        assert f"| `{variant}` |" in comparison
    assert "different recipe" in comparison  # the reference was trained with --lr 0.5
    # The table, the comparison and the results path end the output.
    assert "| variant | committed | new | difference (pp) | in pooled seed std | |" in out
    assert out.rstrip().endswith("results: runs/mnist/results.md")
    assert "one-kron-mat" in out.split("| variant | committed")[0]  # the report table

    # A second `make reproduce` (it passes --resume) keeps every finished run.
    before = _snapshot(new / "runs")
    code = main(["reproduce", "--data-dir", str(synth), "--resume", *VARIANTS, *FAST])
    assert code == 0
    assert _snapshot(new / "runs") == before


def test_make_reproduce_uses_untracked_folder_and_resumes():
    dry = subprocess.run(
        ["make", "-n", "reproduce", "STAMP=/dev/null"], cwd=ROOT, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    assert "torchkron reproduce --out runs/mnist --resume" in dry.stdout
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "runs/mnist/runs/original--seed0.json"], cwd=ROOT
    )
    assert ignored.returncode == 0  # runs/ is untracked
    results = subprocess.run(
        ["make", "-n", "results", "STAMP=/dev/null"], cwd=ROOT, capture_output=True, text=True
    )
    assert "torchkron report results/mnist" in results.stdout
    assert "reproduce" not in results.stdout  # the maintainers' path retrains nothing


def _summary(name: str, mean: float, std: float, seeds: int, lr: float = 1.0) -> dict:
    return {
        "name": name,
        "test_accuracy": {"mean": mean, "std": std},
        "seeds": list(range(seeds)),
        "config": {"epochs": 35, "lr": lr, "threads": 1},
    }


def test_comparison_numbers_and_markdown():
    reference = {"variants": [_summary("a", 98.0, 0.1, 3), _summary("gone", 50.0, 1.0, 3)]}
    new = {
        "variants": [
            _summary("a", 97.85, 0.1, 3),
            _summary("b", 90.0, 0.0, 1, lr=0.5),
        ]
    }
    rows, only_ref, only_new = compare_summaries(reference, new)
    (row,) = rows
    assert row.diff == pytest.approx(-0.15)
    assert row.pooled_std == pytest.approx(0.1)
    assert row.in_std == pytest.approx(-1.5)
    assert row.within_noise  # |diff| <= 2 pooled std
    assert (only_ref, only_new) == (["gone"], ["b"])
    text = comparison_markdown(Path("results/mnist"), Path("runs/mnist"), reference, new)
    assert (
        "| `a` | 98.00 ± 0.10 (n=3) | 97.85 ± 0.10 (n=3) | -0.15 | -1.50 | within seed noise |"
        in text
    )
    assert "All 1 variant(s) agree with the reference within seed noise." in text
    assert "Only in the reference (not trained here): gone." in text
    assert "Only here (not in the reference): b." in text


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_git_stamp_ignores_the_runs_own_output(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("src/a.py", "results/mnist/results.md", "elsewhere/out/x.json"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("v1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_sha(repo)
    assert clean is not None
    assert not clean.endswith("-dirty")
    (repo / "results/mnist/results.md").write_text("rewritten by the run\n")
    assert git_sha(repo) == clean  # results/ is the runs' own output
    (repo / "elsewhere/out/x.json").write_text("v2\n")
    assert git_sha(repo) == clean + "-dirty"
    assert git_sha(repo, ignore=[repo / "elsewhere" / "out"]) == clean  # --out elsewhere/out
    (repo / "src/a.py").write_text("v2\n")
    assert git_sha(repo, ignore=[repo / "elsewhere" / "out"]) == clean + "-dirty"


def _session(start: str, end: str, wall: float, runs: int = 2) -> dict:
    env = {"processor": "Test CPU", "cpu_count": 2, "torch": "2.13.0+cpu"}
    return {
        "command": "torchkron reproduce",
        "started_at": start,
        "finished_at": end,
        "wall_seconds": wall,
        "workers": 2,
        "runs": runs,
        "environment": env,
    }


def test_wall_time_is_one_complete_session_never_a_sum():
    records = [make_record("one-kron-mat", s, [90.0, 91.0]) for s in (0, 1)]
    for r in records:  # both runs inside 10:00-10:30
        r["started_at"], r["finished_at"] = "2026-01-01T10:01:00+00:00", "2026-01-01T10:20:00+00:00"
    full = _session("2026-01-01T10:00:00+00:00", "2026-01-01T10:30:00+00:00", 1800.0)
    later = _session("2026-01-02T09:00:00+00:00", "2026-01-02T09:00:05+00:00", 5.0)
    assert reproduction_session([full, later], records) == 0
    summary = summarize(records)
    summary["sessions"], summary["reproduction_session"] = [full, later], 0
    text = results_markdown(summary)
    assert (
        "Wall time of one complete reproduction: 30 min 00 s in one session on one machine "
        "(2 runs, 2 worker process(es); Test CPU, 2 CPUs, torch 2.13.0+cpu), command "
        "`torchkron reproduce`." in text
    )
    assert "together" not in text

    # A run resumed from an earlier session: no session covers everything.
    records[0]["started_at"] = "2026-01-01T09:00:00+00:00"
    assert reproduction_session([full, later], records) is None
    summary["reproduction_session"] = None
    text = results_markdown(summary)
    assert (
        "No single session trained every run here from start to end (the runs come from 2 "
        "recorded session(s) or were resumed), so the wall time of a complete reproduction is "
        "not known from these files. The last session took 5.0 s" in text
    )


def test_committed_reference_was_one_complete_session():
    reference = ROOT / "results" / "mnist"
    records = load_complete_runs(reference, "reproduce")
    sessions = load_sessions(reference)
    assert reproduction_session(sessions, records) == len(sessions) - 1


def _event(variant: str, seed: int, epoch: int, seconds: float) -> EpochEvent:
    return EpochEvent(variant, seed, epoch, 2, 0.5, 0.4, 90.0 + epoch, seconds)


def test_progress_piped_prints_one_line_per_run_with_measured_eta():
    err, out = io.StringIO(), io.StringIO()  # neither is a terminal
    progress = Progress(0, stream=err, out=out, workers=1)
    # Modelled costs 10 and 1: the slow variant runs first.
    for seed in (0, 1):
        progress.expect("slow", 10.0, 2, 0, seed=seed)
        progress.expect("fast", 1.0, 2, 0, seed=seed)
    assert progress.eta() is None  # nothing measured yet
    progress.epoch(_event("slow", 0, 1, 4.0))
    # slow measured 4 s/epoch; fast modelled 10x cheaper -> 0.4 s/epoch.
    # Left: slow 1 + 2 epochs x 4 s, fast 4 epochs x 0.4 s = 13.6 s.
    assert progress.eta() == pytest.approx(13.6)
    progress.epoch(_event("slow", 0, 2, 4.0))
    progress.epoch(_event("fast", 0, 1, 0.1))  # fast measured: 0.1 s/epoch
    assert progress.epoch_seconds("fast") == pytest.approx(0.1)
    # Left: slow seed 1 2 x 4 s, fast 3 x 0.1 s.
    assert progress.eta() == pytest.approx(8.3)
    progress.workers = 2  # spread over 2 workers, but not below the longest run left
    assert progress.eta() == pytest.approx(8.0)
    assert err.getvalue() == ""  # epoch lines only on a terminal
    lines = out.getvalue().splitlines()
    assert lines == [
        "run 1/4 done: slow seed 0, test accuracy 92.00%, 0:08 for 2 epoch(s); elapsed 0:00, "
        "ETA 0:10"
    ]


def test_progress_on_a_terminal_or_quiet(tmp_path):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err, out = Tty(), io.StringIO()
    log = tmp_path / "log"
    progress = Progress(0, stream=err, out=out, log_path=log)
    progress.expect("v", 1.0, 2, 0, seed=0)
    progress.epoch(_event("v", 0, 1, 1.0))
    assert "v seed 0 epoch 1/2" in err.getvalue()
    quiet_out = io.StringIO()
    quiet = Progress(0, quiet=True, out=quiet_out, log_path=log)
    quiet.expect("v", 1.0, 1, 0, seed=0)
    quiet.epoch(EpochEvent("v", 0, 1, 1, 0.5, 0.4, 91.0, 1.0))
    assert quiet_out.getvalue() == ""
    assert "run 1/1 done: v seed 0" in log.read_text()


def test_piped_reproduce_prints_run_lines_to_stdout(synth, tmp_path, capsys):
    out_dir = tmp_path / "piped"
    argv = ["reproduce", "--data-dir", str(synth), "--out", str(out_dir), "--no-compare"]
    code = main([*argv, *VARIANTS, *FAST])
    assert code == 0
    out = capsys.readouterr().out
    run_lines = [line for line in out.splitlines() if line.startswith("run ")]
    assert len(run_lines) == 4
    assert run_lines[-1].startswith("run 4/4 done: ")
    assert "ETA 0:00" in run_lines[-1]
    record = json.loads((out_dir / "runs" / "dense-h9--seed0.json").read_text())
    assert "-dirty" not in str(record["environment"]["git_sha"]) or _tree_dirty()


def _tree_dirty() -> bool:
    """Whether this checkout has changes outside the result folders (then -dirty is right)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    return any(
        not line[3:].startswith(("results/", "runs/", "benchmarks/results/"))
        for line in status.splitlines()
    )


def test_piped_reproduce_says_where_the_epoch_log_and_the_plots_are(synth, tmp_path, capsys):
    out_dir = tmp_path / "piped"
    argv = ["reproduce", "--data-dir", str(synth), "--out", str(out_dir), "--no-compare"]
    assert main([*argv, *VARIANTS, *FAST]) == 0
    lines = capsys.readouterr().out.splitlines()
    log = out_dir / "reproduce.log"
    # At the start, before any run: the command, then where the line per epoch goes.
    assert lines[0].startswith("$ torchkron reproduce")
    assert lines[1] == f"per-epoch progress: {log} (follow it with `tail -f {log}`)"
    assert "epoch 2/2" in log.read_text()  # and it is there
    # At the end: the plots, then the results file.
    assert lines[-2:] == [
        f"plots: {out_dir / 'accuracy.png'}, {out_dir / 'loss.png'}",
        f"results: {out_dir / 'results.md'}",
    ]
    assert (out_dir / "accuracy.png").is_file()
    assert (out_dir / "loss.png").is_file()
