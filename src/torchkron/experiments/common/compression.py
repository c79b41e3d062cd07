"""What the compression studies share (``torchkron compress`` on MNIST, ``torchkron lm
compress`` on the GPT): the input second moments of named layers, for activation-aware
conversion and its output error, and knowledge distillation's loss."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkron.factorization import SecondMoment

__all__ = ["distillation_loss", "input_moments"]


def input_moments(
    model: nn.Module, names: Sequence[str], batches: Iterable[Tensor]
) -> dict[str, Tensor]:
    """``{name: E[x x^T]}`` (float64) of the inputs of the ``nn.Linear`` modules ``names``
    over one pass of ``batches`` through ``model`` (eval mode, no gradients; the model's
    mode is restored).

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> x = torch.eye(3)
        >>> moments = input_moments(net, ["0"], [x])
        >>> bool(torch.allclose(moments["0"], torch.eye(3, dtype=torch.float64) / 3))
        True
    """
    modules = dict(model.named_modules())
    accs: dict[str, SecondMoment] = {}
    handles = []
    for name in names:
        module = modules[name]
        assert isinstance(module, nn.Linear)
        acc = accs[name] = SecondMoment(module.in_features)
        handles.append(module.register_forward_pre_hook(lambda _m, a, acc=acc: acc.update(a[0])))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: acc.matrix() for name, acc in accs.items()}


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, the mean over every
    prediction (Hinton et al.; the ``T^2`` keeps the gradient scale of the soft targets
    independent of ``T``).

    Args:
        student: the student's logits (or log-probabilities: softmax ignores a shift).
        teacher: the teacher's, same shape; no gradient flows into them.
        temperature: softmax temperature ``T > 0``.

    Shape:
        ``student``, ``teacher``: ``(*, classes)``; every leading index is one prediction.

    Examples:
        >>> import torch
        >>> x = torch.randn(4, 10)
        >>> float(distillation_loss(x, x, 2.0)) == 0.0
        True
    """
    t = float(temperature)
    classes = student.shape[-1]
    return F.kl_div(
        F.log_softmax(student / t, -1).reshape(-1, classes),  # (P, classes)
        F.log_softmax(teacher.detach() / t, -1).reshape(-1, classes),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
