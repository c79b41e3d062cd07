"""kronify: model-wide replacement with a report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkron import KronLinear, kronify


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
    model, report = kronify(Net(), rank=2)
    assert isinstance(model.fc1, KronLinear)
    assert isinstance(model.block[0], KronLinear)
    assert isinstance(model.head, nn.Linear)
    assert [r.name for r in report.replaced] == ["fc1", "block.0"]
    assert [r.name for r in report.skipped] == ["head"]
    assert "13 is prime" in report.skipped[0].reason
    fc1 = report.replaced[0]
    assert (fc1.weights_before, fc1.weights_after) == (784 * 625, 2 * 1400)
    assert fc1.shapes == ((25, 28), (25, 28))
    assert fc1.approximation_error is not None
    assert report.weights_before == 784 * 625 + 625 * 625 + 625 * 13
    assert report.weights_after == 2 * 1400 + 2 * 1250 + 625 * 13
    text = str(report)
    assert "fc1" in text
    assert "skipped: factor_shapes: cannot split out_features=13" in text
    assert model(torch.randn(3, 784)).shape == (3, 13)


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


def test_impossible_shapes_are_skipped_not_changed():
    model, report = kronify(Net(), target=["fc1"], shapes=[(5, 5), (5, 5)])
    assert isinstance(model.fc1, nn.Linear)
    assert "give a 25 -> 25 layer" in report.skipped[0].reason


def test_kronify_rejects_nothing_silently_with_custom_mapping():
    calls = []

    def convert(module, **kwargs):
        calls.append(kwargs["rank"])
        return nn.Identity()

    model, report = kronify(nn.Sequential(nn.ReLU(), nn.Tanh()), mapping={nn.Tanh: convert}, rank=3)
    assert calls == [3]
    assert isinstance(model[1], nn.Identity)
    assert report.replaced[0].name == "1"


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
