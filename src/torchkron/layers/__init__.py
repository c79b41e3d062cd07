"""Drop-in ``nn.Linear`` replacements: the Kronecker layer and the baselines it is compared to.

- :class:`KronLinear` (:mod:`torchkron.layers.kron`): ``W = sum_r F_1[r] (x) ... (x) F_k[r]``.
- :class:`LowRankLinear` (:mod:`torchkron.layers.lowrank`): ``W = U V^T``.
- :class:`MonarchLinear` (:mod:`torchkron.layers.monarch`): block-diagonal, permutation,
  block-diagonal (Dao et al., ICML 2022).

All three take ``nn.Linear``'s ``(in_features, out_features, bias, device, dtype)`` and
initialise so that the dense weight they represent has ``nn.Linear``'s variance, or, with
``init="per-factor"``, each factor as a dense matrix of its own size (:class:`FactorFans`).
"""

from torchkron.layers._common import FactorFans as FactorFans
from torchkron.layers.kron import KronLinear as KronLinear
from torchkron.layers.lowrank import LowRankLinear as LowRankLinear
from torchkron.layers.monarch import MonarchLinear as MonarchLinear

__all__ = ["FactorFans", "KronLinear", "LowRankLinear", "MonarchLinear"]
