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
from torchkron.factorization import factor_shapes as factor_shapes
from torchkron.factorization import layer_factorizations as layer_factorizations
from torchkron.factorization import nearest_kronecker as nearest_kronecker
from torchkron.linear import KronLinear as KronLinear
from torchkron.structured import LowRankLinear as LowRankLinear
from torchkron.structured import MonarchLinear as MonarchLinear
from torchkron.surgery import KRONIFY_MAPPING as KRONIFY_MAPPING
from torchkron.surgery import KronifyReport as KronifyReport
from torchkron.surgery import LayerReport as LayerReport
from torchkron.surgery import kronify as kronify

__all__ = [
    "KRONIFY_MAPPING",
    "KronLinear",
    "KronifyReport",
    "LayerReport",
    "LowRankLinear",
    "MonarchLinear",
    "__version__",
    "factor_shapes",
    "functional",
    "kronify",
    "layer_factorizations",
    "nearest_kronecker",
]
