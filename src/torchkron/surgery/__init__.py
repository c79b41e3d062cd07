"""Model-wide replacement of dense layers by ``KronLinear`` (``kronify``) and its undo.

``kronify`` works in three phases so that a model is never left half-converted: it
*plans* (which modules match, which are skipped and why, per-layer shapes and ranks),
*builds* every new ``KronLinear`` without touching the model, and only then *swaps*
them in (rolling back if a swap fails). Any bad argument raises before the model is
modified.

Layer types are read through a registry of converters (:data:`KRONIFY_MAPPING`,
:func:`register_converter`): a converter reads a module as a dense ``y = x W^T + b``
(:class:`DenseView`) or raises :class:`Unconvertible` with the reason the report shows.
"""

from torchkron.surgery._kronify import kronify as kronify
from torchkron.surgery._merge import merge as merge
from torchkron.surgery.converters import KRONIFY_MAPPING as KRONIFY_MAPPING
from torchkron.surgery.converters import ConverterTable as ConverterTable
from torchkron.surgery.converters import DenseView as DenseView
from torchkron.surgery.converters import LayerConverter as LayerConverter
from torchkron.surgery.converters import Unconvertible as Unconvertible
from torchkron.surgery.converters import register_converter as register_converter
from torchkron.surgery.plan import PLAN_ATTRIBUTE as PLAN_ATTRIBUTE
from torchkron.surgery.plan import PLAN_FORMAT as PLAN_FORMAT
from torchkron.surgery.plan import apply_plan as apply_plan
from torchkron.surgery.plan import kronify_plan as kronify_plan
from torchkron.surgery.plan import sync_config as sync_config
from torchkron.surgery.report import KronifyReport as KronifyReport
from torchkron.surgery.report import LayerReport as LayerReport
from torchkron.surgery.selection import ShapesSpec as ShapesSpec

__all__ = [
    "KRONIFY_MAPPING",
    "PLAN_ATTRIBUTE",
    "PLAN_FORMAT",
    "ConverterTable",
    "DenseView",
    "KronifyReport",
    "LayerConverter",
    "LayerReport",
    "ShapesSpec",
    "Unconvertible",
    "apply_plan",
    "kronify",
    "kronify_plan",
    "merge",
    "register_converter",
    "sync_config",
]
