"""A small nanoGPT-style GPT whose linear layers all come from one factory.

The model follows Karpathy's nanoGPT ``model.py``: token + learned position embeddings,
``n_layer`` pre-LayerNorm blocks (causal self-attention, then a GELU MLP), a final
LayerNorm and a head tied to the token embedding. The four linear layers of a block
(``attn.qkv``, ``attn.proj``, ``mlp.fc``, ``mlp.proj``) are built by :func:`make_linear`
from a :class:`LinearSpec`: dense, Kronecker (any factors, rank, tying), low-rank or
Monarch. The head stays dense (tied to the embedding).

Init (``init="gpt2"``, nanoGPT's): dense weights and embeddings ``N(0, 0.02)``, the two
residual projections ``N(0, 0.02 / sqrt(2 n_layer))``, biases zero. A structured layer
draws its own init (matched to ``nn.Linear``'s variance) and is then rescaled so that
the dense weight it represents has the same std as the dense layer it replaces, each of
its multiplicative stages (factors) by the same ratio.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.layers import KINDS, LinearSpec
from torchkron.functional import dense_flops

__all__ = [
    "GPT",
    "KINDS",
    "ROLES",
    "GPTSpec",
    "LinearSpec",
    "layer_flops",
    "layer_weights",
    "make_linear",
]

#: The linear layers of a block, as (role, group); a group is what a LinearSpec replaces.
ROLES: tuple[tuple[str, str], ...] = (
    ("attn.qkv", "attn"),
    ("attn.proj", "attn"),
    ("mlp.fc", "mlp"),
    ("mlp.proj", "mlp"),
)
INITS = ("gpt2", "linear")


def make_linear(
    spec: LinearSpec, in_features: int, out_features: int, *, bias: bool = False
) -> nn.Module:
    """The one factory every linear layer of :class:`GPT` is built by.

    Args:
        spec: the structure.
        in_features: input size.
        out_features: output size.
        bias: learn an additive bias.

    Returns:
        ``nn.Linear``, :class:`torchkron.KronLinear`, :class:`torchkron.LowRankLinear` or
        :class:`torchkron.MonarchLinear`, initialised with ``nn.Linear``'s variance.

    Examples:
        >>> make_linear(LinearSpec("lowrank", rank=8), 128, 512)
        LowRankLinear(in_features=128, out_features=512, rank=8, bias=False)
    """
    return spec.build(in_features, out_features, bias=bias)


def layer_weights(spec: LinearSpec, in_f: int, out_f: int) -> int:
    """Stored weights of the layer ``make_linear`` builds (bias excluded)."""
    return spec.weights(in_f, out_f)


def layer_flops(spec: LinearSpec, in_f: int, out_f: int) -> int:
    """Forward FLOPs per token of the layer (bias excluded)."""
    return spec.flops(in_f, out_f)


def _linear_dict(spec: LinearSpec) -> dict[str, Any]:
    """A block linear as run files store it (the size-free fields; shapes never set)."""
    return {
        "kind": spec.kind,
        "factors": spec.factors,
        "rank": spec.rank,
        "tied": spec.tied,
        "nblocks": spec.nblocks,
    }


@dataclass(frozen=True)
class GPTSpec:
    """A GPT architecture (nanoGPT ``shakespeare_char`` CPU defaults).

    Attributes:
        vocab_size: number of token ids.
        block_size: context length.
        n_layer: transformer blocks.
        n_head: attention heads (divides ``n_embd``).
        n_embd: model width.
        mlp_hidden: MLP hidden width (0: ``4 * n_embd``).
        dropout: dropout probability (attention, residual, embedding).
        bias: biases in linear layers and LayerNorms (nanoGPT's recipe: none).
        attn: structure of ``attn.qkv`` and ``attn.proj``.
        mlp: structure of ``mlp.fc`` and ``mlp.proj``.
        init: ``"gpt2"`` (nanoGPT's N(0, 0.02)) or ``"linear"`` (``nn.Linear``'s).
    """

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_hidden: int = 0
    dropout: float = 0.0
    bias: bool = False
    attn: LinearSpec = field(default_factory=LinearSpec)
    mlp: LinearSpec = field(default_factory=LinearSpec)
    init: str = "gpt2"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}."
                )
        if self.n_embd % self.n_head:
            raise UserError(
                f"--n-embd {self.n_embd} is not divisible by --n-head {self.n_head}; pick a "
                "width that is a multiple of the head count."
            )
        if self.mlp_hidden < 0:
            raise UserError(f"--mlp-hidden must be 0 (4 * n_embd) or more, got {self.mlp_hidden}.")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}.")
        if self.init not in INITS:
            raise UserError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}.")
        for group in ("attn", "mlp"):
            if getattr(self, group).shapes is not None:
                raise UserError(
                    f"GPTSpec.{group} has explicit factor shapes, but one spec builds layers "
                    "of different sizes; give the factor count (factors=k) instead."
                )

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    def role_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in, out)`` of each block linear."""
        e, h = self.n_embd, self.hidden
        return {"attn.qkv": (e, 3 * e), "attn.proj": (e, e), "mlp.fc": (e, h), "mlp.proj": (h, e)}

    def role_spec(self, role: str) -> LinearSpec:
        return self.attn if role.startswith("attn") else self.mlp

    def weights_by_role(self) -> dict[str, int]:
        """Stored weights of each block linear, summed over the layers."""
        return {
            role: self.n_layer * layer_weights(self.role_spec(role), i, o)
            for role, (i, o) in self.role_shapes().items()
        }

    def flops_per_token(self) -> int:
        """Forward FLOPs per token: block linears, attention scores and mixing, head.

        Attention is counted over the full ``block_size`` context (as computed), the
        head as a dense ``n_embd x vocab`` matmul; LayerNorm, softmax and GELU excluded.
        """
        linears = sum(
            layer_flops(self.role_spec(r), i, o) for r, (i, o) in self.role_shapes().items()
        )
        attention = 2 * 2 * self.block_size * self.n_embd
        head = dense_flops(self.n_embd, self.vocab_size)
        return self.n_layer * (linears + attention) + head

    def to_dict(self) -> dict[str, Any]:
        converted: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        for group in ("attn", "mlp"):
            converted[group] = _linear_dict(getattr(self, group))
        return converted

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTSpec:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        for group in ("attn", "mlp"):
            if isinstance(kw.get(group), dict):
                kw[group] = LinearSpec(**kw[group])
        return cls(**kw)

    def with_(self, **changes: Any) -> GPTSpec:
        return replace(self, **changes)


class CausalSelfAttention(nn.Module):
    def __init__(self, spec: GPTSpec) -> None:
        super().__init__()
        e = spec.n_embd
        self.qkv = make_linear(spec.attn, e, 3 * e, bias=spec.bias)
        self.proj = make_linear(spec.attn, e, e, bias=spec.bias)
        self.n_head = spec.n_head
        self.dropout = spec.dropout
        self.resid_dropout = nn.Dropout(spec.dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, t, e = x.shape
        q, k, v = self.qkv(x).split(e, dim=2)
        hq, hk, hv = (
            z.view(b, t, self.n_head, e // self.n_head).transpose(1, 2) for z in (q, k, v)
        )
        y = F.scaled_dot_product_attention(
            hq, hk, hv, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(b, t, e)
        out: Tensor = self.resid_dropout(self.proj(y))
        return out


class MLP(nn.Module):
    def __init__(self, spec: GPTSpec) -> None:
        super().__init__()
        self.fc = make_linear(spec.mlp, spec.n_embd, spec.hidden, bias=spec.bias)
        self.proj = make_linear(spec.mlp, spec.hidden, spec.n_embd, bias=spec.bias)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dropout(self.proj(F.gelu(self.fc(x))))
        return out


class Block(nn.Module):
    def __init__(self, spec: GPTSpec) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(spec.n_embd, bias=spec.bias)
        self.attn = CausalSelfAttention(spec)
        self.ln_2 = nn.LayerNorm(spec.n_embd, bias=spec.bias)
        self.mlp = MLP(spec)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        out: Tensor = x + self.mlp(self.ln_2(x))
        return out


def _rescale(module: nn.Module, stages: int, ratio: float) -> None:
    """Multiply the weight a structured layer represents by ``ratio``: every weight
    parameter (factor) by ``ratio ** (1 / stages)``; a tied factor appears ``stages``
    times in the product and is scaled once, which gives the same ratio."""
    per = ratio ** (1.0 / stages)
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            if name != "bias":
                p.mul_(per)


class GPT(nn.Module):
    """nanoGPT's GPT with every block linear built by :func:`make_linear`.

    Args:
        spec: the architecture.

    Shape:
        - Input: ``(B, T)`` token ids, ``T <= block_size``.
        - Output: logits ``(B, T, vocab_size)``.

    Examples:
        >>> model = GPT(GPTSpec(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16))
        >>> model(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 10])
    """

    def __init__(self, spec: GPTSpec) -> None:
        super().__init__()
        self.spec = spec
        self.wte = nn.Embedding(spec.vocab_size, spec.n_embd)
        self.wpe = nn.Embedding(spec.block_size, spec.n_embd)
        self.drop = nn.Dropout(spec.dropout)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.n_layer))
        self.ln_f = nn.LayerNorm(spec.n_embd, bias=spec.bias)
        self.head = nn.Linear(spec.n_embd, spec.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied, as nanoGPT
        self._init_weights()

    def _init_weights(self) -> None:
        spec = self.spec
        if spec.init == "gpt2":
            for m in (self.wte, self.wpe):
                nn.init.normal_(m.weight, 0.0, 0.02)
        for block in self.blocks:
            assert isinstance(block, Block)
            layers = {
                "attn.qkv": block.attn.qkv,
                "attn.proj": block.attn.proj,
                "mlp.fc": block.mlp.fc,
                "mlp.proj": block.mlp.proj,
            }
            for role, layer in layers.items():
                if spec.init == "linear":
                    continue  # every layer keeps its nn.Linear-variance init
                residual = role.endswith("proj")
                std = 0.02 / math.sqrt(2 * spec.n_layer) if residual else 0.02
                lspec = spec.role_spec(role)
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, 0.0, std)
                else:
                    in_f = spec.role_shapes()[role][0]
                    _rescale(layer, lspec.stages(), std * math.sqrt(3.0 * in_f))
                bias = getattr(layer, "bias", None)
                if isinstance(bias, Tensor):
                    nn.init.zeros_(bias)

    def num_parameters(self) -> int:
        """Trainable numbers (the tied embedding/head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor) -> Tensor:
        _, t = idx.shape
        if t > self.spec.block_size:
            raise ValueError(f"GPT: sequence length {t} exceeds block_size {self.spec.block_size}.")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits: Tensor = self.head(self.ln_f(x))
        return logits
