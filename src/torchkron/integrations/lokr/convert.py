"""LyCORIS LoKr state dicts <-> PEFT LoKr adapters (``nn.Linear`` layers).

Both store the same four-or-six matrices per layer (``lokr_w1`` or ``lokr_w1_a`` /
``lokr_w1_b``; ``lokr_w2`` or ``lokr_w2_a`` / ``lokr_w2_b``); they differ in key names and
in how the scale ``alpha / r`` is kept:

- LyCORIS: keys ``{prefix}_{module path with '.' -> '_'}.lokr_*`` plus an ``alpha`` tensor
  per layer; on load the rank ``r`` is the inner size of the decomposed side (``w1_a``
  first, else ``w2_a``), and a layer with both sides whole has scale 1 whatever
  ``alpha`` says.
- PEFT: keys ``base_model.model.{module path}.lokr_*`` (the saved-adapter form); ``r``
  and ``alpha`` come from the ``LoKrConfig`` (per layer through ``rank_pattern`` and
  ``alpha_pattern``), which also decides each side's shape and whether it is decomposed.

:func:`lycoris_to_peft` returns a ``LoKrConfig`` that makes exactly the file's shapes and
the state dict to load into it; :func:`load_lycoris` does both and returns the
``PeftModel``; :func:`peft_to_lycoris` goes the other way. Only LoKr on ``nn.Linear`` is
converted: Tucker cores, DoRA scales and convolutions are refused with the layer named.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["load_lycoris", "lycoris_to_peft", "peft_to_lycoris"]

_FACTOR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class _Layer:
    """One layer's LoKr factors and the scale ``dW = scale * kron(w1, w2)`` uses."""

    name: str
    tensors: dict[str, Tensor]  # subset of _FACTOR_KEYS
    scale: float

    @property
    def w1_shape(self) -> tuple[int, int]:
        t = self.tensors
        if "lokr_w1" in t:
            return (t["lokr_w1"].shape[0], t["lokr_w1"].shape[1])
        return (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])

    @property
    def w2_shape(self) -> tuple[int, int]:
        t = self.tensors
        if "lokr_w2" in t:
            return (t["lokr_w2"].shape[0], t["lokr_w2"].shape[1])
        return (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])

    @property
    def rank(self) -> int | None:
        """The inner size of the decomposed side (w1 first, as LyCORIS reads it)."""
        for key in ("lokr_w1_a", "lokr_w2_a"):
            if key in self.tensors:
                return int(self.tensors[key].shape[1])
        return None


def _lycoris_name(prefix: str, module_name: str) -> str:
    return f"{prefix}_{module_name}".replace(".", "_")


def _check_factors(name: str, t: Mapping[str, Tensor], linear: nn.Linear, where: str) -> None:
    """The factor set of one layer is complete and its shapes multiply to the layer's."""
    for side in ("1", "2"):
        whole, a, b = f"lokr_w{side}", f"lokr_w{side}_a", f"lokr_w{side}_b"
        have = [k for k in (whole, a, b) if k in t]
        if have not in ([whole], [a, b]):
            raise ValueError(
                f"{where}: layer {name!r} has {have or 'no'} for factor w{side}; LoKr stores "
                f"either {whole} or both {a} and {b}."
            )
        for k in have:
            if t[k].dim() != 2:
                raise ValueError(
                    f"{where}: {name}.{k} has shape {tuple(t[k].shape)}; only LoKr on "
                    f"nn.Linear (2-D factors) is converted."
                )
        if have == [a, b] and t[a].shape[1] != t[b].shape[0]:
            raise ValueError(
                f"{where}: {name}: {a} {tuple(t[a].shape)} and {b} {tuple(t[b].shape)} do "
                f"not multiply."
            )
    layer = _Layer(name, dict(t), 1.0)
    (ol, im), (ok, inn) = layer.w1_shape, layer.w2_shape
    if (ol * ok, im * inn) != (linear.out_features, linear.in_features):
        raise ValueError(
            f"{where}: {name}: kron(w1 {(ol, im)}, w2 {(ok, inn)}) is "
            f"{(ol * ok, im * inn)} but the layer is (out, in) = "
            f"{(linear.out_features, linear.in_features)}; is this file for this model?"
        )


