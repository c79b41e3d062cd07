"""Choosing factor shapes and approximating dense weights by Kronecker products.

Pure functions, no modules: integer factorisations of layer sizes (:func:`factor_shapes`,
:func:`factorizations`, :func:`layer_factorizations`, :func:`divisors`), the nearest
Kronecker product of a matrix in Frobenius norm (:func:`nearest_kronecker`), rank budgets
from its spectrum (:mod:`torchkron.factorization.budget`) and the search for the
cheapest factorisations of a layer (:mod:`torchkron.factorization.candidates`); the
activation-aware versions that minimise the output error on calibration data
(:mod:`~torchkron.factorization.activation`: K-FAC Kronecker, whitened SVD), the Monarch
projection (:mod:`~torchkron.factorization.monarch`) and an MLP's free hidden-unit
permutation (:mod:`~torchkron.factorization.permutation`).

Layers above this package import the names below; the private submodules ``_shapes``
and ``_nearest`` are where they live.
"""

from torchkron.factorization._nearest import SvdMethod as SvdMethod
from torchkron.factorization._nearest import check_finite as check_finite
from torchkron.factorization._nearest import kronecker_approximation as kronecker_approximation
from torchkron.factorization._nearest import relative_error as relative_error
from torchkron.factorization._shapes import MAX_SIZE as MAX_SIZE
from torchkron.factorization._shapes import FactorShapes as FactorShapes
from torchkron.factorization._shapes import RankClippedWarning as RankClippedWarning
from torchkron.factorization._shapes import check_positive_int as check_positive_int
from torchkron.factorization._shapes import check_rank as check_rank
from torchkron.factorization._shapes import check_shapes as check_shapes
from torchkron.factorization._shapes import clip_rank as clip_rank
from torchkron.factorization._shapes import divisors as divisors
from torchkron.factorization._shapes import factor_example as factor_example
from torchkron.factorization._shapes import factor_shapes as factor_shapes
from torchkron.factorization._shapes import factorizations as factorizations
from torchkron.factorization._shapes import format_primes as format_primes
from torchkron.factorization._shapes import layer_factorizations as layer_factorizations
from torchkron.factorization._shapes import max_kronecker_rank as max_kronecker_rank
from torchkron.factorization._shapes import nearest_factorable as nearest_factorable
from torchkron.factorization._shapes import prime_factors as prime_factors
from torchkron.factorization.activation import DEFAULT_DAMPING as DEFAULT_DAMPING
from torchkron.factorization.activation import SecondMoment as SecondMoment
from torchkron.factorization.activation import activation_kronecker as activation_kronecker
from torchkron.factorization.activation import kronecker_moment as kronecker_moment
from torchkron.factorization.activation import nearest_kronecker as nearest_kronecker
from torchkron.factorization.activation import output_error as output_error
from torchkron.factorization.activation import second_moment as second_moment
from torchkron.factorization.activation import whitened_low_rank as whitened_low_rank
from torchkron.factorization.activation import whitened_weight as whitened_weight
from torchkron.factorization.budget import LayerBudget as LayerBudget
from torchkron.factorization.budget import allocate_ranks as allocate_ranks
from torchkron.factorization.budget import kron_spectrum as kron_spectrum
from torchkron.factorization.budget import rank_errors as rank_errors
from torchkron.factorization.budget import ranks_for_error as ranks_for_error
from torchkron.factorization.monarch import monarch_projection as monarch_projection
from torchkron.factorization.permutation import hidden_permutation as hidden_permutation
from torchkron.factorization.permutation import permute_hidden as permute_hidden

__all__ = [
    "DEFAULT_DAMPING",
    "MAX_SIZE",
    "FactorShapes",
    "LayerBudget",
    "RankClippedWarning",
    "SecondMoment",
    "SvdMethod",
    "activation_kronecker",
    "allocate_ranks",
    "check_finite",
    "check_positive_int",
    "check_rank",
    "check_shapes",
    "clip_rank",
    "divisors",
    "factor_example",
    "factor_shapes",
    "factorizations",
    "format_primes",
    "hidden_permutation",
    "kron_spectrum",
    "kronecker_approximation",
    "kronecker_moment",
    "layer_factorizations",
    "max_kronecker_rank",
    "monarch_projection",
    "nearest_factorable",
    "nearest_kronecker",
    "output_error",
    "permute_hidden",
    "prime_factors",
    "rank_errors",
    "ranks_for_error",
    "relative_error",
    "second_moment",
    "whitened_low_rank",
    "whitened_weight",
]
