"""kronify on torch's own nn.Transformer (no optional packages needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchkron
from torchkron import KronLinear, kronify, merge


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def transformer(seed: int = 0) -> nn.Transformer:
    torch.manual_seed(seed)
    return nn.Transformer(
        d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
        dim_feedforward=64, dropout=0.0, batch_first=True,
    ).eval()  # fmt: skip


def run(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(2, 6, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    out: torch.Tensor = model(src, tgt)
    return out


def kron_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, KronLinear)]


def test_transformer_forward_backward_and_counts():
    model = transformer()
    before = n_params(model)
    model, report = kronify(model, rank=2)
    # Per encoder layer: out_proj, linear1, linear2; per decoder layer two out_projs too.
    assert len(report.replaced) == 2 * 3 + 2 * 4
    mha = [r for r in report.skipped if r.kind == "MultiheadAttention"]
    assert len(mha) == 2 + 2 * 2
    assert all("packed in_proj_weight" in r.reason for r in mha)
    assert report.params_before == before
    assert report.params_after == n_params(model) < before
    model.train()
    run(model).square().mean().backward()
    assert all(model.get_submodule(n).factor_0.grad is not None for n in kron_names(model))


def test_transformer_merge_is_to_linear_per_layer():
    model, _ = kronify(transformer(), rank=2)
    expected = {n: model.get_submodule(n).to_linear().weight for n in kron_names(model)}
    with torch.no_grad():
        y = run(model)
    merge(model)
    assert not kron_names(model)
    for name, weight in expected.items():
        assert torch.equal(model.get_submodule(name).weight, weight)
    with torch.no_grad():
        torch.testing.assert_close(run(model), y)


def test_transformer_save_load_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    model, _ = kronify(transformer(), rank={r"encoder\..*": 3, ".*": 1})
    with torch.no_grad():
        y = run(model)
    torchkron.save(model, tmp_path / "t.safetensors")
    again = torchkron.load(tmp_path / "t.safetensors", transformer(seed=1)).eval()
    assert kron_names(again) == kron_names(model)
    assert again.encoder.layers[0].linear1.rank == 3
    with torch.no_grad():
        assert torch.equal(run(again), y)


def test_transformer_half_conversion_failure_leaves_it_unchanged(monkeypatch):
    model = transformer()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    real = torchkron.surgery.build.nearest_kronecker
    calls: list[int] = []

    def fail_later(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(torchkron.surgery.build, "nearest_kronecker", fail_later)
    with pytest.raises(RuntimeError, match="out of memory"):
        kronify(model)
    assert not kron_names(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
