r"""Polynomial presets: the sum-of-squares flow and the Bernstein flow, each a
:class:`~pushforward.core.Flow` with a standard normal base.

Both are MAF given another element-wise map, a monotonic polynomial applied in the data -> base
direction as in their papers (:class:`~pushforward.transforms.elementwise.InverseMap`), so that
log_prob is one closed-form pass per layer; sampling solves each layer by bisection (D passes
per layer), to the tolerance stated in :mod:`pushforward.transforms.polynomials`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..checks import check_arguments
from ..core import Flow
from ..distributions import preset_base
from ..transforms.elementwise import ElementwiseMap, InverseMap
from ..transforms.polynomials import BernsteinPolynomial, SOSPolynomial
from .stack import autoregressive_layers, stack

__all__ = ["SOSFlow", "BernsteinFlow"]


class SOSFlow(Flow):
    r"""Sum-of-squares polynomial flow: autoregressive layers of SOS polynomials.

    Each layer maps feature i by z_i = c + int_0^{x_i} sum_k (sum_l a_{kl} u^l)^2 du (on
    [-bound, bound], linear beyond; :class:`~pushforward.transforms.polynomials.SOSPolynomial`)
    with (c, a) = MADE(x_{<i}, context); orders alternate between natural and reversed.

    Defaults: 8 layers of K = 5 squares of degree r = 4 (maps of degree 9), our reading of the
    paper's experimental setting (section 5; not re-checked against the text), with a MADE of
    (256, 256) and bound 5 (for standardised data; beyond it each map is linear).

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Jaini, Selby & Yu. Sum-of-squares polynomial flow. ICML 2019. arXiv:1905.02325.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of autoregressive layers.
        hidden_features: hidden layer sizes of each MADE.
        degree: the degree r of each squared polynomial.
        polynomials: the number K of squares.
        bound: the polynomials act on [-bound, bound], linear beyond.
        normalization: "batch", "act" or None between layers.
        activation: the MADE's non-linearity.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 8,
                 hidden_features: Sequence[int] = (256, 256), degree: int = 4, polynomials: int = 5,
                 bound: float = 5.0, normalization: str | None = None, activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features, degree=degree, polynomials=polynomials)
        def sos() -> ElementwiseMap:
            return InverseMap(SOSPolynomial(degree, polynomials, bound))

        layers = autoregressive_layers(features, sos, context_features, transforms, hidden_features, activation)
        super().__init__(*preset_base(base, features, stack(layers, features, normalization)), embedding)


class BernsteinFlow(Flow):
    r"""Bernstein flow: autoregressive layers of increasing Bernstein polynomials.

    Each layer maps feature i by z_i = sum_j theta_j b_{j,M}((x_i + bound) / (2 bound)) (on
    [-bound, bound], linear beyond;
    :class:`~pushforward.transforms.polynomials.BernsteinPolynomial`), the increasing
    coefficients theta from MADE(x_{<i}, context) by cumulative softplus; orders alternate
    between natural and reversed. This is the conditional transformation model of Sick et al.
    made autoregressive and stacked.

    Defaults: 5 layers of degree M = 10 with a MADE of (256, 256) (library choices; the papers
    use one transformation of degree 10-20 per conditional).

    Shapes: as :class:`SOSFlow`.

    Reference: Sick, Hothorn & Dürr. Deep transformation models: tackling complex regression
    problems with neural network based transformation models. ICPR 2020 (2021).
    arXiv:2004.00464; Ramasinghe, Fernando, Khan & Barnes. Robust normalizing flows using
    Bernstein-type polynomials. 2021. arXiv:2102.03509.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of autoregressive layers.
        hidden_features: hidden layer sizes of each MADE.
        degree: the degree M of the polynomials.
        bound: the polynomials act on [-bound, bound], linear beyond.
        normalization: "batch", "act" or None between layers.
        activation: the MADE's non-linearity.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5,
                 hidden_features: Sequence[int] = (256, 256), degree: int = 10, bound: float = 5.0,
                 normalization: str | None = None, activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features, degree=degree)
        def bernstein() -> ElementwiseMap:
            return InverseMap(BernsteinPolynomial(degree, bound))

        layers = autoregressive_layers(features, bernstein, context_features, transforms, hidden_features, activation)
        super().__init__(*preset_base(base, features, stack(layers, features, normalization)), embedding)
