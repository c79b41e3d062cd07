"""kronify: model-wide replacement with a report, merge, plans and budgets (torch only)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import torchkron
from torchkron import (
    KRONIFY_MAPPING,
    DenseView,
    KronLinear,
    Unconvertible,
    apply_plan,
    kronify,
    kronify_plan,
    merge,
    register_converter,
)
from torchkron.factorization.budget import kron_spectrum, rank_errors


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 625)
        self.block = nn.Sequential(nn.Linear(625, 625), nn.ReLU())
        self.head = nn.Linear(625, 13)  # 13 is prime: cannot be factored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.fc1(x))))


def test_kronify_replaces_and_reports():
    torch.manual_seed(0)
    model = Net()
    before = n_params(model)
    model, report = kronify(model, rank=2)
    assert isinstance(model.fc1, KronLinear)
    assert isinstance(model.block[0], KronLinear)
    assert isinstance(model.head, nn.Linear)
    assert [r.name for r in report.replaced] == ["fc1", "block.0"]
    assert [r.name for r in report.skipped] == ["head"]
    assert "13 is prime" in report.skipped[0].reason
    fc1 = report.replaced[0]
    assert (fc1.weights_before, fc1.weights_after) == (784 * 625, 2 * 1400)
    assert fc1.shapes == ((25, 28), (25, 28))
    assert fc1.rank == 2
    assert fc1.approximation_error is not None
    assert report.weights_before == 784 * 625 + 625 * 625 + 625 * 13
    assert report.weights_after == 2 * 1400 + 2 * 1250 + 625 * 13
    assert report.params_before == before
    assert report.params_after == n_params(model)
    text = str(report)
    assert "fc1" in text
    assert f"model parameters: {before:,} -> {n_params(model):,}" in text
    assert "skipped: factor_shapes: cannot split out_features=13" in text
    assert model(torch.randn(3, 784)).shape == (3, 13)


def test_report_rows_are_not_padded_to_the_longest_reason():
    _, report = kronify(Net(), rank=2)
    lines = str(report).splitlines()
    head, fc1, skipped = lines[0], lines[1], lines[3]
    assert fc1.endswith("  replaced")
    assert head.endswith("  note")
    assert len(skipped) > 200 > len(fc1)  # only the skipped row carries its long reason
    # The rank column shows the chosen rank for each converted layer.
    assert re.search(r"25x28 \(x\) 25x28\s+2\s", fc1)


def test_prime_hint_puts_the_size_on_its_own_side():
    with pytest.raises(ValueError, match=re.escape("such as [(1, in_1), (13, in_2)].")):
        torchkron.factor_shapes(625, 13)
    with pytest.raises(ValueError, match=re.escape("such as [(out_1, 1), (out_2, 13)].")):
        torchkron.factor_shapes(13, 625)


def test_kronify_from_dense_is_exact_for_kronecker_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 6, dtype=torch.float64))
    with torch.no_grad():
        net[0].weight.copy_(
            torch.kron(
                torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
            )
        )
    x = torch.randn(5, 12, dtype=torch.float64)
    expected = net(x)
    net, report = kronify(net, shapes=[(3, 4), (2, 3)])
    assert report.replaced[0].approximation_error < 1e-12
    torch.testing.assert_close(net(x), expected)


def test_target_and_exclude_patterns():
    _, report = kronify(Net(), target=["fc1", "0"], from_dense=False)
    assert [r.name for r in report.replaced] == ["fc1", "block.0"]
    _, report = kronify(Net(), target=r"block\..*", from_dense=False)
    assert [r.name for r in report.layers] == ["block.0"]
    _, report = kronify(Net(), exclude=["head", "block.0"], from_dense=False)
    assert [r.name for r in report.layers] == ["fc1"]


def test_shapes_per_layer_and_tied():
    shapes = {"fc1": [(25, 28), (25, 28)], r"block\.0": [(5, 5), (5, 5), (25, 25)]}
    model, report = kronify(Net(), shapes=shapes, exclude=["head"], tied=False, from_dense=False)
    assert model.block[0].shapes == ((5, 5), (5, 5), (25, 25))
    model, report = kronify(Net(), target=["fc1"], tied=True)
    assert model.fc1.tied
    assert report.replaced[0].weights_after == 700
    assert report.replaced[0].note == "tied: fresh init, a dense weight has no tied nearest form"


def test_tied_with_unequal_balanced_shapes_is_a_reported_skip():
    _, report = kronify(Net(), target=["head"], tied=True)
    assert report.skipped[0].reason.startswith("factor_shapes: cannot split out_features=13")
    _, report = kronify(nn.Sequential(nn.Linear(12, 6)), tied=True)
    assert report.skipped[0].reason == "tied=True needs equal factor shapes, got (3, 4) (x) (2, 3)"


def test_explicit_shapes_that_do_not_fit_raise_and_change_nothing():
    model = Net()
    with pytest.raises(ValueError, match=r"kronify: fc1: shapes \[\(5, 5\), \(5, 5\)\] give a 25"):
        kronify(model, target=["fc1"], shapes=[(5, 5), (5, 5)])
    assert isinstance(model.fc1, nn.Linear)


def test_bad_arguments_raise_instead_of_skipping():
    model = Net()
    with pytest.raises(ValueError, match=r"kronify: rank must be an int >= 1, got 0\."):
        kronify(model, rank=0)
    with pytest.raises(ValueError, match=r"kronify: rank\['fc1'\] must be an int >= 1, got '4'"):
        kronify(model, rank={"fc1": "4"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"kronify: num_factors must be an int >= 1, got True"):
        kronify(model, num_factors=True)
    msg = "kronify: rank pattern 'query' matches no layer that kronify converts (targeted"
    with pytest.raises(ValueError, match=re.escape(msg)):
        kronify(model, rank={"query": 4})
    with pytest.raises(ValueError, match=r"shared must be 'skip' or 'reuse'"):
        kronify(model, shared="twice")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"give at most one of max_error, target_params"):
        kronify(model, max_error=0.1, target_params=1000)
    with pytest.raises(ValueError, match=r"rank=2 and max_error both set the ranks"):
        kronify(model, rank=2, max_error=0.1)
    with pytest.raises(ValueError, match=r"needs from_dense=True and tied=False"):
        kronify(model, compression=2, from_dense=False)
    with pytest.raises(ValueError, match=r"max_error must be in \(0, 1\), got 1.5"):
        kronify(model, max_error=1.5)
    assert all(type(m) is nn.Linear for m in (model.fc1, model.block[0], model.head))


def test_per_layer_rank_and_num_factors_patterns():
    model, report = kronify(
        Net(), rank={"fc1": 3, ".*": 2}, num_factors={r"block\.0": 3}, from_dense=False
    )
    assert model.fc1.rank == 3
    assert model.block[0].rank == 2
    assert model.block[0].num_factors == 3
    assert [r.rank for r in report.replaced] == [3, 2]


def test_patterns_for_skipped_layers_are_fine_shadowed_ones_raise():
    model, report = kronify(TiedLM(), rank={"lm_head": 4, "body": 2})
    assert model.body.rank == 2
    assert "tied" in report.skipped[0].reason
    msg = "kronify: rank pattern 'fc1' never applies: an earlier pattern matches each layer"
    with pytest.raises(ValueError, match=re.escape(msg)):
        kronify(Net(), rank={".*": 2, "fc1": 4})


def test_suffix_pattern_like_peft_rank_pattern():
    net = nn.Sequential()
    net.add_module("enc", nn.ModuleDict({"query": nn.Linear(8, 8), "value": nn.Linear(8, 8)}))
    net, _ = kronify(net, rank={"query": 4}, from_dense=False)
    assert net.enc["query"].rank == 4
    assert net.enc["value"].rank == 1


def test_kronify_custom_converter_and_opt_out():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 4, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x @ self.w.T

    net = nn.Sequential(Scaled())
    x = torch.randn(3, 4, dtype=torch.float64)
    expected = net(x)
    register_converter(Scaled, lambda m: DenseView(2 * m.w, None))
    try:
        net, report = kronify(net, shapes=[(3, 2), (2, 2)], rank=4)
        assert isinstance(net[0], KronLinear)
        assert report.replaced[0].kind == "Scaled"
        torch.testing.assert_close(net(x), expected)  # rank 4 = full rank here
    finally:
        del KRONIFY_MAPPING[Scaled]

    class MyLinear(nn.Linear):
        pass

    register_converter(MyLinear, None)
    try:
        _, report = kronify(nn.Sequential(MyLinear(8, 8), nn.Linear(8, 8)))
        assert [r.name for r in report.layers] == ["1"]
    finally:
        del KRONIFY_MAPPING[MyLinear]
    with pytest.raises(TypeError, match="layer_type must be a class or a qualified class name"):
        register_converter(3, None)  # type: ignore[arg-type]


def test_linear_subclasses_match_by_isinstance_with_opt_out():
    class MyLinear(nn.Linear):
        pass

    net, report = kronify(nn.Sequential(MyLinear(8, 8)))
    assert isinstance(net[0], KronLinear)
    assert report.replaced[0].kind == "MyLinear"
    net, report = kronify(nn.Sequential(MyLinear(8, 8), nn.Linear(8, 8)), subclasses=False)
    assert isinstance(net[0], MyLinear)
    assert isinstance(net[1], KronLinear)
    assert report.skipped[0].reason == (
        "MyLinear is a subclass of Linear and subclasses=False; pass subclasses=True or "
        "register_converter(MyLinear, ...)"
    )


def test_unconvertible_converter_lands_in_the_report():
    class Odd(nn.Linear):
        pass

    def refuse(module: nn.Module) -> DenseView:
        raise Unconvertible("Odd layers keep their weights")

    _, report = kronify(nn.Sequential(Odd(8, 8)), mapping={Odd: torchkron.LayerConverter(refuse)})
    assert report.skipped[0].reason == "Odd layers keep their weights"


def test_lazy_linear_is_reported_until_initialised():
    net = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 4))
    _, report = kronify(net, from_dense=False)
    assert report.skipped[0].name == "0"
    assert report.skipped[0].reason.startswith("LazyLinear whose in_features is not known yet")
    net(torch.randn(2, 6))  # materialises it as an nn.Linear
    net, report = kronify(net, from_dense=False)
    assert isinstance(net[0], KronLinear)


def test_multihead_attention_out_proj_converted_in_proj_reported():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True, dropout=0.0)
    before = n_params(layer)
    layer, report = kronify(layer)
    names = {r.name: r for r in report.layers}
    assert isinstance(layer.self_attn.out_proj, KronLinear)
    assert names["self_attn.out_proj"].replaced
    assert "MultiheadAttention reads out_proj.weight" in names["self_attn.out_proj"].note
    assert not names["self_attn"].replaced
    assert "packed in_proj_weight" in names["self_attn"].reason
    assert names["self_attn"].weights_before == 3 * 16 * 16  # out_proj has its own row
    assert {"linear1", "linear2"} <= {r.name for r in report.replaced}
    assert report.params_before == before
    assert report.params_after == n_params(layer)
    x = torch.randn(2, 5, 16, requires_grad=True)
    layer(x).sum().backward()
    assert layer.self_attn.out_proj.factor_0.grad is not None
    layer.eval()
    with torch.no_grad():
        assert layer(x).shape == (2, 5, 16)  # the inference fast path too


def test_shared_module_skipped_by_default_and_reused_on_request():
    lin = nn.Linear(16, 16)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    before = n_params(net)
    net, report = kronify(net)
    assert net[0] is lin
    assert net[2] is lin
    assert report.skipped[0].reason.startswith("the module is used at 2 places (0, 2); pass")
    assert report.params_after == before

    torch.manual_seed(0)
    x = torch.randn(3, 16)
    net, report = kronify(net, shared="reuse", rank=16)  # full rank of the 16 x 16 rearrangement
    assert isinstance(net[0], KronLinear)
    assert net[0] is net[2]
    assert report.replaced[0].aliases == ("2",)
    assert "0 (= 2)" in str(report)
    assert report.params_after == n_params(net) == 16 * 32 + 16
    torch.testing.assert_close(
        net(x), torch.relu(x @ lin.weight.T + lin.bias) @ lin.weight.T + lin.bias
    )


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(64, 16)
        self.body = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 64, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.tanh(self.body(self.wte(ids))))


def test_tied_parameters_are_skipped_and_stay_tied():
    model = TiedLM()
    before = n_params(model)
    model, report = kronify(model)
    assert model.lm_head.weight is model.wte.weight
    head = next(r for r in report.layers if r.name == "lm_head")
    assert head.reason.startswith("weight is tied to wte.weight (a shared parameter)")
    assert report.params_before == before
    assert report.params_after == n_params(model) == before - 256 + 32


def test_transactional_on_build_error():
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    calls = []
    real = torchkron.surgery.build.nearest_kronecker

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    torchkron.surgery.build.nearest_kronecker = flaky  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError, match="boom"):
            kronify(model)
    finally:
        torchkron.surgery.build.nearest_kronecker = real
    assert len(calls) == 2
    assert all(type(m) is nn.Linear for m in (model.fc1, model.block[0], model.head))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_transactional_on_swap_error():
    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)

        def __setattr__(self, name: str, value: object) -> None:
            if name == "b" and isinstance(value, KronLinear):
                raise RuntimeError("b must stay dense")
            super().__setattr__(name, value)

    model = Picky()
    with pytest.raises(RuntimeError, match="b must stay dense"):
        kronify(model)
    assert type(model.a) is nn.Linear


def test_meta_model_with_fresh_init():
    model = Net().to("meta")
    model, report = kronify(model, from_dense=False, rank=2)
    assert model.fc1.factor_0.is_meta
    assert report.params_after == n_params(model)
    with pytest.raises(ValueError, match=r"fc1 has its weights on the meta device"):
        kronify(Net().to("meta"))


def test_merge_is_to_linear_per_layer_and_restores_types():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    layer, _ = kronify(layer, rank=2)
    expected = {
        name: m.to_linear().weight for name, m in layer.named_modules() if isinstance(m, KronLinear)
    }
    layer = merge(layer)
    assert type(layer.linear1) is nn.Linear
    assert type(layer.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    for name, weight in expected.items():
        assert torch.equal(layer.get_submodule(name).weight, weight)
    assert not any(isinstance(m, KronLinear) for m in layer.modules())
    lone = KronLinear(8, 8)
    assert torch.equal(merge(lone).weight, lone.weight)


def test_merge_keeps_reused_modules_shared():
    lin = nn.Linear(16, 16)
    net, _ = kronify(nn.Sequential(lin, nn.ReLU(), lin), shared="reuse")
    net = merge(net)
    assert type(net[0]) is nn.Linear
    assert net[0] is net[2]


def test_plan_round_trip_through_state_dict():
    torch.manual_seed(0)
    lin = nn.Linear(16, 16)
    model = nn.Sequential(nn.Linear(12, 16), lin, nn.ReLU(), lin, nn.Linear(16, 13))
    model, _ = kronify(model, rank={"0": 3}, shared="reuse", num_factors={"1": 2})
    plan = kronify_plan(model)
    assert [e["names"] for e in plan["layers"]] == [["0"], ["1", "3"]]
    fresh = nn.Sequential(nn.Linear(12, 16), lin2 := nn.Linear(16, 16), nn.ReLU(), lin2,
                          nn.Linear(16, 13))  # fmt: skip
    apply_plan(fresh, plan)
    assert fresh[1] is fresh[3]
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 12)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match=r"apply_plan: 0 is 12 -> 8 in the model but 12 -> 16"):
        apply_plan(nn.Sequential(nn.Linear(12, 8)), plan)
    with pytest.raises(ValueError, match=r"not a torchkron plan"):
        apply_plan(fresh, {"layers": []})


def test_save_load_round_trip(tmp_path):
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    model = TiedLM()
    model, _ = kronify(model, rank=2)
    path = tmp_path / "m.safetensors"
    torchkron.save(model, path)
    again = torchkron.load(path, TiedLM())
    assert isinstance(again.body, KronLinear)
    assert again.lm_head.weight is again.wte.weight
    ids = torch.randint(0, 64, (2, 5))
    assert torch.equal(again(ids), model(ids))
    import safetensors.torch

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_model(nn.Linear(2, 2), str(plain))
    with pytest.raises(ValueError, match="has no torchkron plan in its metadata"):
        torchkron.load(plain, nn.Linear(2, 2))


def test_max_error_picks_the_smallest_rank_below_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64, dtype=torch.float64), nn.Linear(64, 32))
    dense = [m.weight.detach().clone() for m in net]
    net, report = kronify(net, max_error=0.6)
    for r, w in zip(report.replaced, dense, strict=True):
        errors = rank_errors(kron_spectrum(w, r.shapes))
        assert r.approximation_error <= 0.6 < errors[r.rank - 1]
        assert net.get_submodule(r.name).rank == r.rank
    assert report.budget == "max_error=0.6"
    assert "ranks chosen by max_error=0.6" in str(report)


def test_max_error_error_matches_nearest_kronecker():
    torch.manual_seed(0)
    dense = nn.Linear(48, 32, dtype=torch.float64)
    _net, report = kronify(nn.Sequential(dense), max_error=0.5)
    r = report.replaced[0]
    errors = rank_errors(kron_spectrum(dense.weight, r.shapes))
    assert errors[r.rank] <= 0.5 < errors[r.rank - 1]
    assert r.approximation_error == pytest.approx(errors[r.rank], rel=1e-9)


def test_max_error_unreachable_layer_stays_dense():
    _, report = kronify(nn.Sequential(nn.Linear(16, 16)), max_error=1e-9)
    assert "max_error=1e-09 needs rank" in report.skipped[0].reason


def test_target_params_and_compression():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 128), nn.Linear(128, 7))
    before = n_params(net)
    target = before // 4
    net, report = kronify(net, target_params=target)
    assert report.params_after == n_params(net) <= target
    assert report.params_after > target - 2 * 256  # the budget is used (one step is <= 256)
    ranks = [r.rank for r in report.replaced]
    assert all(r >= 1 for r in ranks)
    assert sum(ranks) > 2
    _net2, report2 = kronify(
        nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 128), nn.Linear(128, 7)),
        compression=4,
    )
    assert report2.params_after <= before / 4
    with pytest.raises(ValueError, match="the parameter target is out of reach"):
        kronify(nn.Sequential(nn.Linear(64, 64)), target_params=10)


def test_target_params_prefers_layers_with_faster_error_decay():
    torch.manual_seed(0)
    a = nn.Linear(64, 64, dtype=torch.float64)
    b = nn.Linear(64, 64, dtype=torch.float64)
    with torch.no_grad():  # a is a sum of 4 Kronecker products: rank 4 makes it exact
        p, q = torch.randn(2, 4, 8, 8, dtype=torch.float64)
        a.weight.copy_(sum(torch.kron(p[i], q[i]) for i in range(4)))
    net = nn.Sequential(a, b)
    dense = n_params(net)
    net, report = kronify(net, target_params=dense - 2 * 4096 + 6 * 128)
    ranks = {r.name: r.rank for r in report.replaced}
    assert ranks["0"] == 4  # its error reaches 0 at rank 4
    assert ranks["1"] == 2
    assert report.replaced[0].approximation_error < 1e-9


@pytest.mark.parametrize("rank", [1, 4])
def test_kronify_output_close_to_dense_with_rank(rank):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16))
    x = torch.randn(4, 16)
    dense = net(x)
    net, report = kronify(net, rank=rank)
    err = report.replaced[0].approximation_error
    assert err is not None
    assert 0 < err < 1
    assert (net(x) - dense).norm() / dense.norm() < 2 * err + 1e-6


def test_import_torchkron_imports_no_optional_package():
    import subprocess
    import sys

    code = (
        "import sys, torchkron; "
        "print([m for m in ('transformers', 'peft', 'safetensors', 'lycoris', 'einops') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rank_above_the_largest_is_clipped_and_reported():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4))
    x = torch.randn(3, 6, dtype=torch.float64)
    net = net.double()
    expected = net(x)
    net, report = kronify(net, shapes=[(2, 2), (2, 3)], rank=10)
    layer = net[0]
    assert isinstance(layer, KronLinear)
    # The rearranged matrix is 4 x 6: rank 4 is exact and nothing beyond it is kept.
    assert layer.rank == 4
    assert layer.factors[0].shape[0] == 4
    (row,) = report.layers
    assert row.rank == 4
    assert row.note == "rank 10 clipped to 4, the largest these shapes allow"
    assert torch.allclose(net(x), expected, atol=1e-12)
