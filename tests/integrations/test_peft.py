"""PEFT LoRA on top of KronLinear."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

import torch
from peft import LoraConfig, PeftModel

import torchkron
from torchkron import KronLinear, kronify
from torchkron.integrations import hf
from torchkron.integrations import peft as tkpeft

from .models import build, inputs, output


def test_plain_peft_rejects_kronlinear_and_registration_fixes_it():
    import peft

    model, _ = kronify(build("gpt2"), target=r".*mlp\..*")
    with pytest.raises(ValueError, match="is not supported"):
        peft.get_peft_model(model, LoraConfig(r=4, target_modules=["c_fc"]))
    model, _ = kronify(build("gpt2"), target=r".*mlp\..*")
    pm = peft.get_peft_model(model, tkpeft.register(LoraConfig(r=4, target_modules=["c_fc"])))
    layer = pm.base_model.model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, tkpeft.KronLoraLinear)
    assert isinstance(layer.base_layer, KronLinear)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_lora_on_kronified_forward_backward(kind):
    model, _ = kronify(build(kind), rank=2)
    with torch.no_grad():
        kronified = output(model, kind)
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    pm = tkpeft.get_peft_model(model, config)
    lora_layers = [m for m in pm.modules() if isinstance(m, tkpeft.KronLoraLinear)]
    assert len(lora_layers) >= 8
    if kind == "gpt2":  # "all-linear" leaves the LM head alone, as PEFT does
        assert "lm_head" not in config.target_modules
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n for n in trainable)
    pm.train()
    output(pm, kind).square().mean().backward()
    layer = lora_layers[0]
    assert layer.lora_A["default"].weight.grad.abs().sum() > 0
    assert layer.base_layer.factor_0.grad is None  # frozen base
    # The adapter changes the output; disabling it gives the kronified model back.
    pm.eval()
    with torch.no_grad():
        assert not torch.equal(output(pm, kind), kronified)
        with pm.disable_adapter():
            assert torch.equal(output(pm, kind), kronified)


def test_merge_and_unload_needs_torchkron_merge_first():
    model, _ = kronify(build("gpt2"), rank=2)
    pm = tkpeft.get_peft_model(
        model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    with torch.no_grad():
        expected = output(pm, "gpt2")
    with pytest.raises(ValueError, match="a LoRA delta cannot be folded into Kronecker factors"):
        pm.merge_and_unload()
    torchkron.merge(pm)
    dense = pm.merge_and_unload()
    assert not any(isinstance(m, KronLinear | tkpeft.KronLoraLinear) for m in dense.modules())
    with torch.no_grad():
        torch.testing.assert_close(output(dense, "gpt2"), expected, rtol=1e-4, atol=1e-5)


def test_adapter_save_and_reload(tmp_path):
    model, _ = kronify(build("bert"), rank=2)
    model.save_pretrained(tmp_path / "base")
    pm = tkpeft.get_peft_model(
        model, LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False)
    )
    pm.eval()
    with torch.no_grad():
        expected = pm(**inputs("bert")).logits
    pm.save_pretrained(tmp_path / "adapter")
    base = hf.from_pretrained(tmp_path / "base")
    config = tkpeft.register(LoraConfig.from_pretrained(tmp_path / "adapter"))
    again = PeftModel.from_pretrained(base, tmp_path / "adapter", config=config).eval()
    with torch.no_grad():
        assert torch.equal(again(**inputs("bert")).logits, expected)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq", "lora_ga"])
def test_inits_that_rewrite_the_base_weight_are_refused_on_a_kronlinear(init):
    model, _ = kronify(build("bert"), rank=2)
    config = LoraConfig(r=4, target_modules=["query"])
    config.init_lora_weights = init  # set after __post_init__: corda/loftq need extra configs
    with pytest.raises(
        ValueError,
        match=rf"KronLoraLinear: init_lora_weights='{init}' writes a residual into the base "
        r"layer's weight, but a KronLinear's weight is rebuilt from its factors on every access",
    ):
        tkpeft.get_peft_model(model, config)


def test_inits_that_keep_the_base_weight_match_the_base_at_init():
    model, _ = kronify(build("bert"), rank=2)
    with torch.no_grad():
        expected = output(model, "bert")
    for init in ("eva", "orthogonal"):
        pm = tkpeft.get_peft_model(
            kronify(build("bert"), rank=2)[0], LoraConfig(r=4, target_modules=["query"],
                                                          init_lora_weights=init)
        )  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(output(pm.eval(), "bert"), expected)


def test_reloading_an_adapter_without_register_names_register(tmp_path):
    import peft

    model, _ = kronify(build("bert"), rank=2)
    message = (
        r"KronLinear is not supported by PEFT's LoRA unless registered on the config: use "
        r"torchkron\.integrations\.peft\.get_peft_model\(model, config\), or "
        r"torchkron\.integrations\.peft\.register\(config\)"
    )
    with pytest.raises(ValueError, match=message):
        peft.get_peft_model(model, LoraConfig(r=4, target_modules=["query"]))
    model, _ = kronify(build("bert"), rank=2)
    pm = tkpeft.get_peft_model(model, LoraConfig(r=4, target_modules=["query"]))
    pm.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        PeftModel.from_pretrained(kronify(build("bert"), rank=2)[0], tmp_path)
