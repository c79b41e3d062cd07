"""Adadelta on one flat buffer: the same arithmetic as ``torch.optim.Adadelta``, fewer kernels.

For the experiment's small models the optimizer step, not the matmuls, dominates a
training step: ``torch.optim.Adadelta(foreach=True)`` still launches about ten kernels
per parameter tensor. Here every parameter and its gradient are views into two
contiguous buffers, so a step is ten elementwise kernels in all, whatever the number of
tensors. The per-element operations are exactly those of ``torch.optim.Adadelta``, in
the same order, so the results are bitwise identical.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["FlatAdadelta"]


class FlatAdadelta(torch.optim.Optimizer):
    """Adadelta (no weight decay) with parameters, gradients and state in flat buffers.

    Building it re-points every parameter's ``.data`` and ``.grad`` at views of two flat
    tensors; gradients are then accumulated in place there, and :meth:`zero_grad` zeroes
    the whole buffer (``set_to_none`` is ignored: a ``None`` gradient would detach the
    views). Works with LR schedulers (``param_groups[0]["lr"]``) and with
    ``state_dict``/``load_state_dict``.

    Args:
        params: the parameters (one group; all of one dtype and device).
        lr: learning rate.
        rho: coefficient of the running averages.
        eps: added inside the square roots.
    """

    def __init__(
        self, params: Iterable[nn.Parameter], lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6
    ) -> None:
        plist = list(dict.fromkeys(params))  # a tied parameter once
        if not plist:
            raise ValueError("FlatAdadelta: got no parameters to optimise.")
        super().__init__(plist, {"lr": lr, "rho": rho, "eps": eps})
        ref = plist[0]
        if any(p.dtype != ref.dtype or p.device != ref.device for p in plist):
            raise ValueError("FlatAdadelta: all parameters must share one dtype and device.")
        total = sum(p.numel() for p in plist)
        kw: dict[str, Any] = {"dtype": ref.dtype, "device": ref.device}
        self._param = torch.empty(total, **kw)
        self._grad = torch.zeros(total, **kw)
        self._square_avg = torch.zeros(total, **kw)
        self._acc_delta = torch.zeros(total, **kw)
        # Scratch for the two temporaries of a step: fresh multi-MB allocations each step
        # cost page faults that dominate the dense model's step.
        self._std = torch.empty(total, **kw)
        self._delta = torch.empty(total, **kw)
        self._steps = 0
        offset = 0
        with torch.no_grad():
            for p in plist:
                n = p.numel()
                self._param[offset : offset + n].copy_(p.detach().reshape(-1))
                p.data = self._param[offset : offset + n].view_as(p)
                p.grad = self._grad[offset : offset + n].view_as(p)
                self.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32),
                    "square_avg": self._square_avg[offset : offset + n].view_as(p),
                    "acc_delta": self._acc_delta[offset : offset + n].view_as(p),
                }
                offset += n

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._grad.zero_()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("FlatAdadelta: closures are not supported.")
        group = self.param_groups[0]
        lr, rho, eps = float(group["lr"]), float(group["rho"]), float(group["eps"])
        grad, square_avg, acc_delta = self._grad, self._square_avg, self._acc_delta
        # The sequence of torch.optim.adadelta's implementation, on one tensor.
        square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        std = torch.add(square_avg, eps, out=self._std).sqrt_()
        delta = torch.add(acc_delta, eps, out=self._delta).sqrt_()
        delta.div_(std).mul_(grad)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        self._param.add_(delta, alpha=-lr)
        # One shared counter instead of a tensor add per parameter (pure overhead here).
        self._steps += 1

    def state_dict(self) -> dict[str, Any]:
        for p in self.param_groups[0]["params"]:
            self.state[p]["step"] = torch.tensor(float(self._steps))
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state and copy it back into the flat buffers (loading makes copies)."""
        views = {p: dict(self.state[p]) for p in self.param_groups[0]["params"]}
        super().load_state_dict(state_dict)
        for p, flat in views.items():
            loaded = self.state[p]
            for key in ("square_avg", "acc_delta"):
                flat[key].copy_(loaded[key])
            flat["step"] = loaded["step"].clone()
            self.state[p] = flat
            self._steps = int(loaded["step"])
