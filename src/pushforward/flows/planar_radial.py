r"""Planar, radial and Sylvester flows: the residual flows of variational inference.

Each preset is, as in its paper, a diagonal Gaussian q0 = N(mu, diag sigma^2) (an element-wise
affine layer on the standard normal base, amortised from the context when there is one)
followed by a stack of flow layers. Sampling and its density are one pass per layer; the
density of given data needs each layer's numerical inverse (damped Newton iterations, or a
closed form for radial layers), so these presets are slower to train by maximum likelihood
than coupling or autoregressive flows.
"""


from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..checks import check_arguments
from ..core import Chain, Flow, Transform
from ..distributions import preset_base
from ..transforms.elementwise import AffineMap, Elementwise
from ..transforms.planar_radial import Planar, Radial
from .stack import stack

__all__ = ["PlanarFlow", "RadialFlow", "gaussian_then"]


def gaussian_then(features: int, context_features: int, transforms: int, layer: Callable[[int], Transform],
                   normalization: str | None) -> Chain:
    """An element-wise affine layer (q0 from the standard normal base), then ``layer(i)`` for i < transforms."""
    layers = stack([layer(i) for i in range(transforms)], features, normalization)
    return Chain(Elementwise(AffineMap(), features, context_features), layers)


class PlanarFlow(Flow):
    r"""Planar flow: q0 = N(mu, diag sigma^2) then K planar layers x = z + u_hat tanh(w^T z + b).

    Each layer has 2D + 1 parameters and an O(D) ladj; its inverse solves a scalar equation
    by damped Newton iterations (:class:`~pushforward.transforms.planar_radial.Planar`).
    With a context, q0's parameters and every layer's (u, w, b) are affine functions of it.

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Rezende & Mohamed. Variational inference with normalizing flows. ICML 2015
    (K up to 80 in their experiments; 16 here).

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of planar layers K.
        normalization: "batch", "act" or None between layers.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 16,
                 normalization: str | None = None,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms)
        transform = gaussian_then(features, context_features, transforms,
                                   lambda i: Planar(features, context_features), normalization)
        super().__init__(*preset_base(base, features, transform), embedding)


class RadialFlow(Flow):
    r"""Radial flow: q0 = N(mu, diag sigma^2) then K radial layers x = z + beta (z - z0) / (alpha + r).

    Each layer contracts or expands around its centre z0, with D + 2 parameters, an O(D)
    ladj and a closed-form inverse (:class:`~pushforward.transforms.planar_radial.Radial`).

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Rezende & Mohamed. Variational inference with normalizing flows. ICML 2015.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of radial layers K.
        normalization: "batch", "act" or None between layers.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 16,
                 normalization: str | None = None,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms)
        transform = gaussian_then(features, context_features, transforms,
                                   lambda i: Radial(features, context_features), normalization)
        super().__init__(*preset_base(base, features, transform), embedding)
