"""Receptive fields of first-layer units: the Kronecker field is the row of torch.kron's W,
the saved file is small, and the figure (plain and permuted training) draws from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.cli import main
from torchkron.experiments.data.permute import pixel_permutation, unpermute_pixels
from torchkron.experiments.mnist.filters import (
    FIGURE_VARIANTS,
    UNITS,
    filter_rows,
    kron_fields,
    load_model,
    receptive_fields,
    top_units,
)
from torchkron.experiments.mnist.variants import build_mlp, get_variant


@pytest.mark.parametrize("rank", [1, 2])
def test_kron_field_is_the_row_of_the_materialised_weight(rank):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(rank, 25, 28, generator=gen, dtype=torch.float64)
    v = torch.randn(rank, 25, 28, generator=gen, dtype=torch.float64)
    weight = sum(torch.kron(u[r], v[r]) for r in range(rank))  # (625, 784)
    units = torch.tensor([0, 1, 24, 25, 26, 333, 624])
    fields = kron_fields(u, v, units)  # (7, 28, 28)
    torch.testing.assert_close(fields, weight[units].reshape(-1, 28, 28), rtol=0, atol=1e-12)
    # Unit (i, j) = row i*25 + j sees the outer product of U's row i and V's row j.
    i, j = divmod(333, 25)
    torch.testing.assert_close(fields[5], sum(torch.outer(u[r, i], v[r, j]) for r in range(rank)))


@pytest.mark.parametrize("variant", FIGURE_VARIANTS)
def test_receptive_fields_are_the_models_weight_rows(variant):
    torch.manual_seed(0)
    model = build_mlp(get_variant(variant)).double()
    units = top_units(model)
    assert units.shape == (UNITS,)
    norms = model.output.weight.detach().norm(dim=0)
    assert torch.equal(norms[units], torch.sort(norms, descending=True).values[:UNITS])
    expected = model.hidden.weight.detach()[units]  # (UNITS, 784), the materialised W
    torch.testing.assert_close(receptive_fields(model, units), expected, rtol=0, atol=1e-12)


def test_load_model_without_a_saved_model_says_how_to_get_one(tmp_path):
    with pytest.raises(Exception, match=r"No saved model at .*one-kron-mat--seed0.pt: reproduce"):
        load_model(tmp_path / "models" / "one-kron-mat--seed0.pt", "one-kron-mat")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("filters")
    synth = write_synthetic_mnist(root / "data")
    fast = ["--epochs", "1", "--batch-size", "32", "--test-batch-size", "50", "--jobs", "1"]
    common = ["--variants", *FIGURE_VARIANTS, "--seeds", "1", "--quiet", "--no-compare"]
    out = {"plain": root / "plain", "permuted": root / "permuted"}
    base = ["reproduce", "--data-dir", str(synth), *common, *fast, "--no-plots"]
    assert main([*base, "--out", str(out["plain"])]) == 0
    assert main([*base, "--out", str(out["permuted"]), "--permute-pixels", "9"]) == 0
    return out


def test_report_extracts_and_draws_the_fields(trained, capsys):
    plain, permuted = trained["plain"], trained["permuted"]
    argv = ["report", str(permuted), "--baseline", str(plain), "--filters-from"]
    assert main([*argv, str(plain), str(permuted)]) == 0
    npz, png = permuted / "filters.npz", permuted / "filters.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert npz.stat().st_size < 60_000  # factors and a few float16 fields, not the models
    with np.load(npz, allow_pickle=False) as data:
        assert str(data["0/title"]) == "MNIST"
        assert str(data["1/title"]) == "MNIST, pixels permuted (seed 9)"
        assert data["1/two-kron-mat/a"].shape == (1, 25, 28)
        assert data["0/original/fields"].shape == (UNITS, 784)
    rows = filter_rows(npz)
    # plain: one row per variant; permuted: in image space and as learned.
    assert len(rows) == 3 + 6
    labels = [label for label, _ in rows]
    assert labels[3] == "original\nMNIST, pixels permuted (seed 9)\nin image space"
    image, learned = rows[5][1], rows[6][1]  # one-kron-mat, permuted
    perm = pixel_permutation(9, 784)
    torch.testing.assert_close(image.flatten(1), unpermute_pixels(learned.flatten(1), perm))
    # The stored Kronecker fields are those of the saved model, unit for unit.
    model = load_model(permuted / "models" / "one-kron-mat--seed0.pt", "one-kron-mat")
    expected = model.hidden.weight.detach()[top_units(model)]
    torch.testing.assert_close(learned.flatten(1), expected)
    # The report without --filters-from redraws the same figure from filters.npz alone.
    before = png.read_bytes()
    png.unlink()
    assert main(["report", str(permuted), "--baseline", str(plain)]) == 0
    assert png.read_bytes() == before
    text = (permuted / "results.md").read_text()
    assert text.startswith("# torchkron: Kronecker-factored MLPs on MNIST, pixels permuted")
    assert f"## Against MNIST (`{plain.as_posix()}`)" in text
