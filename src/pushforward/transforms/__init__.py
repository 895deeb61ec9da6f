"""Transforms, one module per family of flow."""

from .autoregressive import MaskedAutoregressive
from .coupling import Coupling, alternating_mask
from .elementwise import AdditiveMap, Affine, AffineMap, DomainError, Elementwise, ElementwiseMap, Sigmoid, logit_preprocessing
from .linear import LowerTriangular, Permutation
from .normalization import ActNorm, BatchNorm
from .numerical import ConvergenceError, bisection
from .splines import RQSpline, rational_quadratic_spline, with_identity_tails

__all__ = [
    "MaskedAutoregressive", "Coupling", "alternating_mask", "AdditiveMap", "Affine", "AffineMap", "DomainError",
    "Elementwise", "ElementwiseMap", "Sigmoid", "logit_preprocessing", "Permutation", "LowerTriangular", "ActNorm",
    "BatchNorm", "ConvergenceError", "bisection", "RQSpline", "rational_quadratic_spline", "with_identity_tails",
]
