"""Small HF models built from configs (random init; nothing is downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any

import torch
import transformers
from torch import nn

transformers.logging.set_verbosity_error()

VOCAB = 128


def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=32,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


def bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=32, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg).eval()


def vit() -> nn.Module:
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, num_labels=10,
    )  # fmt: skip
    return transformers.ViTForImageClassification(cfg).eval()


BUILDERS = {"gpt2": gpt2, "bert": bert, "vit": vit}


def inputs(kind: str, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    return {"input_ids": torch.randint(0, VOCAB, (2, 8), generator=g)}


def output(model: nn.Module, kind: str, seed: int = 0) -> torch.Tensor:
    logits: torch.Tensor = model(**inputs(kind, seed)).logits
    return logits


def build(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[kind]()
