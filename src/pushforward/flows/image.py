r"""Multi-scale image flows: Glow and Real NVP for images, each a :class:`~pushforward.core.Flow`
from a standard normal of the image's shape to images of 8-bit (or other) pixels in [0, 256).

Both are built level by level in the base -> data direction: a level squeezes its base part
(C, H, W) to (4C, H/2, W/2), lets half of the channels go on to the next level and scores the
other half (:class:`~pushforward.transforms.MultiScale`), applies its steps, and unsqueezes.
The last part of each flow maps the flow's output to the pixel range, with its ladj, so
``log_prob`` is in nats of the [0, pixel_levels)^D pixel space and bits/dim are
-log_prob / (D log 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..checks import check_arguments
from ..core import Chain, Flow, Inverse, Transform
from ..distributions import preset_base
from ..transforms.convolution import Conv1x1, Conv1x1LU, EmergingConv, PeriodicConv
from ..transforms.coupling import ImageCoupling
from ..transforms.elementwise import AdditiveMap, Affine, AffineMap, SigmoidAffineMap, logit_preprocessing
from ..transforms.multiscale import ChannelGaussianPrior, MultiScale
from ..transforms.normalization import ActNorm
from ..transforms.reshape import Squeeze

__all__ = ["Glow", "RealNVPImage", "image_shape"]

_CONVOLUTIONS: dict[str, Callable[[int], Transform]] = {
    "lu": Conv1x1LU, "1x1": Conv1x1, "emerging": EmergingConv, "periodic": PeriodicConv,
}


def _conditional_prior(channels: int, context_features: int) -> Transform:
    """Glow's split prior: the second half of the channels ~ N(mu, sigma^2) given the first
    (an affine channel coupling whose conditioner is one zero-initialised 3x3 convolution)."""
    return ImageCoupling(channels, AffineMap(), "channel", 0, context_features, hidden_channels=0)


_SPLIT_PRIORS: dict[str, Callable[[int, int], Transform]] = {
    "conditional": _conditional_prior, "channel": lambda channels, _: ChannelGaussianPrior(channels, channels // 2),
}


def image_shape(shape: Sequence[int], levels: int, squeezes: int) -> tuple[int, int, int]:
    """Check an image shape (C, H, W) for a flow of ``levels`` levels that squeezes ``squeezes``
    times, and return it as a tuple.

    Raises:
        ValueError: if the shape is not (C, H, W) of positive sizes, or if H and W are not
            divisible by 2^squeezes.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"an image flow needs an image shape (C, H, W), got {shape}")
    f = 2**squeezes
    if shape[1] % f or shape[2] % f:
        raise ValueError(f"{levels} level(s) halve the image {squeezes} time(s): height and width "
                         f"{shape[1]}x{shape[2]} must be divisible by {f}")
    return shape  # type: ignore[return-value]


