"""Tampered plans and files: never import, never replace what is not a linear layer, never
allocate before the plan is checked; target/exclude typos and bare layers (issue 17)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import torchkron
from torchkron import KronLinear, apply_plan, kronify, kronify_plan, merge
from torchkron.factorization import prime_factors
from torchkron.serialization import read_plan

EVIL = "modeling_evil.Linear"


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block runs past ``seconds``."""

    def fail(signum: int, frame: Any) -> None:
        raise AssertionError(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def evil_folder(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A folder on sys.path (and the cwd) with a module that leaves a marker when imported."""
    marker = tmp_path / "marker"
    (tmp_path / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom torch.nn import Linear\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "modeling_evil", raising=False)
    return marker


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8), nn.LayerNorm(8))


def saved(tmp_path: Any, edit: Callable[[dict[str, Any]], None]) -> Any:
    """A torchkron.save file of a kronified ``net()`` whose plan was edited by ``edit``."""
    import safetensors.torch

    torch.manual_seed(0)
    model, _ = kronify(net(), rank=2)
    path = tmp_path / "m.safetensors"
    torchkron.save(model, path)
    tensors = safetensors.torch.load_file(str(path))
    plan = read_plan(path)
    edit(plan)
    safetensors.torch.save_file(tensors, str(path), metadata={"torchkron_plan": json.dumps(plan)})
    return path


def unchanged(model: nn.Module) -> bool:
    return [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.LayerNorm]


def test_a_plan_naming_an_unregistered_type_never_imports_it(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    marker = evil_folder(tmp_path, monkeypatch)
    path = saved(tmp_path, lambda p: p["layers"][0].update(source=EVIL))
    base = net()
    with pytest.raises(ValueError, match=r"the layer type 'modeling_evil\.Linear' \(a plan's"):
        torchkron.load(path, base)
    assert unchanged(base)
    # A layer that carries the name anyway (set by hand): merge refuses, imports nothing.
    model, _ = kronify(net())
    model[0].__dict__["_torchkron_source"] = EVIL
    with pytest.raises(
        ValueError,
        match=r"is not a registered converter type; torchkron never imports a module named "
        r"by a file\. If that type is yours, import it and call "
        r"torchkron\.register_converter\(Linear, read, build=\.\.\.\) first",
    ):
        merge(model)
    assert not marker.exists()
    assert "modeling_evil" not in sys.modules


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["layers"][0]["names"].append("1"),
         r"apply_plan: 1 is a ReLU, not a layer type kronify converts, but the plan would "
         r"replace it with a KronLinear"),
        (lambda p: p["layers"][1]["names"].append("3"),
         r"apply_plan: 3 is a LayerNorm, not a layer type kronify converts"),
        (lambda p: p["layers"][0]["names"].append(p["layers"].pop(1)["names"][0]),
         r"apply_plan: 2 is 16 -> 8 in the model but 16 -> 16 in the plan"),
        (lambda p: p["layers"][0].update(bias=False),
         r"apply_plan: 0 has a bias in the model but none in the plan"),
        (lambda p: p["layers"][0].update(source="transformers.pytorch_utils.Conv1D"),
         r"apply_plan: 0 is a Linear \(converted as torch\.nn\.modules\.linear\.Linear\) in the "
         r"model but a transformers\.pytorch_utils\.Conv1D in the plan"),
        (lambda p: p["layers"][0].update(rank="2"),
         r"apply_plan: layer 0 of the plan has rank='2' \(str\)"),
        (lambda p: p["layers"][0].update(tied=1),
         r"apply_plan: layer 0 of the plan has tied=1 \(int\)"),
        (lambda p: p["layers"][0].update(names=[]),
         r"apply_plan: layer 0 of the plan has names=\[\]"),
        (lambda p: p["layers"][1].update(names=["0"]),
         r"apply_plan: the plan names '0' in two layers"),
    ],
)  # fmt: skip
def test_every_named_module_is_checked_before_anything_changes(tmp_path, edit, message):
    pytest.importorskip("safetensors")
    path = saved(tmp_path, edit)
    base = net()
    with pytest.raises(ValueError, match=message):
        torchkron.load(path, base)
    assert unchanged(base)


@pytest.mark.filterwarnings("ignore:KronLinear. rank=1000000000 is above:UserWarning")
def test_a_huge_rank_is_refused_before_allocating(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    real_empty = torch.empty

    def bounded_empty(*size: Any, **kwargs: Any) -> torch.Tensor:
        dims = size[0] if len(size) == 1 and isinstance(size[0], tuple | list) else size
        assert torch.Size(dims).numel() < 10**6, f"allocated {dims}"
        return real_empty(*size, **kwargs)

    monkeypatch.setattr(torch, "empty", bounded_empty)
    with pytest.raises(AssertionError, match="allocated"):  # the bound does catch it
        KronLinear(16, 16, rank=10**9, shapes=[(4, 4), (4, 4)])

    def tamper(plan: dict[str, Any]) -> None:
        plan["layers"][0]["rank"] = 10**9

    path = saved(tmp_path, tamper)
    with pytest.raises(
        ValueError,
        match=r"apply_plan: the stored tensor '0\.factor_0' has shape \(2, 4, 4\) but the plan's "
        r"layer needs \(1000000000, 4, 4\)",
    ):
        torchkron.load(path, net())
    plan = read_plan(path)
    with pytest.raises(
        ValueError,
        match=r"apply_plan: 0 has rank 1000000000 in the plan, above the largest useful rank "
        r"16 for shapes \[\(4, 4\), \(4, 4\)\]; refused before allocating",
    ):
        apply_plan(net(), plan)


def test_missing_stored_tensors_are_listed(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = saved(tmp_path, lambda p: None)
    tensors = safetensors_torch.load_file(str(path))
    with safetensors_torch.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    del tensors["2.factor_1"]
    safetensors_torch.save_file(tensors, str(path), metadata=meta)
    with pytest.raises(
        ValueError, match=r"apply_plan: the checkpoint lacks 1 tensor\(s\) of the plan's "
        r"Kronecker layers: 2\.factor_1; they would be left uninitialised",
    ):  # fmt: skip
        torchkron.load(path, net())


def test_huge_sizes_fail_fast(tmp_path):
    pytest.importorskip("safetensors")
    huge = 2**61 - 1
    with deadline(20):
        assert prime_factors(huge) == [huge]  # a Mersenne prime: 2**30 trial divisions
        assert prime_factors(2147483647 * 2147483629) == [2147483629, 2147483647]
        with pytest.raises(ValueError, match=r"larger than any tensor dimension"):
            prime_factors(2**63)
        with pytest.raises(ValueError, match=r"more than any tensor can hold"):
            KronLinear(huge, 4, shapes=[(2, 1), (2, huge)], device="meta")
        layer = KronLinear(huge, 4, shapes=[(2, 1), (2, huge)], device="meta", dtype=torch.half)
        assert layer.factor_1.shape == (1, 2, huge)

        def tamper(plan: dict[str, Any]) -> None:
            plan["layers"][0].update(in_features=huge, shapes=[[4, 1], [4, huge]])

        with pytest.raises(
            ValueError, match=r"apply_plan: 0 is 16 -> 16 in the model but 2305843009213693951 "
            r"-> 16 in the plan",
        ):  # fmt: skip
            torchkron.load(saved(tmp_path, tamper), net())


def test_target_and_exclude_that_match_nothing_raise():
    with pytest.raises(
        ValueError,
        match=r"kronify: target '\.\*mpl\\\\\.\.\*' matches no layer that kronify converts "
        r"\(layers such as '0', '2'\)\. A string is a regex",
    ):
        kronify(net(), target=r".*mpl\..*")
    with pytest.raises(ValueError, match=r"kronify: exclude 'fc3' matches no layer"):
        kronify(net(), exclude=["0", "fc3"])
    with pytest.raises(ValueError, match=r"kronify: target=\[\] names no layer"):
        kronify(net(), target=[])
    with pytest.raises(ValueError, match=r"kronify: target '\(' is not a valid regex"):
        kronify(net(), target="(")
    model = net()
    kronify(model, exclude=["0"], target=r"\d")
    assert type(model[2]) is KronLinear
    assert type(model[0]) is nn.Linear


def test_a_bare_layer_is_converted_and_returned():
    torch.manual_seed(0)
    dense = nn.Linear(12, 6)
    x = torch.randn(3, 12)
    layer, report = kronify(dense, shapes=[(3, 4), (2, 3)], rank=6)
    assert isinstance(layer, KronLinear)
    assert [r.name for r in report.replaced] == ["0"]
    torch.testing.assert_close(layer(x), dense(x))  # rank 6 is exact for these shapes
    assert kronify_plan(nn.Sequential(layer))["layers"][0]["rank"] == 6
    same, report = kronify(nn.Linear(13, 7))  # primes: reported, the layer comes back
    assert type(same) is nn.Linear
    assert "out_features=7" in report.skipped[0].reason
