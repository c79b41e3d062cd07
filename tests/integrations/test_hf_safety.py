"""HF checkpoints that are tampered, foreign or incomplete; configs and LM heads (issue 17)."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import safetensors.torch as safetensors_torch
import torch
import transformers
from torch import nn

import torchkron
from torchkron import KronLinear, kronify, merge
from torchkron.integrations import hf

from .models import VOCAB, build


def llama_like(cls: type, config_cls: type) -> nn.Module:
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    model: nn.Module = cls(config).eval()
    return model


def llama() -> nn.Module:
    return llama_like(transformers.LlamaForCausalLM, transformers.LlamaConfig)


def qwen2() -> nn.Module:
    return llama_like(transformers.Qwen2ForCausalLM, transformers.Qwen2Config)


def test_config_json_naming_an_unregistered_type_imports_nothing(tmp_path, monkeypatch):
    model, _ = kronify(build("gpt2"))
    model.save_pretrained(tmp_path)
    marker = tmp_path / "marker"
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["torchkron_plan"]["layers"][0]["source"] = "modeling_evil.Linear"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"the layer type 'modeling_evil\.Linear' \(a plan's"):
        hf.from_pretrained(tmp_path)
    assert not marker.exists()
    assert "modeling_evil" not in sys.modules


def test_a_llama_file_into_a_qwen2_model_names_the_bias_mismatch(tmp_path):
    model, _ = kronify(llama(), target=r".*self_attn\..*")
    torchkron.save(model, tmp_path / "llama.safetensors")
    base = qwen2()
    with pytest.raises(
        ValueError,
        match=r"apply_plan: model\.layers\.0\.self_attn\.q_proj has a bias in the model but "
        r"none in the plan; the checkpoint was made for another architecture \(e\.g\. a Llama",
    ):
        torchkron.load(tmp_path / "llama.safetensors", base)
    assert not any(isinstance(m, KronLinear) for m in base.modules())


def test_from_pretrained_lists_missing_factor_tensors(tmp_path):
    model, _ = kronify(build("gpt2"))
    model.save_pretrained(tmp_path)
    path = str(tmp_path / "model.safetensors")
    tensors = safetensors_torch.load_file(path)
    with safetensors_torch.safe_open(path, "pt") as f:
        meta = f.metadata()
    del tensors["transformer.h.1.mlp.c_fc.factor_0"], tensors["transformer.h.0.attn.c_attn.bias"]
    safetensors_torch.save_file(tensors, path, metadata=meta)
    with pytest.raises(
        ValueError,
        match=r"lacks 2 tensor\(s\) of its Kronecker layers: "
        r"transformer\.h\.0\.attn\.c_attn\.bias, transformer\.h\.1\.mlp\.c_fc\.factor_0; "
        r"they would be left uninitialised",
    ):
        hf.from_pretrained(tmp_path)


def test_kronify_leaves_the_callers_config_alone(tmp_path):
    config = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=4, vocab_size=VOCAB)
    model, _ = kronify(transformers.GPT2LMHeadModel(config))
    assert model.config is not config
    assert model.transformer.config is model.config  # every submodule shares the copy
    assert model.config.torchkron_plan["layers"]
    assert not hasattr(config, "torchkron_plan")
    dense = transformers.GPT2LMHeadModel(config)
    dense.save_pretrained(tmp_path)
    assert "torchkron_plan" not in json.loads((tmp_path / "config.json").read_text())
    again = hf.from_pretrained(tmp_path)
    assert not any(isinstance(m, KronLinear) for m in again.modules())


def test_output_embedding_stays_dense_by_default_and_resizes():
    model, report = kronify(llama())
    head = next(r for r in report.layers if r.name == "lm_head")
    assert not head.replaced
    assert head.reason.startswith(
        "the output embedding (get_output_embeddings(), the LM head) stays dense by default"
    )
    assert "include_output_embeddings=True" in head.reason
    model.resize_token_embeddings(VOCAB + 8)
    assert model.lm_head.out_features == VOCAB + 8


def test_a_converted_output_embedding_refuses_to_resize_before_changing_anything(tmp_path):
    model, _ = kronify(llama(), include_output_embeddings=True)
    assert isinstance(model.lm_head, KronLinear)
    with pytest.raises(
        ValueError,
        match=r"resize_token_embeddings: the output embedding \(get_output_embeddings\(\)\) is "
        r"a KronLinear, whose out_features is fixed by its factor shapes; nothing was changed",
    ):
        model.resize_token_embeddings(VOCAB + 8)
    assert model.model.embed_tokens.num_embeddings == VOCAB
    model.save_pretrained(tmp_path)  # the reloaded model refuses as well
    again = hf.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="nothing was changed"):
        again.resize_token_embeddings(VOCAB + 8)
    merge(model)  # dense again: resizing works
    model.resize_token_embeddings(VOCAB + 8)
    assert model.lm_head.weight.shape == (VOCAB + 8, 64)
