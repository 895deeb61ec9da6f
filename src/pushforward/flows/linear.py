r"""Presets built on linear transforms: the Householder flow and an LU + spline flow."""

from __future__ import annotations

from torch import nn

from ..checks import check_arguments
from ..core import Chain, Flow
from ..distributions import preset_base
from ..transforms.elementwise import AffineMap, Elementwise
from ..transforms.linear import LU, Householder
from ..transforms.splines import RQSpline
from .stack import stack

__all__ = ["HouseholderFlow", "LUFlow"]


class HouseholderFlow(Flow):
    r"""Householder flow: a diagonal Gaussian rotated by K Householder reflections.

    x = H_K ... H_1 (mu + sigma * z), z ~ N(0, I): an element-wise affine layer gives the
    diagonal Gaussian q0 = N(mu, diag sigma^2) of the paper's encoder, and the reflections
    (volume-preserving, ladj = 0) rotate it, so x ~ N(Q mu, Q diag(sigma^2) Q^T), a
    full-covariance Gaussian. The reflections alone could not learn a scale: a rotation of a
    standard normal is a standard normal. With a context, mu, sigma and the reflection
    vectors are affine functions of it (the paper computes them from the encoder).

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Tomczak & Welling. Improving variational auto-encoders using Householder
    flow. NeurIPS 2016 workshop on Bayesian deep learning. arXiv:1611.09630.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of reflections K.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 10,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms)
        transform = Chain(Elementwise(AffineMap(), features, context_features),
                          Householder(features, transforms, context_features))
        super().__init__(*preset_base(base, features, transform), embedding)


class LUFlow(Flow):
    r"""LU linear layers interleaved with element-wise rational-quadratic splines.

    x = W_0 s_1(W_1 ... s_K(W_K z)): each W_k an :class:`~pushforward.transforms.linear.LU`
    affine layer (Glow's invertible 1x1 convolution for vectors), each s_k an element-wise
    monotonic spline with ``bins`` bins on [-bound, bound] and identity tails. The linear
    layers mix the features and the splines bend each one: an invertible multi-layer
    perceptron of width D whose layers all have O(D) ladj and exact O(D^2) inverses. With a
    context, the splines' parameters are affine functions of it. Suits standardised data.

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018, section 3.2 (LU layers); Durkan, Bekasov, Murray & Papamakarios. Neural
    spline flows. NeurIPS 2019 (splines).

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number K of (LU, spline) pairs.
        bins: number of spline bins.
        bound: the splines' tail bound.
        normalization: "batch", "act" or None between the pairs.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5, bins: int = 8,
                 bound: float = 5.0, normalization: str | None = None,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms, bins=bins)
        pairs = [Chain(LU(features), Elementwise(RQSpline(bins, bound), features, context_features))
                 for _ in range(transforms)]
        super().__init__(*preset_base(base, features, Chain(stack(pairs, features, normalization), LU(features))), embedding)
