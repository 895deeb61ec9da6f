r"""Coupling presets: NICE (additive), RealNVP (affine) and NSF (rational-quadratic splines, coupling
or autoregressive), each a :class:`~pushforward.core.Flow` with a standard normal base (or
``base=``) and a stack of :class:`~pushforward.transforms.coupling.Coupling` layers, with the
defaults of its paper."""


from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..checks import check_arguments
from ..core import Chain, Flow
from ..distributions import preset_base
from ..transforms.elementwise import AdditiveMap, AffineMap, Elementwise, InverseMap
from ..transforms.splines import RQSpline
from .stack import autoregressive_layers, coupling_layers, stack

__all__ = ["NICE", "RealNVP", "NSF"]


class NICE(Flow):
    r"""NICE: additive coupling layers and a diagonal scaling, a volume-preserving flow but for the scaling.

    x = c_K o ... o c_1(exp(s) * z + t): each c_k an additive coupling layer
    x_b = z_b + m(z_a, c), x_a = z_a, with even/odd masks that alternate, whose Jacobian
    determinant is 1; the scaling layer next to the base (the paper's top layer
    h_i = S_ii * (...)) gives ladj = sum_i s_i. The scaling is an :class:`Elementwise` affine
    map (scale and shift; the shift is redundant with the paper's but harmless, and with a
    context both are linear in it).

    Defaults: the paper uses 4 coupling layers with 5 hidden layers of 1000 units for MNIST
    and a logistic prior; here 4 layers, hidden (256, 256) and a standard normal base, which
    suit the tabular and toy data sets of the library.

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Dinh, Krueger & Bengio. NICE: Non-linear independent components estimation.
    ICLR 2015 workshop, sections 3.2-3.3 (additive coupling, scaling). arXiv:1410.8516.

    Args:
        features: data dimension D (at least 2).
        context_features: size of the context, 0 for none.
        transforms: number of additive coupling layers.
        hidden_features: hidden layer sizes of each coupling's MLP.
        normalization: "batch", "act" or None between coupling layers (None keeps the
            couplings volume-preserving, as in the paper).
        activation: the MLPs' non-linearity.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.

    Raises:
        ValueError: for fewer than 2 features or an unknown ``normalization``.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 4,
                 hidden_features: Sequence[int] = (256, 256), normalization: str | None = None,
                 activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features)
        layers = coupling_layers(features, AdditiveMap, context_features, transforms, hidden_features, activation)
        scaling = Elementwise(AffineMap(), features, context_features)
        super().__init__(*preset_base(base, features, Chain(scaling, stack(layers, features, normalization))), embedding)


class RealNVP(Flow):
    r"""Real NVP: a stack of affine coupling layers.

    x_b = z_b exp(s(z_a, c)) + t(z_a, c), x_a = z_a; both directions are one pass per layer.

    Shapes: as :class:`MAF`.

    Reference: Dinh, Sohl-Dickstein & Bengio. Density estimation using Real NVP. ICLR 2017.
    arXiv:1605.08803.

    Args:
        features: data dimension D (at least 2).
        context_features: size of the context, 0 for none.
        transforms: number of coupling layers.
        hidden_features: hidden layer sizes of each MLP conditioner.
        masks: "alternate" (even/odd features, alternating) or "random" (a fixed random
            permutation before each layer, then a half split).
        normalization: "batch", "act" or None between layers.
        activation: the conditioners' non-linearity.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.

    Raises:
        ValueError: for fewer than 2 features or an unknown ``masks``/``normalization``.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5,
                 hidden_features: Sequence[int] = (256, 256), masks: str = "alternate",
                 normalization: str | None = None, activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features)
        layers = coupling_layers(features, AffineMap, context_features, transforms, hidden_features, activation, masks)
        super().__init__(*preset_base(base, features, stack(layers, features, normalization)), embedding)


class NSF(Flow):
    r"""Neural spline flow: coupling or autoregressive rational-quadratic spline layers.

    Each transformed feature goes through a monotonic rational-quadratic spline with ``bins``
    bins on [-bound, bound] and identity tails, its parameters predicted by an MLP (coupling)
    or a MADE (autoregressive). As in the paper, the spline is applied in the data -> base
    direction, z_i = RQS(x_i; h_i): density evaluation and training use its closed form, and
    sampling its closed-form inverse (the root of a quadratic, a few more operations).

    Shapes: as :class:`MAF`.

    Reference: Durkan, Bekasov, Murray & Papamakarios. Neural spline flows. NeurIPS 2019.
    arXiv:1906.04032.

    Args:
        features: data dimension D (at least 2 for coupling).
        context_features: size of the context, 0 for none.
        transforms: number of layers.
        hidden_features: hidden layer sizes of each conditioner.
        bins: number of spline bins K.
        bound: the spline's tail bound B.
        autoregressive: MADE-conditioned autoregressive layers instead of coupling layers.
        normalization: "batch", "act" or None between layers.
        activation: the conditioners' non-linearity.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5,
                 hidden_features: Sequence[int] = (256, 256), bins: int = 8, bound: float = 5.0,
                 autoregressive: bool = False, normalization: str | None = None,
                 activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features, bins=bins)
        def spline() -> InverseMap:
            return InverseMap(RQSpline(bins, bound))

        build = autoregressive_layers if autoregressive else coupling_layers
        layers = build(features, spline, context_features, transforms, hidden_features, activation)
        super().__init__(*preset_base(base, features, stack(layers, features, normalization)), embedding)
