"""Transforms, one module per family of flow."""

from .autoregressive import MaskedAutoregressive
from .continuous import ContinuousFlow, SolverRecord, recording
from .convolution import Conv1x1, Conv1x1LU, EmergingConv, PeriodicConv
from .coupling import Coupling, ImageCoupling, alternating_mask, checkerboard
from .multiscale import ChannelGaussianPrior, MultiScale
from .reshape import Squeeze
from .elementwise import AdditiveMap, Affine, AffineMap, SigmoidAffineMap, DomainError, Elementwise, ElementwiseMap, Sigmoid, logit_preprocessing
from .linear import LowerTriangular, Permutation
from .linear import LU, QR, ConvexCombinationTriangular, Dense, Householder, Triangular, UpperTriangular, householder
from .planar_radial import Planar, Radial
from .sylvester import HouseholderBasis, OrthogonalBasis, PermutationBasis, Sylvester, orthogonalize
from .neural import BlockNeuralAutoregressive, DeepSigmoidMap, MaskedBlockLinear, UMNNMap, clenshaw_curtis
from .normalization import ActNorm, BatchNorm
from .numerical import ConvergenceError, bisection
from .numerical import newton
from .splines import RQSpline, rational_quadratic_spline, with_identity_tails
from .elementwise import InverseMap, LeakyReLU, Softplus, Tanh, numerical_inverse
from .splines import (CubicSpline, LinearRationalSpline, PiecewiseLinear, PiecewiseQuadratic, cubic_spline,
                      linear_rational_spline, with_linear_tails)
from .polynomials import BernsteinPolynomial, SOSPolynomial, bernstein_basis
from .residual import ConvResidualBlock, ResidualBlock, log_det_estimators

__all__ = [
    "MaskedAutoregressive", "ContinuousFlow", "SolverRecord", "recording", "Coupling", "ImageCoupling", "alternating_mask", "checkerboard", "MultiScale", "ChannelGaussianPrior", "Squeeze", "AdditiveMap", "Affine", "AffineMap", "SigmoidAffineMap", "DomainError",
    "Elementwise", "ElementwiseMap", "Sigmoid", "logit_preprocessing", "Permutation", "LowerTriangular", "ActNorm",
    "BatchNorm", "ConvergenceError", "bisection", "RQSpline", "rational_quadratic_spline", "with_identity_tails",
    "Triangular", "UpperTriangular", "ConvexCombinationTriangular", "Householder", "householder", "LU", "QR", "Dense",
    "Planar", "Radial", "Sylvester", "OrthogonalBasis", "HouseholderBasis", "PermutationBasis", "orthogonalize",
    "newton",
    "BlockNeuralAutoregressive", "DeepSigmoidMap", "MaskedBlockLinear", "UMNNMap", "clenshaw_curtis",
    "InverseMap", "LeakyReLU", "Softplus", "Tanh", "numerical_inverse", "CubicSpline", "LinearRationalSpline",
    "PiecewiseLinear", "PiecewiseQuadratic", "cubic_spline", "linear_rational_spline", "with_linear_tails",
    "BernsteinPolynomial", "SOSPolynomial", "bernstein_basis", "Conv1x1", "Conv1x1LU", "EmergingConv", "PeriodicConv",
    "ResidualBlock", "ConvResidualBlock", "log_det_estimators",
]
