"""torchkron: Kronecker-factored linear layers for PyTorch.

Examples:
    >>> import torch
    >>> from torchkron import KronLinear
    >>> layer = KronLinear(784, 625, tied=True)  # W = U (x) U, U of shape 25 x 28
    >>> layer(torch.randn(8, 784)).shape
    torch.Size([8, 625])
"""

from torchkron import functional as functional
from torchkron._version import __version__ as __version__
from torchkron.factorization import RankClippedWarning as RankClippedWarning
from torchkron.factorization import factor_shapes as factor_shapes
from torchkron.factorization import layer_factorizations as layer_factorizations
from torchkron.factorization import max_kronecker_rank as max_kronecker_rank
from torchkron.factorization import nearest_kronecker as nearest_kronecker
from torchkron.layers import KronLinear as KronLinear
from torchkron.layers import LowRankLinear as LowRankLinear
from torchkron.layers import MonarchLinear as MonarchLinear
from torchkron.optim import ParamRule as ParamRule
from torchkron.optim import lr_multipliers as lr_multipliers
from torchkron.optim import param_groups as param_groups
from torchkron.serialization import load as load
from torchkron.serialization import save as save
from torchkron.surgery import KRONIFY_MAPPING as KRONIFY_MAPPING
from torchkron.surgery import DenseView as DenseView
from torchkron.surgery import KronifyReport as KronifyReport
from torchkron.surgery import LayerConverter as LayerConverter
from torchkron.surgery import LayerReport as LayerReport
from torchkron.surgery import Unconvertible as Unconvertible
from torchkron.surgery import apply_plan as apply_plan
from torchkron.surgery import kronify as kronify
from torchkron.surgery import kronify_plan as kronify_plan
from torchkron.surgery import merge as merge
from torchkron.surgery import register_converter as register_converter

__all__ = [
    "KRONIFY_MAPPING",
    "DenseView",
    "KronLinear",
    "KronifyReport",
    "LayerConverter",
    "LayerReport",
    "LowRankLinear",
    "MonarchLinear",
    "ParamRule",
    "RankClippedWarning",
    "Unconvertible",
    "__version__",
    "apply_plan",
    "factor_shapes",
    "functional",
    "kronify",
    "kronify_plan",
    "layer_factorizations",
    "load",
    "lr_multipliers",
    "max_kronecker_rank",
    "merge",
    "nearest_kronecker",
    "param_groups",
    "register_converter",
    "save",
]
