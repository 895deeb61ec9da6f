r"""The classic presets: MAF, IAF, RealNVP and NSF, each a :class:`~pushforward.core.Flow`
with a standard normal base and a chain of layers, with the defaults of its paper."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..checks import check_arguments
from ..core import Chain, Flow, Inverse, Transform
from ..distributions import preset_base
from ..transforms.autoregressive import MaskedAutoregressive
from ..transforms.coupling import Coupling, alternating_mask
from ..transforms.elementwise import AffineMap, ElementwiseMap, InverseMap
from ..transforms.linear import Permutation
from ..transforms.normalization import ActNorm, BatchNorm
from ..transforms.splines import RQSpline

__all__ = ["MAF", "IAF", "RealNVP", "NSF", "stack"]

_NORMALIZATIONS: dict[str | None, Callable[[int], Transform] | None] = {
    None: None, "none": None, "batch": BatchNorm, "act": ActNorm,
}


def stack(layers: Sequence[Transform], features: int, normalization: str | None) -> Chain:
    """Chain the layers with a normalisation layer ("batch", "act" or None) after each but the last."""
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose batch, act or none")
    norm = _NORMALIZATIONS[normalization]
    parts: list[Transform] = []
    for i, layer in enumerate(layers):
        parts.append(layer)
        if norm is not None and i < len(layers) - 1:
            parts.append(norm(features))
    return Chain(*parts)


def _autoregressive(features: int, elementwise_map: Callable[[], ElementwiseMap], context_features: int,
                    transforms: int, hidden_features: Sequence[int], activation: type[nn.Module],
                    inverse: bool = False) -> list[Transform]:
    """Masked autoregressive layers whose orders alternate between natural and reversed."""
    layers: list[Transform] = []
    for i in range(transforms):
        order = torch.arange(features) if i % 2 == 0 else torch.arange(features - 1, -1, -1)
        layer = MaskedAutoregressive(features, elementwise_map(), context_features, hidden_features, order, activation)
        layers.append(Inverse(layer) if inverse else layer)
    return layers


def _coupling(features: int, elementwise_map: Callable[[], ElementwiseMap], context_features: int,
              transforms: int, hidden_features: Sequence[int], activation: type[nn.Module],
              masks: str = "alternate") -> list[Transform]:
    """Coupling layers with alternating even/odd masks, or half splits after random permutations."""
    if features < 2:
        raise ValueError("coupling flows need at least 2 features; use an autoregressive flow")
    if masks not in ("alternate", "random"):
        raise ValueError(f"unknown masks {masks!r}; choose alternate or random")
    layers: list[Transform] = []
    for i in range(transforms):
        if masks == "random":
            layers.append(Permutation.random(features, seed=i))
            mask = torch.arange(features) >= features // 2
        else:
            mask = alternating_mask(features, i % 2)
        layers.append(Coupling(mask, elementwise_map(), context_features, hidden_features, activation))
    return layers


class MAF(Flow):
    r"""Masked autoregressive flow: a stack of MADE-conditioned affine autoregressive layers.

    z_i = x_i exp(s_i) + t_i with (t_i, s_i) = MADE(x_{<i}, c), i.e. x_i = (z_i - t_i) exp(-s_i);
    log_prob is one pass per layer, sampling D small steps per layer that together cost about
    one pass (:meth:`~pushforward.nn.MADE.generate`). Orders alternate between natural and
    reversed. The paper writes the same family as x_i = z_i exp(a_i) + m_i; the affine map is
    parametrised here in the data -> base direction, as zuko, nflows and torchflows do, because
    it learns faster early on: with tanh MADEs, the test log-likelihood after the 105 Adam steps
    of ``python -m benchmarks.compare --data digits,mnist --arch maf`` went from 1.8 to 0.8
    nats behind torchflows' on digits and from 4.8 to 1.2 on MNIST (benchmarks/RESULTS.md).

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Papamakarios, Pavlakou & Murray. Masked autoregressive flow for density
    estimation. NeurIPS 2017. arXiv:1705.07057.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for an unconditional flow.
        transforms: number of autoregressive layers.
        hidden_features: hidden layer sizes of each MADE.
        normalization: "batch" (MAF's batch norm between layers), "act" or None.
        activation: the MADE's non-linearity.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5,
                 hidden_features: Sequence[int] = (512, 512), normalization: str | None = None,
                 activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features)
        layers = _autoregressive(features, lambda: InverseMap(AffineMap()), context_features, transforms,
                                 hidden_features, activation)
        super().__init__(*preset_base(base, features, stack(layers, features, normalization)), embedding)


class IAF(Flow):
    r"""Inverse autoregressive flow: MAF's layers used in the other direction.

    x_i = z_i exp(s_i) + t_i with (t_i, s_i) = MADE(z_{<i}, c) (up to the inversion of the
    element-wise map); sampling and its log-density are one pass per layer, log_prob of
    external data D passes. Suited to variational inference.

    Shapes: as :class:`MAF`.

    Reference: Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling. Improved variational
    inference with inverse autoregressive flow. NeurIPS 2016. arXiv:1606.04934.

    Args: as :class:`MAF`.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5,
                 hidden_features: Sequence[int] = (512, 512), normalization: str | None = None,
                 activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features)
        layers = _autoregressive(features, AffineMap, context_features, transforms, hidden_features,
                                 activation, inverse=True)
        super().__init__(*preset_base(base, features, stack(layers, features, normalization)), embedding)


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
        layers = _coupling(features, AffineMap, context_features, transforms, hidden_features, activation, masks)
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

        build = _autoregressive if autoregressive else _coupling
        layers = build(features, spline, context_features, transforms, hidden_features, activation)
        super().__init__(*preset_base(base, features, stack(layers, features, normalization)), embedding)