def _read_lycoris(model: nn.Module, state_dict: Mapping[str, Tensor], prefix: str) -> list[_Layer]:
    where = "lycoris_to_peft"
    modules = {_lycoris_name(prefix, n): (n, m) for n, m in model.named_modules() if n}
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        lora_name, _, suffix = key.partition(".")
        if not isinstance(value, Tensor):
            raise ValueError(f"{where}: {key} is a {type(value).__name__}, not a tensor.")
        if suffix not in (*_FACTOR_KEYS, "alpha"):
            raise ValueError(
                f"{where}: key {key!r} is not part of a LoKr layer on nn.Linear (expected "
                f"{{name}}.{{{', '.join((*_FACTOR_KEYS, 'alpha'))}}}); Tucker cores "
                f"(lokr_t2), DoRA scales (dora_scale) and other LyCORIS algorithms are not "
                f"converted."
            )
        if lora_name not in modules:
            raise ValueError(
                f"{where}: {lora_name!r} names no module of {type(model).__name__} with "
                f"prefix {prefix!r} (LyCORIS names a module {prefix}_<path with '.' -> '_'>); "
                f"pass the model the file was trained on, or the file's prefix (prefix=...)."
            )
        grouped.setdefault(lora_name, {})[suffix] = value
    layers = []
    for lora_name, tensors in grouped.items():
        name, module = modules[lora_name]
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"{where}: {lora_name} is a {type(module).__name__}; only LoKr on nn.Linear "
                f"is converted."
            )
        alpha = tensors.pop("alpha", None)
        _check_factors(lora_name, tensors, module, where)
        layer = _Layer(name, tensors, 1.0)
        r = layer.rank
        # LyCORIS on load: alpha missing or 0 means alpha = r; both sides whole: scale 1.
        a = float(alpha.float().item()) if alpha is not None else 0.0
        scale = 1.0 if r is None or a == 0.0 else a / r
        layers.append(_Layer(name, tensors, scale))
    if not layers:
        raise ValueError(f"{where}: the state dict holds no LoKr layer.")
    return layers


def _peft_structure(
    out_features: int, in_features: int, r: int, decompose_both: bool, factor: int
) -> tuple[tuple[int, int], bool, tuple[int, int], bool]:
    """(w1 shape, w1 decomposed, w2 shape, w2 decomposed) that PEFT's LoKr makes for an
    nn.Linear with this r, decompose_both and decompose_factor."""
    from peft.tuners.lokr.layer import factorization

    out_l, out_k = factorization(out_features, factor)
    in_m, in_n = factorization(in_features, factor)
    w1_split = decompose_both and r < max(out_l, in_m) / 2
    w2_split = r < max(out_k, in_n) / 2
    return (out_l, in_m), w1_split, (out_k, in_n), w2_split


def _peft_rank(layer: _Layer) -> int:
    """The PEFT ``r`` for a layer: the decomposed side's rank, or, with both sides whole,
    the smallest that keeps both whole (any larger r would too)."""
    if layer.rank is not None:
        return layer.rank
    return max(max(layer.w1_shape), max(layer.w2_shape))


def lycoris_to_peft(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    prefix: str = "lycoris",
    **config_kwargs: Any,
) -> tuple[Any, dict[str, Tensor]]:
    """A PEFT ``LoKrConfig`` and adapter state dict equal to a LyCORIS LoKr state dict.

    Args:
        model: the base model the LyCORIS file was trained on (module names are read
            from it: LyCORIS's keys replace every ``.`` of a module path by ``_``).
        state_dict: the LyCORIS weights (``safetensors.torch.load_file(path)``).
        prefix: the LyCORIS key prefix (``"lycoris"`` for ``create_lycoris``; kohya-style
            files use e.g. ``"lora_unet"``).
        **config_kwargs: further ``LoKrConfig`` fields (``rank_dropout``,
            ``module_dropout``, ...); ``target_modules``, ``r``, ``alpha``,
            ``rank_pattern``, ``alpha_pattern``, ``decompose_both`` and
            ``decompose_factor`` are set here.

    Returns:
        ``(config, adapter_state_dict)``: load them with
        ``peft.set_peft_model_state_dict(peft.get_peft_model(model, config), sd)``, or
        call :func:`load_lycoris`.

    Raises:
        ValueError: a key that is not LoKr on ``nn.Linear`` (Tucker core, DoRA scale,
            another algorithm), a module the model lacks, shapes that do not match the
            layer, or factor shapes PEFT's LoKr cannot make (LyCORIS's
            ``unbalanced_factorization``, layers needing different ``decompose_factor``).
    """
    from peft import LoKrConfig

    layers = _read_lycoris(model, state_dict, prefix)
    named = dict(model.named_modules())
    decompose_both = any("lokr_w1_a" in la.tensors for la in layers)
    dims = {d for la in layers for d in (*la.w1_shape, *la.w2_shape)}
    problems: list[str] = []
    factor = None
    for f in (-1, *sorted(dims)):
        problems = []
        for la in layers:
            lin = named[la.name]
            want = (la.w1_shape, "lokr_w1_a" in la.tensors, la.w2_shape, "lokr_w2_a" in la.tensors)
            got = _peft_structure(
                lin.out_features, lin.in_features, _peft_rank(la), decompose_both, f
            )
            if got != want:
                problems.append(f"{la.name}: file {want}, PEFT {got}")
        if not problems:
            factor = f
            break
    if factor is None:
        raise ValueError(
            "lycoris_to_peft: no LoKrConfig(decompose_factor=..., decompose_both="
            f"{decompose_both}) makes this file's factor shapes (w1 shape, w1 decomposed, "
            f"w2 shape, w2 decomposed) for every layer; with decompose_factor=-1: "
            f"{'; '.join(problems[:3])}. Files trained with unbalanced_factorization or "
            f"with layers of different factorizations have no PEFT LoKr equivalent."
        )
    ranks = {la.name: _peft_rank(la) for la in layers}
    alphas = {la.name: la.scale * ranks[la.name] for la in layers}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas[n] for n in ranks if ranks[n] == r).most_common(1)[0][0]
    config = LoKrConfig(
        target_modules=sorted(ranks),
        r=r,
        alpha=alpha,
        rank_pattern={f"^{re.escape(n)}": v for n, v in ranks.items() if v != r},
        alpha_pattern={f"^{re.escape(n)}": v for n, v in alphas.items() if v != alpha},
        decompose_both=decompose_both,
        decompose_factor=factor,
        **config_kwargs,
    )
    adapter = {f"{_PEFT_PREFIX}{la.name}.{k}": t for la in layers for k, t in la.tensors.items()}
    return config, adapter


