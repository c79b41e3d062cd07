"""LyCORIS LoKr state dicts <-> PEFT LoKr adapters: outputs equal after conversion."""

from __future__ import annotations

import copy
import logging

import pytest

pytest.importorskip("peft")
pytest.importorskip("lycoris")

import torch
from lycoris import create_lycoris, create_lycoris_from_weights
from peft import LoKrConfig, get_peft_model
from torch import nn

from torchkron.integrations.lokr.convert import load_lycoris, lycoris_to_peft, peft_to_lycoris

logging.getLogger("LyCORIS").setLevel(logging.ERROR)


def base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(48, 96),
        nn.ReLU(),
        nn.Sequential(nn.Linear(96, 40), nn.Tanh(), nn.Linear(40, 256)),
    )


def lycoris_state(**kw: object) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A trained-looking LyCORIS LoKr network's model and its state dict (as saved)."""
    model = base()
    args = {"linear_dim": 4, "linear_alpha": 3, "algo": "lokr", **kw}
    net = create_lycoris(model, 1.0, **args)
    net.apply_to()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return model, {k: v.detach().clone() for k, v in net.state_dict().items()}


X = torch.randn(5, 48)


def lycoris_model(sd: dict[str, torch.Tensor]) -> nn.Module:
    """A base model with ``sd`` loaded through LyCORIS's own loader."""
    model = base()
    net, _ = create_lycoris_from_weights(1.0, "", model, weights_sd=sd)
    net.apply_to()
    net.load_state_dict(sd)
    return model


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"decompose_both": True, "linear_dim": 2},
        {"full_matrix": True},
        {"factor": 4},
        {"linear_dim": 64},
    ],
    ids=["default", "decompose_both", "full_matrix", "factor", "whole factors by rank"],
)
def test_lycoris_file_loads_into_peft_with_equal_outputs(kw):
    model, sd = lycoris_state(**kw)
    with torch.no_grad():
        expected = model(X)
    pm = load_lycoris(base(), sd)
    with torch.no_grad():
        torch.testing.assert_close(pm(X), expected, rtol=1e-5, atol=1e-5)
    # ... and back: PEFT -> LyCORIS through LyCORIS's own loader.
    with torch.no_grad():
        torch.testing.assert_close(
            lycoris_model(peft_to_lycoris(pm))(X), expected, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "kw",
    [{"r": 4, "alpha": 3}, {"r": 2, "alpha": 7, "decompose_both": True}, {"r": 64, "alpha": 5}],
    ids=["default", "decompose_both", "whole factors (scale folded into w1)"],
)
def test_peft_adapter_converts_to_lycoris_and_back(kw):
    pm = get_peft_model(
        base(), LoKrConfig(target_modules=["0", "2.0", "2.2"], init_weights=False, **kw)
    )
    with torch.no_grad():
        expected = pm(X)
    sd = peft_to_lycoris(pm)
    assert "lycoris_2_0.alpha" in sd
    with torch.no_grad():
        torch.testing.assert_close(lycoris_model(sd)(X), expected, rtol=1e-5, atol=1e-5)
        config, _ = lycoris_to_peft(base(), sd)
        assert config.decompose_both == kw.get("decompose_both", False)
        torch.testing.assert_close(load_lycoris(base(), sd)(X), expected, rtol=1e-5, atol=1e-5)


def test_config_keeps_per_layer_rank_and_alpha_and_extra_fields():
    _, sd = lycoris_state()
    sd["lycoris_2_2.alpha"] = torch.tensor(11.0)  # one layer with its own alpha
    config, adapter = lycoris_to_peft(base(), sd, rank_dropout=0.1)
    assert config.rank_dropout == 0.1
    assert config.alpha_pattern == {r"^2\.2": 11.0}
    assert sorted(config.target_modules) == ["0", "2.0", "2.2"]
    assert set(adapter) == {
        f"base_model.model.{name}.{key}"
        for name in ("0", "2.0", "2.2")
        for key in ("lokr_w1", "lokr_w2_a", "lokr_w2_b")
    }
    pm = load_lycoris(base(), sd)
    assert pm.base_model.model[2][2].scaling["default"] == pytest.approx(11.0 / 4)


def test_bad_files_are_refused_naming_the_layer():
    _, sd = lycoris_state()
    with pytest.raises(
        ValueError, match=r"'lycoris_9' names no module of Sequential with prefix 'lycoris'"
    ):
        lycoris_to_peft(base(), {**sd, "lycoris_9.lokr_w1": torch.zeros(2, 2)})
    with pytest.raises(
        ValueError, match=r"key 'lycoris_0\.lokr_t2' is not part of a LoKr layer on nn\.Linear"
    ):
        lycoris_to_peft(base(), {**sd, "lycoris_0.lokr_t2": torch.zeros(2, 2)})
    bad = {k: v for k, v in sd.items() if not k.endswith("lokr_w2_b")}
    with pytest.raises(
        ValueError,
        match=r"layer 'lycoris_0' has \['lokr_w2_a'\] for factor w2; LoKr stores either lokr_w2 "
        r"or both",
    ):
        lycoris_to_peft(base(), bad)
    wrong = {**sd, "lycoris_0.lokr_w1": torch.zeros(4, 4)}
    with pytest.raises(
        ValueError,
        match=r"lycoris_0: kron\(w1 \(4, 4\), w2 .* but the layer is \(out, in\) = \(96, 48\); "
        r"is this file for this model\?",
    ):
        lycoris_to_peft(base(), wrong)
    with pytest.raises(
        ValueError,
        match=r"'lycoris_0' names no module .* pass the model the file was trained on, or the "
        r"file's prefix",
    ):
        lycoris_to_peft(base(), sd, prefix="lora_unet")


def test_unbalanced_factorization_has_no_peft_equivalent():
    _, sd = lycoris_state(unbalanced_factorization=True)
    with pytest.raises(
        ValueError,
        match=r"lycoris_to_peft: no LoKrConfig\(decompose_factor=\.\.\., decompose_both=False\) "
        r"makes this file's factor shapes",
    ):
        lycoris_to_peft(base(), sd)


def test_peft_to_lycoris_refusals():
    with pytest.raises(
        ValueError,
        match=r"peft_to_lycoris: Sequential holds no PEFT LoKr layer with adapter 'default'",
    ):
        peft_to_lycoris(base())
    pm = get_peft_model(base(), LoKrConfig(r=2, target_modules=["0"], decompose_factor=12))
    with pytest.raises(
        ValueError,
        match=r"w1 \(12, 12\) larger than w2 \(8, 4\) .* LyCORIS always makes w1 the smaller "
        r"factor",
    ):
        peft_to_lycoris(copy.deepcopy(pm))