def _choice(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose {', '.join(table)}")
    return table[name]


def _glow_level(channels: int, levels: int, steps: int, step: Callable[[int, int], list[Transform]],
                prior: Callable[[int], Transform]) -> Chain:
    """One Glow level of base part (channels, H, W) and the levels below it, base -> data."""
    c4 = 4 * channels
    parts: list[Transform] = [Squeeze()]
    if levels > 1:
        parts.append(MultiScale(_glow_level(2 * channels, levels - 1, steps, step, prior), 2 * channels, prior(c4)))
    for k in reversed(range(steps)):
        parts += step(c4, k)
    return Chain(*parts, Inverse(Squeeze()))


class Glow(Flow):
    r"""Glow: a multi-scale flow of steps (ActNorm, invertible 1x1 convolution, affine coupling).

    Data -> base, at each of the L levels: squeeze; K steps, each ActNorm (per channel), an
    invertible 1x1 convolution z = W x (LU-decomposed by default; W parametrised in this
    direction, as in the paper) and an affine coupling on the channels
    whose scale in the data -> base direction is sigmoid(h + 2) (it only contracts there:
    :class:`~pushforward.transforms.SigmoidAffineMap`) and whose conditioner is Glow's three
    convolutions (3x3, 1x1, zero-initialised 3x3); then, but
    at the last level, half of the channels leave the flow with a learned conditional Gaussian
    prior given the other half (a zero-initialised 3x3 convolution giving its mean and
    log-scale). Pixels x in [0, pixel_levels) are first mapped to x / pixel_levels - 1/2, as in
    the paper (ladj -D log pixel_levels), so ``log_prob`` is in nats of the pixel space.
    Sampling at a temperature T < 1 (``sample(..., temperature=0.7)``) scales the base's
    standard deviation (section 5).

    Shapes: x (*batch, C, H, W); context (*batch, context_features); log_prob (*batch,) nats.
    The base (and ``encode``'s latent) has the image's shape (C, H, W).

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018. arXiv:1807.03039 (section 3, table 1, figure 2).

    Args:
        shape: the image shape (C, H, W); H and W divisible by 2^levels.
        context_features: size of the context, 0 for none (it enters every conditioner as
            constant channels).
        levels: number of levels L.
        steps: steps per level K.
        hidden_channels: hidden channels of each coupling's conditioner.
        additive: additive couplings (NICE's, volume preserving) instead of Glow's affine ones.
        convolution: the invertible channel mixing: "lu" (LU-decomposed 1x1, the paper's
            faster variant), "1x1" (plain), "emerging" or "periodic" (Hoogeboom et al. 2019,
            3x3 kernels), each the convolution of the data -> base direction (training is one
            convolution per layer; sampling solves: for "emerging" the sequential solve).
        pixel_levels: the data lie in [0, pixel_levels); None for data already centred.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
        split_prior: the density of the channels factored out at each split: "conditional"
            (the paper's Gaussian given the channels that go on) or "channel" (a learned
            per-channel Gaussian, :class:`~pushforward.transforms.ChannelGaussianPrior`, as
            normflows' Glow).

    Raises:
        ValueError: for a bad shape, sizes below 1, an unknown convolution or split prior.
    """

    def __init__(self, shape: Sequence[int], context_features: int = 0, levels: int = 3, steps: int = 32,
                 hidden_channels: int = 512, additive: bool = False, convolution: str = "lu",
                 pixel_levels: int | None = 256,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None,
                 split_prior: str = "conditional"):
        check_arguments(context_features=context_features, levels=levels, steps=steps, hidden_channels=hidden_channels)
        make_prior = _choice(_SPLIT_PRIORS, split_prior, "split prior")
        check_box(base, pixel_levels)
        shape = image_shape(shape, levels, levels)
        elementwise_map = AdditiveMap if additive else SigmoidAffineMap
        mixing = _choice(_CONVOLUTIONS, convolution, "convolution")

        def step(c: int, k: int) -> list[Transform]:  # data -> base: ActNorm, mixing, coupling
            return [ImageCoupling(c, elementwise_map(), "channel", k % 2, context_features, hidden_channels),
                    Inverse(mixing(c)), ActNorm(c, event_dims=3)]

        parts: list[Transform] = [_glow_level(shape[0], levels, steps, step, lambda c: make_prior(c, context_features))]
        if pixel_levels is not None:
            parts.append(Affine(torch.tensor(pixel_levels / 2), torch.tensor(float(pixel_levels)), event_dims=3))
        super().__init__(*preset_base(base, shape, Chain(*parts)), embedding)


def check_box(base: str | nn.Module, pixel_levels: int | None) -> None:
    """Refuse ``base="box"`` next to the pixel map, which already bounds the data to [0, pixel_levels)."""
    if isinstance(base, str) and base == "box" and pixel_levels is not None:
        raise ValueError("base='box' bounds the flow to (0, 1); the image presets already map to [0, pixel_levels): "
                         "pass pixel_levels=None for data in (0, 1)")


def _realnvp_scale(channels: int, levels: int, couplings: Callable[[int, str, int], list[Transform]]) -> Chain:
    """One Real NVP scale of base part (channels, H, W) and the scales below it, base -> data."""
    if levels == 1:
        return Chain(*couplings(channels, "checkerboard", 4))
    c4 = 4 * channels
    inner = MultiScale(_realnvp_scale(2 * channels, levels - 1, couplings), 2 * channels)
    return Chain(Squeeze(), inner, *couplings(c4, "channel", 3), Inverse(Squeeze()),
                 *couplings(channels, "checkerboard", 3))


class RealNVPImage(Flow):
    r"""Real NVP for images: multi-scale affine couplings with checkerboard and channel masks.

    Data -> base, at each scale but the last: three affine couplings with alternating
    checkerboard masks, a squeeze, three with alternating channel masks, then half of the
    channels leave the flow (standard normal, no learned prior); the last scale is four
    checkerboard couplings. Conditioners are ResNets (``blocks`` residual blocks of
    ``hidden_channels``); an ActNorm follows each coupling in place of the paper's batch
    normalisation, and the couplings' scale is bounded as Glow's (sigmoid(h + 2) in the data ->
    base direction, :class:`~pushforward.transforms.SigmoidAffineMap`) in place of the paper's
    tanh, which with the paper's exp let single batches of 8-bit MNIST blow the loss up to 1e11
    in our runs. Pixels x in [0, pixel_levels) first go to logit space,
    r = logit(alpha + (1 - 2 alpha) x / pixel_levels) with alpha = 0.05 (section 4.1), with its
    ladj, so ``log_prob`` is in nats of the pixel space.

    Shapes: as :class:`Glow`.

    Reference: Dinh, Sohl-Dickstein & Bengio. Density estimation using Real NVP. ICLR 2017.
    arXiv:1605.08803 (sections 3.4-3.6, 4.1).

    Args:
        shape: the image shape (C, H, W); H and W divisible by 2^(levels - 1).
        context_features: size of the context, 0 for none.
        levels: number of scales.
        hidden_channels: hidden channels of each conditioner.
        blocks: residual blocks of each conditioner.
        alpha: the logit margin.
        pixel_levels: the data lie in [0, pixel_levels); None for data already in logit space.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.

    Raises:
        ValueError: for a bad shape or sizes below 1.
    """

    def __init__(self, shape: Sequence[int], context_features: int = 0, levels: int = 2, hidden_channels: int = 64,
                 blocks: int = 4, alpha: float = 0.05, pixel_levels: int | None = 256,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(context_features=context_features, levels=levels, hidden_channels=hidden_channels,
                        blocks=blocks)
        check_box(base, pixel_levels)
        shape = image_shape(shape, levels, levels - 1)

        def couplings(c: int, mask: str, n: int) -> list[Transform]:  # base -> data order
            layers: list[Transform] = []
            for k in reversed(range(n)):
                layers += [ImageCoupling(c, SigmoidAffineMap(), mask, k % 2, context_features, hidden_channels, blocks),
                           ActNorm(c, event_dims=3)]
            return layers

        parts: list[Transform] = [_realnvp_scale(shape[0], levels, couplings)]
        if pixel_levels is not None:
            parts.append(logit_preprocessing(alpha, pixel_levels, event_dims=3))
        super().__init__(*preset_base(base, shape, Chain(*parts)), embedding)
