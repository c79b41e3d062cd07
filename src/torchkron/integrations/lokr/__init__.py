"""LoKr adapters (PEFT's and LyCORIS's) computed without building their weight.

A LoKr adapter adds ``dW = scale * kron(w1, w2)`` to a frozen ``nn.Linear``, ``w1`` of
shape ``(out_l, in_m)`` and ``w2`` of shape ``(out_k, in_n)``, each stored whole or as a
low-rank product (``w1_a @ w1_b``, ``w2_a @ w2_b``). PEFT and LyCORIS build ``dW`` with
``torch.kron`` on every forward and run a second GEMM of the full layer size;
:func:`lokr_delta` computes ``x @ dW.T`` as the factored product
(:func:`torchkron.functional.kron_linear`) instead.

- :mod:`torchkron.integrations.lokr.delta`: :func:`lokr_delta` and the report type
  (torch only).
- :mod:`torchkron.integrations.lokr.accelerate_peft`: PEFT's LoKr ``Linear`` layers
  (imports PEFT); public as :func:`torchkron.integrations.peft.accelerate`.
- :mod:`torchkron.integrations.lokr.accelerate_lycoris`: LyCORIS's ``LokrModule`` (imports
  LyCORIS); public as :func:`torchkron.integrations.lycoris.accelerate`.
- :mod:`torchkron.integrations.lokr.convert`: LyCORIS LoKr state dicts <-> PEFT LoKr
  adapters (imports PEFT when called).
"""

from torchkron.integrations.lokr.delta import Acceleration, lokr_delta

__all__ = ["Acceleration", "lokr_delta"]
