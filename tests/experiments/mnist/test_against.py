"""A study set against a baseline study: advantage retained, tying, gap to original."""

from __future__ import annotations

import pytest
from tests.experiments.run_factory import make_record, write_finals

from torchkron.experiments.common.runs import load_complete_runs
from torchkron.experiments.mnist.against import against, data_title
from torchkron.experiments.mnist.summary import summarize


def _summary(tmp_path, name, finals, config=None):
    runs = tmp_path / name / "runs"
    write_finals(runs, finals)
    if config:  # re-stamp every record with the study's data config
        records = load_complete_runs(tmp_path / name, "reproduce")
        return summarize(
            [
                make_record(r["variant"], r["seed"], r["history"]["test_accuracy"], config=config)
                for r in records
            ]
        )
    return summarize(load_complete_runs(tmp_path / name, "reproduce"))


BASE = {
    "original": [98.4, 98.5, 98.3],
    "one-kron-mat": [97.9, 98.0, 97.8],
    "two-kron-mat": [97.8, 97.9, 97.7],
    "dense-h9": [93.9, 94.0, 93.8],
    "dense-h10": [93.8, 93.9, 93.7],
}


def test_advantage_share_tying_and_gap(tmp_path):
    base = _summary(tmp_path, "base", BASE)
    here = _summary(
        tmp_path,
        "here",
        {
            "original": [98.4, 98.5, 98.3],
            "one-kron-mat": [95.9, 96.0, 95.8],  # 2 pp over dense-h9: half of 4 pp
            "two-kron-mat": [94.8, 94.9, 94.7],  # 1 pp below one-kron: tying does not cost
            "dense-h9": [93.9, 94.0, 93.8],
            "dense-h10": [93.8, 93.9, 93.7],
        },
        config={"permute_pixels": 0},
    )
    result = against(here, base, "results/mnist")
    assert (result["title"], result["baseline_title"]) == (
        "MNIST, pixels permuted (seed 0)",
        "MNIST",
    )
    advantage, tying, gap = result["findings"]
    assert advantage["holds"] is True
    rows = {r["kron"]: r for r in advantage["rows"]}
    assert rows["one-kron-mat"]["advantage"] == pytest.approx(2.0)
    assert rows["one-kron-mat"]["baseline_advantage"] == pytest.approx(4.0)
    assert rows["one-kron-mat"]["share_retained"] == pytest.approx(0.5)
    assert (
        "one-kron-mat over dense-h9: +2.00 pp (2 x pooled std 0.20) here vs +4.00 pp"
        in (advantage["evidence"])
    )
    assert "50% of it retained" in advantage["evidence"]
    assert tying["holds"] is True
    assert gap["holds"] is False  # 2.5 and 3.6 pp behind original, tolerance 1 pp
    assert {r["variant"]: round(r["gap"], 2) for r in gap["rows"]} == {
        "one-kron-mat": -2.5,
        "two-kron-mat": -3.6,
    }


def test_advantage_gone_and_tying_costs(tmp_path):
    base = _summary(tmp_path, "base", BASE)
    here = _summary(
        tmp_path,
        "here",
        {
            "original": [90.0, 90.1, 89.9],
            "one-kron-mat": [85.0, 85.1, 84.9],
            "two-kron-mat": [87.0, 87.1, 86.9],  # tying costs 2 pp, beyond noise
            "dense-h9": [85.0, 85.1, 84.9],  # no advantage left
            "dense-h10": [85.0, 85.1, 84.9],
        },
    )
    advantage, tying, _ = against(here, base, "b")["findings"]
    assert advantage["holds"] is False
    assert {r["kron"]: round(r["share_retained"], 2) for r in advantage["rows"]} == {
        "one-kron-mat": 0.0,
        "two-kron-mat": 0.5,
    }
    assert tying["holds"] is False


def test_data_title_names_dataset_and_permutation():
    def summary(config):
        return {"variants": [{"config": config}]}

    assert data_title(summary({})) == "MNIST"
    assert data_title(summary({"dataset": "fashion-mnist"})) == "Fashion-MNIST"
    assert data_title(summary({"dataset": "fashion-mnist", "permute_pixels": 3})) == (
        "Fashion-MNIST, pixels permuted (seed 3)"
    )
