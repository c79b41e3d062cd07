"""Kronecker-factored linear maps as pure functions.

A Kronecker-factored weight is given by ``k`` factor tensors, factor ``i`` of shape
``(R, out_i, in_i)``, and stands for::

    W = sum_r F_1[r] (x) F_2[r] (x) ... (x) F_k[r]        # (prod out_i, prod in_i)

with :func:`torch.kron`'s index order (factor 1 is the most significant). The layer
computes ``y = x @ W.T + bias`` as ``nn.Linear`` does.

:func:`kron_linear` usually computes that product without building ``W``: it reshapes
the input into a tensor with one mode per factor and contracts the modes one at a time.
In the factored chain (``impl="bmm"``, see :data:`IMPLS`) each contraction is one GEMM
or batched GEMM that leaves the modes in place, so the state is never permuted or
copied; factors smaller than 16 x 16 are first multiplied out in pairs (never into
``W``), and the order is the one needing the fewest floating-point operations (see
:func:`contraction_order`). The default, ``impl="auto"``, picks between that chain and
materialising ``W`` (cheaper at high rank or for small layers; cached across calls in
inference) with a calibrated cost model (:mod:`torchkron.functional.calibrate`).
:func:`kron_weight` builds ``W`` for inspection, export and tests.
"""

from torchkron.functional._dispatch import IMPLS, choose_impl, kron_linear
from torchkron.functional._plan import contraction_order, dense_flops, executed_flops, kron_flops
from torchkron.functional._weight import clear_weight_cache, kron_weight, set_weight_cache

__all__ = [
    "IMPLS",
    "choose_impl",
    "clear_weight_cache",
    "contraction_order",
    "dense_flops",
    "executed_flops",
    "kron_flops",
    "kron_linear",
    "kron_weight",
    "set_weight_cache",
]
