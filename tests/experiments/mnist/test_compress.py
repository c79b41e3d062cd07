"""``torchkron compress``: exact conversion of Kronecker-structured dense weights, the
checkpoint checks, and the command end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.cli import main
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.mnist.compress import convert, load_source
from torchkron.experiments.mnist.compress_report import _vs_scratch
from torchkron.experiments.mnist.variants import build_mlp, dense_baseline, get_variant
from torchkron.layers import KronLinear

FAST = ["--batch-size", "32", "--test-batch-size", "50", "--quiet", "--jobs", "1"]


def _kron_weights(model: torch.nn.Module, *, hidden_terms: int = 1) -> None:
    """Give a dense 784 -> 4 -> 10 MLP weights that are sums of Kronecker products of the
    balanced shapes: hidden (2x28) (x) (2x28), output (5x2) (x) (2x2)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        hidden = sum(
            torch.kron(torch.randn(2, 28, generator=g), torch.randn(2, 28, generator=g))
            for _ in range(hidden_terms)
        )
        model.hidden.weight.copy_(0.05 * hidden)
        model.output.weight.copy_(
            torch.kron(torch.randn(5, 2, generator=g), torch.randn(2, 2, generator=g))
        )


def _dense(hidden_terms: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_mlp(dense_baseline(4))
    _kron_weights(model, hidden_terms=hidden_terms)
    return model


def test_convert_recovers_kronecker_weights_exactly():
    dense = _dense()
    x = torch.randn(16, 784, generator=torch.Generator().manual_seed(2))
    converted, report = convert(dense, layers=("hidden", "output"), factors=2, rank=1)
    assert isinstance(converted.hidden, KronLinear)
    assert isinstance(converted.output, KronLinear)
    assert isinstance(dense.hidden, torch.nn.Linear)  # the source is left unchanged
    assert [(r.name, r.shapes) for r in report.replaced] == [
        ("hidden", ((2, 28), (2, 28))),
        ("output", ((5, 2), (2, 2))),
    ]
    assert all(r.approximation_error < 1e-6 for r in report.replaced)
    torch.testing.assert_close(converted(x), dense(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(converted.hidden.weight, dense.hidden.weight, rtol=0, atol=1e-6)


def test_convert_needs_the_rank_of_the_weights():
    dense = _dense(hidden_terms=2)
    x = torch.randn(16, 784, generator=torch.Generator().manual_seed(3))
    exact, report = convert(dense, layers=("hidden",), factors=2, rank=2)
    assert [r.name for r in report.replaced] == ["hidden"]
    assert report.replaced[0].approximation_error < 1e-6
    torch.testing.assert_close(exact(x), dense(x), rtol=1e-5, atol=1e-5)
    _, rank1 = convert(dense, layers=("hidden",), factors=2, rank=1)
    assert rank1.replaced[0].approximation_error > 0.1


# --- the checkpoint checks -------------------------------------------------------------


def _save(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def test_load_source_reads_a_dense_checkpoint(tmp_path):
    model = _dense()
    spec = dense_baseline(4)
    path = _save(
        tmp_path / "models" / "dense-h4--seed0.pt",
        {"spec": spec.to_dict(), "state_dict": model.state_dict()},
    )
    source = load_source(path)
    assert source.spec.hidden == spec.hidden
    assert source.spec.output == spec.output
    assert source.record is None
    assert torch.equal(source.state_dict["hidden.weight"], model.hidden.weight)
    assert len(source.sha256) == 64


def test_load_source_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError) as exc:
        load_source(missing)
    assert str(exc.value) == (
        f"No model checkpoint at {missing}. Train the dense model first with `torchkron "
        "reproduce --variants original` (it saves runs/mnist/models/original--seed0.pt), "
        "or pass --checkpoint with a dense model's .pt file."
    )
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"corrupt\.pt cannot be loaded as a torch checkpoint"):
        load_source(corrupt)
    other = _save(tmp_path / "other.pt", {"weights": torch.zeros(2)})
    with pytest.raises(UserError, match="is not a torchkron model file"):
        load_source(other)
    kron_spec = get_variant("two-kron-mat")
    kron = _save(
        tmp_path / "kron.pt",
        {"spec": kron_spec.to_dict(), "state_dict": build_mlp(kron_spec).state_dict()},
    )
    with pytest.raises(UserError) as exc:
        load_source(kron)
    assert str(exc.value) == (
        f"{kron} holds 'two-kron-mat', whose hidden layer is already Kronecker; compress "
        "converts dense models: pass a dense run's checkpoint such as "
        "runs/mnist/models/original--seed0.pt."
    )
    wrong = _save(
        tmp_path / "wrong.pt",
        {"spec": dense_baseline(5).to_dict(), "state_dict": _dense().state_dict()},
    )
    with pytest.raises(UserError, match="the saved weights do not fit its spec 'dense-h5'"):
        load_source(wrong)


# --- the command end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def checkpoint(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense-h4 trained for 2 epochs by ``torchkron train``, its weights then replaced
    by Kronecker products (the run record beside it stays, with its recipe)."""
    out = tmp_path_factory.mktemp("mnist")
    args = ["train", "--variant", "dense-h4", "--data-dir", str(synth), "--out", str(out)]
    assert main([*args, "--epochs", "2", *FAST[:-2]]) == 0
    path = out / "models" / "dense-h4--seed0.pt"
    saved = torch.load(path, weights_only=True)
    model = build_mlp(dense_baseline(4))
    _kron_weights(model)
    torch.save({"spec": saved["spec"], "state_dict": model.state_dict()}, path)
    return path


def _compress(synth: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    args = ["compress", "--checkpoint", str(checkpoint), "--data-dir", str(synth)]
    args += ["--out", str(out), "--ranks", "2", "1", "--epochs", "1", "--scratch-epochs", "2"]
    args += ["--scratch-seeds", "1", "--reuse-from", str(out.parent / "no-sweep")]
    return main([*args, *FAST, *extra])


def _runs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "runs").glob("*.json"))}


def test_compress_end_to_end(synth, checkpoint, tmp_path, capsys):
    out = tmp_path / "compress"
    assert _compress(synth, checkpoint, out) == 0
    runs = _runs(out)
    assert sorted(runs) == [
        "finetune-k2-r1-all--seed0.json",
        "finetune-k2-r2-all--seed0.json",
        "scratch-k2-r1-all--seed0.json",
        "scratch-k2-r2-all--seed0.json",
    ]
    record = json.loads(runs["finetune-k2-r1-all--seed0.json"])
    block = record["extra"]["compress"]
    assert (block["arm"], block["rank"], block["factors"]) == ("finetune", 1, 2)
    assert block["layers"] == ["hidden", "output"]
    assert block["source"]["epochs"] == 2
    assert block["shapes"] == {"hidden": [[2, 28], [2, 28]], "output": [[5, 2], [2, 2]]}
    assert max(block["approximation_error"].values()) < 1e-6
    # The weights were Kronecker: the converted net computes what the dense one did.
    assert block["converted"]["test_accuracy"] == block["dense"]["test_accuracy"]
    assert block["converted"]["test_loss"] == pytest.approx(block["dense"]["test_loss"], rel=1e-5)
    assert record["config"]["lr"] == 0.1
    assert len(record["history"]["epoch"]) == 1
    assert record["weights"] == 2 * 28 * 2 + 5 * 2 + 2 * 2
    scratch = json.loads(runs["scratch-k2-r1-all--seed0.json"])
    assert (scratch["config"]["lr"], scratch["config"]["epochs"]) == (1.0, 2)
    assert scratch["extra"]["compress"]["reused_from"] is None

    summary = json.loads((out / "compress.json").read_text())
    (group,) = summary["groups"]
    assert [(r["rank"], r["weights"]) for r in group["rows"]] == [(1, 126), (2, 252)]
    assert [f["id"] for f in group["findings"]] == [
        "finetune-vs-scratch",
        "conversion-alone",
        "finetune-recovers",
    ]
    assert group["findings"][1]["holds"] is True
    md = (out / "compress.md").read_text()
    assert (
        "Epochs per arm: (a) converted only: the dense model's 2 epochs, no more; (b) 2 dense "
        "+ 1 fine-tune epochs at lr 0.1; (c) 2 epochs from scratch at lr 1." in md
    )
    assert "| 1 | 126 | 25.2x | hidden 0.0000, output 0.0000 |" in md
    assert (out / "compress.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    log = (out / "compress.log").read_text().splitlines()
    assert log[0].startswith("$ torchkron compress --checkpoint")

    # Refuses to overwrite; --resume trains nothing and keeps every run.
    assert _compress(synth, checkpoint, out) == 2
    assert "already holds runs" in capsys.readouterr().err
    assert _compress(synth, checkpoint, out, "--resume") == 0
    assert _runs(out) == runs
    session = (out / "compress.log").read_text().splitlines()[len(log) :]
    assert not [line for line in session if " epoch " in line]

    # The report is a pure function of the run files.
    md_bytes, png = (out / "compress.md").read_bytes(), (out / "compress.png").read_bytes()
    (out / "compress.md").unlink()
    assert main(["compress", "--out", str(out), "--report-only"]) == 0
    assert (out / "compress.md").read_bytes() == md_bytes
    assert (out / "compress.png").read_bytes() == png

    # A second compress reuses the finished scratch runs of the same architecture.
    again = tmp_path / "again"
    assert _compress(synth, checkpoint, again, "--reuse-from", str(out)) == 0
    copied = json.loads((again / "runs" / "scratch-k2-r2-all--seed0.json").read_text())
    assert copied["extra"]["compress"]["reused_from"] == str(
        out / "runs" / "scratch-k2-r2-all--seed0.json"
    )
    assert copied["history"] == json.loads(runs["scratch-k2-r2-all--seed0.json"])["history"]
    text = (again / "compress.log").read_text()
    assert f"reused 2 finished run(s) from {out}" in text
    assert "scratch-k2-r1-all seed 0 epoch" not in text
    assert "2 scratch run(s) were copied from a sweep with the same recipe." in (
        (again / "compress.md").read_text()
    )


def test_compress_refuses_runs_of_another_checkpoint(synth, checkpoint, tmp_path, capsys):
    out = tmp_path / "c"
    assert _compress(synth, checkpoint, out, "--no-scratch", "--no-plots") == 0
    other = tmp_path / "models" / "other.pt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"]["hidden.bias"] = saved["state_dict"]["hidden.bias"] + 1.0
    _save(other, saved)
    assert _compress(synth, other, out, "--no-scratch", "--resume") == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"torchkron compress: error: {out / 'runs' / 'finetune-k2-r1-all--seed0.json'} was made "
        "from another checkpoint or architecture"
    )


def test_compress_help_explains_the_fine_tune_rate(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Adadelta learning rate of the fine-tuning (default 0.1, not the recipe's 1.0" in text
    assert "fine-tuning epochs after the conversion (default 5)" in text


def test_compress_cli_errors_are_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert main(["compress", "--checkpoint", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"torchkron compress: error: No model checkpoint at {missing}.")
    assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert main(["compress", "--factors", "1"]) == 2
    assert capsys.readouterr().err == (
        "torchkron compress: error: --factors must be 2 or more (1 factor is the dense "
        "layer), got 1.\n"
    )


def _row(rank: int, diff: float, beyond: bool) -> dict[str, Any]:
    return {
        "rank": rank,
        "finetune_minus_scratch": diff,
        "beyond_noise": beyond,
        "source": {"epochs": 35},
        "finetune": {"epochs": 5},
        "scratch": {"epochs": 35},
    }


def test_finetune_vs_scratch_answer_names_only_outcomes_that_occur() -> None:
    every = _vs_scratch([_row(1, -3.0, True), _row(2, -1.0, True)])
    assert every["answer"] == (
        "Scratch wins at every rank run (fine-tuned: 35 dense + 5 fine-tune epochs; "
        "scratch: 35 epochs)."
    )
    assert every["holds"] is False
    mixed = _vs_scratch([_row(1, 0.5, True), _row(2, 0.1, False), _row(4, 0.2, False)])
    assert mixed["answer"].startswith(
        "Fine-tuned wins at ranks 1; within seed noise at ranks 2, 4 ("
    )
    assert mixed["holds"] is True
