"""The pieces the compression studies share: the distillation loss and layer input moments."""

from __future__ import annotations

import pytest
import torch

from torchkron.experiments.common.compression import distillation_loss, input_moments


def test_distillation_loss_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    t = 2.5
    p = torch.softmax(teacher / t, -1)
    reference = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    loss = distillation_loss(student, teacher, t)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    # Log-probabilities give the same loss as logits: softmax ignores a shift.
    shifted = distillation_loss(torch.log_softmax(student, -1), teacher + 3.0, t)
    torch.testing.assert_close(shifted, reference, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert student.grad is not None


def test_distillation_loss_is_zero_at_the_teacher_and_needs_no_teacher_gradient():
    teacher = torch.randn(5, 4, requires_grad=True)
    loss = distillation_loss(teacher.detach().clone(), teacher, 3.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert not loss.requires_grad


def test_input_moments_of_named_layers_and_the_mode_is_restored():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    net.train()
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    moments = input_moments(net, ["0", "2"], [x[:4], x[4:]])
    x64 = x.double()
    torch.testing.assert_close(moments["0"], x64.T @ x64 / 10)
    h = torch.relu(net[0](x)).detach().double()
    torch.testing.assert_close(moments["2"], h.T @ h / 10)
    assert net.training
