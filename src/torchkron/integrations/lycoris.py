"""LyCORIS: its LoKr adapters on ``nn.Linear`` computed without building their weight.

:func:`accelerate` makes every LoKr module of a LyCORIS network apply
``x @ (scale * kron(w1, w2)).T`` as a factored product (see
:mod:`torchkron.integrations.lokr.accelerate_lycoris`); :func:`restore` undoes it. The
checkpoint converter to and from PEFT is :mod:`torchkron.integrations.lokr.convert`
(re-exported here), which needs PEFT but not LyCORIS.

Examples:
    >>> from lycoris import create_lycoris
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(64, 64))
    >>> network = create_lycoris(model, 1.0, linear_dim=4, linear_alpha=4, algo="lokr")
    >>> network.apply_to()
    >>> print(accelerate(network))
    accelerated 1 LoKr layer(s)
"""

from __future__ import annotations

import lycoris  # noqa: F401  (the package this module integrates; fails early if missing)

from torchkron.integrations.lokr.accelerate_lycoris import (
    FactoredLokrModule,
    accelerate,
    restore,
)
from torchkron.integrations.lokr.convert import load_lycoris, lycoris_to_peft, peft_to_lycoris

__all__ = [
    "FactoredLokrModule",
    "accelerate",
    "load_lycoris",
    "lycoris_to_peft",
    "peft_to_lycoris",
    "restore",
]