def load_lycoris(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    prefix: str = "lycoris",
    adapter_name: str = "default",
    **config_kwargs: Any,
) -> Any:
    """``peft.get_peft_model`` of ``model`` with a LyCORIS LoKr state dict loaded into it
    (see :func:`lycoris_to_peft`); every tensor of the file is checked to have landed.

    Returns:
        The ``PeftModel``.
    """
    import peft

    config, adapter = lycoris_to_peft(model, state_dict, prefix=prefix, **config_kwargs)
    pm = peft.get_peft_model(model, config, adapter_name=adapter_name)
    result = peft.set_peft_model_state_dict(pm, adapter, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ValueError(f"load_lycoris: PEFT did not take {unexpected[:5]}.")
    return pm


def peft_to_lycoris(
    model: nn.Module, *, adapter_name: str = "default", prefix: str = "lycoris"
) -> dict[str, Tensor]:
    """A LyCORIS LoKr state dict equal to one PEFT LoKr adapter of ``model``.

    Each layer's PEFT scale ``alpha / r`` becomes LyCORIS's ``alpha`` over the decomposed
    side's rank; a layer with both sides whole (where LyCORIS's scale is always 1) gets
    its scale folded into ``lokr_w1`` and ``alpha = 1``. Load the result with
    ``lycoris.create_lycoris_from_weights(1.0, "", base_model, weights_sd=sd)``.

    Args:
        model: a ``PeftModel`` (or module) holding PEFT LoKr layers.
        adapter_name: which adapter to convert.
        prefix: the LyCORIS key prefix.

    Raises:
        ValueError: no LoKr layer holds ``adapter_name``; a LoKr layer that is not on
            ``nn.Linear``; a factorization LyCORIS cannot load (PEFT's
            ``decompose_factor`` above the square root of a layer's size puts the larger
            factor first, LyCORIS always puts the smaller one first).
    """
    from peft.tuners.lokr.layer import LoKrLayer

    where = "peft_to_lycoris"
    get_base = getattr(model, "get_base_model", None)
    base: nn.Module = get_base() if callable(get_base) else model
    out: dict[str, Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoKrLayer) or adapter_name not in module.r:
            continue
        linear = module.get_base_layer()
        if not isinstance(linear, nn.Linear):
            raise ValueError(
                f"{where}: {name} is LoKr on {type(linear).__name__}; only LoKr on "
                f"nn.Linear is converted."
            )
        tensors = {
            k: getattr(module, k)[adapter_name].detach().clone()
            for k in _FACTOR_KEYS
            if adapter_name in getattr(module, k)
        }
        _check_factors(name, tensors, linear, where)
        layer = _Layer(name, tensors, float(module.scaling[adapter_name]))
        (ol, im), (ok, inn) = layer.w1_shape, layer.w2_shape
        if ol > ok or im > inn:
            raise ValueError(
                f"{where}: {name} has w1 {(ol, im)} larger than w2 {(ok, inn)} "
                f"(decompose_factor above the square root of the layer's size); LyCORIS "
                f"always makes w1 the smaller factor and cannot load it."
            )
        if "lokr_w1_a" in tensors and "lokr_w2" in tensors:
            raise ValueError(
                f"{where}: {name} decomposes w1 but not w2; LyCORIS reads decompose_both only "
                f"from both sides being decomposed and cannot load it."
            )
        r = layer.rank
        key = _lycoris_name(prefix, name)
        if r is None:
            tensors["lokr_w1"] = tensors["lokr_w1"] * layer.scale
            alpha = 1.0
        else:
            alpha = layer.scale * r
        for k, t in tensors.items():
            out[f"{key}.{k}"] = t
        out[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    if not out:
        raise ValueError(
            f"{where}: {type(model).__name__} holds no PEFT LoKr layer with adapter "
            f"{adapter_name!r}."
        )
    return out
