"""kronify on Hugging Face models built from configs: GPT-2 (Conv1D, tied head), BERT, ViT."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import torchkron
from torchkron import KronLinear, kronify, merge
from torchkron.integrations import hf

from .models import VOCAB, build, output


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kron_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, KronLinear)]


@pytest.mark.parametrize("kind", ["gpt2", "bert", "vit"])
def test_kronify_forward_backward_and_real_counts(kind):
    model = build(kind)
    before = n_params(model)
    model, report = kronify(model, rank=2)
    assert report.params_before == before
    assert report.params_after == n_params(model) < before
    assert len(report.replaced) >= 8  # q/k/v/out (or c_attn/c_proj) and both MLP layers x 2
    model.train()
    output(model, kind).square().mean().backward()
    for name in kron_names(model):
        assert model.get_submodule(name).factor_0.grad is not None, name


def test_gpt2_conv1d_converted_head_tied_and_kept():
    model = build("gpt2")
    model, report = kronify(model)
    assert kron_names(model) == [
        f"transformer.h.{i}.{m}" for i in range(2)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]  # fmt: skip
    assert {r.kind for r in report.replaced} == {"Conv1D"}
    (head,) = report.skipped
    assert head.name == "lm_head"
    assert head.reason.startswith("weight is tied to transformer.wte.weight (a shared parameter)")
    assert model.lm_head.weight is model.transformer.wte.weight
    model.tie_weights()
    assert model.lm_head.weight is model.transformer.wte.weight
    model.resize_token_embeddings(VOCAB + 8)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model(torch.randint(0, VOCAB + 8, (1, 4))).logits.shape == (1, 4, VOCAB + 8)


def test_gpt2_target_mlp_only():
    _model, report = kronify(build("gpt2"), target=r".*mlp\..*")
    assert [r.name for r in report.layers] == [
        "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj",
        "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj",
    ]  # fmt: skip
    assert all(r.replaced for r in report.layers)


def test_conv1d_orientation_is_exact_on_a_kronecker_weight():
    torch.manual_seed(0)
    layer = Conv1D(6, 12).to(torch.float64)  # 12 -> 6, weight stored (in, out)
    w = torch.kron(torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64))
    with torch.no_grad():
        layer.weight.copy_(w.T)
    x = torch.randn(4, 12, dtype=torch.float64)
    expected = layer(x)
    net, report = kronify(nn.Sequential(layer), shapes=[(3, 4), (2, 3)])
    assert report.replaced[0].approximation_error < 1e-12
    torch.testing.assert_close(net(x), expected)


def test_bert_rank_pattern_and_head_skip():
    model, report = kronify(build("bert"), rank={"query": 4, "value": 3})
    layer0 = model.bert.encoder.layer[0]
    assert layer0.attention.self.query.rank == 4
    assert layer0.attention.self.value.rank == 3
    assert layer0.attention.self.key.rank == 1
    classifier = next(r for r in report.layers if r.name == "classifier")
    assert "out_features=3" in classifier.reason  # 3 classes: prime, not factorable
    with pytest.raises(ValueError, match="rank pattern 'qurey' matches no layer"):
        kronify(build("bert"), rank={"qurey": 4})


def test_vit_everything_but_the_head():
    model, report = kronify(build("vit"), exclude=["classifier"])
    assert "classifier" not in [r.name for r in report.layers]
    assert isinstance(model.classifier, nn.Linear)
    assert len(report.replaced) == 12


def test_budget_on_bert():
    model = build("bert")
    target = n_params(model) - 40_000
    model, report = kronify(
        model, target_params=target, exclude=["classifier", "bert.pooler.dense"]
    )
    assert report.params_after == n_params(model) <= target
    assert len({r.rank for r in report.replaced}) > 1  # ranks differ per layer
    _, report = kronify(build("bert"), max_error=0.9, exclude=["classifier"])
    assert all(r.approximation_error <= 0.9 for r in report.replaced)


@pytest.mark.parametrize("kind", ["gpt2", "bert", "vit"])
def test_save_pretrained_from_pretrained_bitwise(kind, tmp_path):
    model, _ = kronify(build(kind), rank=2)
    with torch.no_grad():
        expected = output(model, kind)
    model.save_pretrained(tmp_path)
    again = hf.from_pretrained(tmp_path).eval()
    assert kron_names(again) == kron_names(model)
    assert isinstance(again, type(model))
    with torch.no_grad():
        assert torch.equal(output(again, kind), expected)
    if kind == "gpt2":
        assert again.lm_head.weight is again.transformer.wte.weight


def test_from_pretrained_of_a_dense_checkpoint_is_plain(tmp_path):
    model = build("bert")
    model.save_pretrained(tmp_path)
    again = hf.from_pretrained(tmp_path)
    assert type(again) is type(model)
    assert not kron_names(again)


def test_merge_removes_plan_from_config(tmp_path):
    model, _ = kronify(build("gpt2"))
    assert model.config.torchkron_plan["layers"]
    merge(model)
    assert not hasattr(model.config, "torchkron_plan")


@pytest.mark.parametrize("kind", ["gpt2", "bert", "vit"])
def test_torchkron_save_load_round_trip(kind, tmp_path):
    model, _ = kronify(build(kind), rank=2)
    with torch.no_grad():
        expected = output(model, kind)
    torchkron.save(model, tmp_path / "m.safetensors")
    again = torchkron.load(tmp_path / "m.safetensors", build(kind, seed=1)).eval()
    with torch.no_grad():
        assert torch.equal(output(again, kind), expected)
    if kind == "gpt2":
        assert again.lm_head.weight is again.transformer.wte.weight


@pytest.mark.parametrize("kind", ["gpt2", "bert", "vit"])
def test_merge_is_to_linear_per_layer(kind):
    model, _ = kronify(build(kind), rank=2)
    expected = {n: model.get_submodule(n).to_linear() for n in kron_names(model)}
    kinds = {r.name: r.kind for r in kronify(build(kind), from_dense=False)[1].replaced}
    with torch.no_grad():
        y = output(model, kind)
    merge(model)
    assert not kron_names(model)
    for name, dense in expected.items():
        merged = model.get_submodule(name)
        assert type(merged).__name__ == kinds[name]
        weight = merged.weight.T if isinstance(merged, Conv1D) else merged.weight
        assert torch.equal(weight, dense.weight)
        assert torch.equal(merged.bias, dense.bias)
    with torch.no_grad():
        torch.testing.assert_close(output(model, kind), y)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_half_conversion_failure_leaves_the_model_unchanged(kind, monkeypatch):
    model = build(kind)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    calls = []
    real = torchkron.surgery.build.nearest_kronecker

    def fail_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("conversion failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(torchkron.surgery.build, "nearest_kronecker", fail_third)
    with pytest.raises(RuntimeError, match="conversion failed"):
        kronify(model)
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not hasattr(model.config, "torchkron_plan")


def test_meta_device_model_with_fresh_init():
    with torch.device("meta"):
        model = build("gpt2")
    model, report = kronify(model, from_dense=False, rank=2)
    assert model.transformer.h[0].mlp.c_fc.factor_0.is_meta
    assert report.params_after == n_params(model)


def test_from_pretrained_with_an_auto_class(tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = kronify(build("gpt2"), target=r".*mlp\..*", rank=3)
    model.save_pretrained(tmp_path)
    again = hf.from_pretrained(tmp_path, AutoModelForCausalLM).eval()
    assert type(again).__name__ == "GPT2LMHeadModel"
    assert again.transformer.h[1].mlp.c_proj.rank == 3
    with torch.no_grad():
        assert torch.equal(output(again, "gpt2"), output(model, "gpt2"))


def test_plain_from_pretrained_does_not_know_the_plan(tmp_path):
    from transformers import GPT2LMHeadModel

    model, _ = kronify(build("gpt2"), target=r".*mlp\..*")
    model.save_pretrained(tmp_path)
    plain = GPT2LMHeadModel.from_pretrained(tmp_path)  # re-initialises the MLP layers
    assert isinstance(plain.transformer.h[0].mlp.c_fc, Conv1D)
    assert plain.config.torchkron_plan["layers"]  # the plan is there for hf.from_pretrained
