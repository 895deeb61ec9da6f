r"""The Sylvester flow preset (van den Berg et al. 2018): a diagonal Gaussian q0 followed by Sylvester
layers, as the planar and radial presets of :mod:`.planar_radial` are built."""


from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..checks import check_arguments
from ..core import Flow
from ..distributions import preset_base
from ..transforms.sylvester import HouseholderBasis, OrthogonalBasis, PermutationBasis, Sylvester

from .planar_radial import gaussian_then

__all__ = ["SylvesterFlow"]


class SylvesterFlow(Flow):
    r"""Sylvester flow: q0 = N(mu, diag sigma^2) then K layers x = z + Q R tanh(R~ Q^T z + b).

    ``kind`` chooses Q (:mod:`pushforward.transforms.sylvester`): "orthogonal" (M columns
    orthogonalised iteratively, O-SNF), "householder" (a product of ``reflections``
    reflections, H-SNF) or "triangular" (the identity and the reversal in turn, T-SNF). The
    paper amortises all parameters from the encoder: with a context they are affine in it.

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: van den Berg, Hasenclever, Tomczak & Welling. Sylvester normalizing flows for
    variational inference. UAI 2018 (16 flows in their VAE experiments). arXiv:1803.05649.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of Sylvester layers K.
        kind: "orthogonal", "householder" or "triangular".
        columns: M for "orthogonal" (default D).
        reflections: number of reflections per layer for "householder".
        normalization: "batch", "act" or None between layers.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.

    Raises:
        ValueError: for an unknown ``kind``.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 16, kind: str = "orthogonal",
                 columns: int | None = None, reflections: int = 4, normalization: str | None = None,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms, columns=columns,
                    reflections=reflections)
        bases: dict[str, Callable[[int], object]] = {
            "orthogonal": lambda i: OrthogonalBasis(columns),
            "householder": lambda i: HouseholderBasis(reflections),
            "triangular": lambda i: PermutationBasis(reverse=i % 2 == 1),
        }
        if kind not in bases:
            raise ValueError(f"unknown Sylvester kind {kind!r}; choose orthogonal, householder or triangular")
        transform = gaussian_then(features, context_features, transforms,
                                   lambda i: Sylvester(features, context_features, bases[kind](i)), normalization)
        super().__init__(*preset_base(base, features, transform), embedding)
