r"""Residual flows: Residual Flows (Chen et al. 2019) and i-ResNet (Behrmann et al. 2019), for
vectors and (``ResidualFlowImage``) images.

Each block is applied, as in both papers, in the normalising direction: z = x + g(x) with
Lip(g) < 1, so the density of data needs one pass and a log-det estimate per block, and
sampling needs each block's fixed-point inverse. In the library's convention (transforms map
base to data) a block is therefore ``Inverse(ResidualBlock(...))``. Training uses the
stochastic estimator of the paper; evaluation mode uses the exact log-det up to 128 features
(:class:`~pushforward.transforms.residual.ResidualBlock`, :func:`~pushforward.transforms.residual.log_det_estimators`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..checks import check_arguments
from ..core import Chain, Flow, Inverse
from ..distributions import preset_base
from ..nn.lipschitz import ELU, LipSwish
from ..transforms.elementwise import logit_preprocessing
from ..transforms.normalization import ActNorm
from ..transforms.reshape import Squeeze
from ..transforms.residual import ConvResidualBlock, ResidualBlock
from .image import check_box, image_shape
from .stack import stack

__all__ = ["ResidualFlow", "IResNet", "ResidualFlowImage"]


def _residual_chain(features: int, context_features: int, transforms: int, normalization: str | None,
                    activation: type[nn.Module], hidden_features: Sequence[int], **block) -> Chain:
    """``transforms`` blocks applied data -> base (``Inverse(ResidualBlock)``), a normalisation between them.

    Raises:
        ValueError: for arguments out of range or an unknown estimator name.
    """
    check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features)
    layers = [Inverse(ResidualBlock(features, context_features, tuple(hidden_features), activation=activation, **block))
              for _ in range(transforms)]
    return stack(layers, features, normalization)


class ResidualFlow(Flow):
    r"""Residual Flow: blocks z = x + g(x), g a LipSwish MLP with Lip(g) < 1, ActNorm between them.

    log p(x) = log N(z; 0, I) + sum over blocks of log det(I + J_g), estimated in training by
    the unbiased Russian-roulette estimator with the Neumann-series gradient (memory constant in
    the number of terms), and exact in evaluation mode up to 128 features
    (:class:`~pushforward.transforms.residual.ResidualBlock`, estimator "roulette"). Sampling
    inverts each block by fixed-point iterations. With a context, g takes it as input.

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Chen, Behrmann, Duvenaud & Jacobsen. Residual flows for invertible generative
    modeling. NeurIPS 2019, eq. (6)-(8), section 3.3 (LipSwish). arXiv:1906.02735.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of residual blocks.
        hidden_features: hidden layer sizes of each g.
        coefficient: spectral-norm bound c < 1 of each linear layer of g.
        estimator: the log-det estimator in training, "roulette" (the paper's), "series" or "exact".
        eval_estimator: the estimator in evaluation mode (None: "exact" up to 128 features,
            else ``estimator``).
        terms: number n of power-series terms of the "series" estimator.
        exact_terms: terms of the series that every "roulette" estimate computes.
        stop_probability: p of the geometric number of further terms, 0 < p < 1.
        iterations: power-iteration steps per training step for the gradient of the spectral
            norms, whose values are certified roundings up to a grid of 2^-11 (None: exact values
            and gradients, slower).
        normalization: "act" (ActNorm, the paper's), "batch" or None between blocks.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.

    Raises:
        ValueError: for arguments out of range (c must be in (0, 1)) or an unknown estimator.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 8,
                 hidden_features: Sequence[int] = (128, 128), coefficient: float = 0.97, estimator: str = "roulette",
                 eval_estimator: str | None = None, terms: int = 5, exact_terms: int = 2,
                 stop_probability: float = 0.5, iterations: int | None = 1, normalization: str | None = "act",
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        transform = _residual_chain(
            features, context_features, transforms, normalization, LipSwish, hidden_features=hidden_features,
            coefficient=coefficient, estimator=estimator, eval_estimator=eval_estimator, terms=terms,
            exact_terms=exact_terms, stop_probability=stop_probability, iterations=iterations)
        super().__init__(*preset_base(base, features, transform), embedding)


class IResNet(Flow):
    r"""Invertible residual network: blocks z = x + g(x), g an ELU MLP with Lip(g) < 1.

    log p(x) = log N(z; 0, I) + sum over blocks of log det(I + J_g), estimated in training by
    the power series truncated after ``terms`` terms with Hutchinson's trace estimator (biased by
    the truncation; gradients through every term), exact in evaluation mode up to 128 features
    (:class:`~pushforward.transforms.residual.ResidualBlock`, estimator "series").

    Shapes: x (*batch, features); context (*batch, context_features); log_prob (*batch,) nats.

    Reference: Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen. Invertible residual networks.
    ICML 2019, section 3, algorithms 1-2. arXiv:1811.00995.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of residual blocks.
        hidden_features: hidden layer sizes of each g.
        coefficient: spectral-norm bound c < 1 of each linear layer of g.
        estimator: the log-det estimator in training, "series" (the paper's), "roulette" or "exact".
        eval_estimator: the estimator in evaluation mode (None: "exact" up to 128 features,
            else ``estimator``).
        terms: number n of power-series terms of the "series" estimator.
        exact_terms, stop_probability: those of the "roulette" estimator (:class:`ResidualFlow`).
        iterations: power-iteration steps per training step for the gradient of the spectral
            norms, whose values are certified roundings up to a grid of 2^-11 (None: exact values
            and gradients, slower).
        normalization: "act" (ActNorm), "batch" or None between blocks.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.

    Raises:
        ValueError: for arguments out of range (c must be in (0, 1)) or an unknown estimator.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 8,
                 hidden_features: Sequence[int] = (128, 128), coefficient: float = 0.9, estimator: str = "series",
                 eval_estimator: str | None = None, terms: int = 5, exact_terms: int = 2,
                 stop_probability: float = 0.5, iterations: int | None = 1, normalization: str | None = "act",
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        transform = _residual_chain(
            features, context_features, transforms, normalization, ELU, hidden_features=hidden_features,
            coefficient=coefficient, estimator=estimator, eval_estimator=eval_estimator, terms=terms,
            exact_terms=exact_terms, stop_probability=stop_probability, iterations=iterations)
        super().__init__(*preset_base(base, features, transform), embedding)


def _residual_level(shape: tuple[int, int, int], levels: int, blocks: int, **block) -> Chain:
    """One scale of base part ``shape`` and the scales below it, base -> data: the deeper scales
    between a squeeze and its inverse, then this scale's blocks, each ActNorm then
    z = x + g(x) in the data -> base direction."""
    c, h, w = shape
    parts: list = []
    if levels > 1:
        parts += [Squeeze(), _residual_level((4 * c, h // 2, w // 2), levels - 1, blocks, **block), Inverse(Squeeze())]
    for _ in range(blocks):
        parts += [Inverse(ConvResidualBlock(shape, **block)), ActNorm(c, event_dims=3)]
    return Chain(*parts)


class ResidualFlowImage(Flow):
    r"""Residual Flow for images: scales of convolutional residual blocks with ActNorm, squeezes
    between the scales.

    Data -> base: pixels x in [0, pixel_levels) go to logit space,
    r = logit(alpha + (1 - 2 alpha) x / pixel_levels), with its ladj; then at each of the
    ``levels`` scales, ``blocks`` times ActNorm and a block z = x + g(x), g a Lipschitz CNN
    (3 x 3, 1 x 1, 3 x 3 convolutions of ``hidden_channels`` channels, LipSwish, each
    convolution of operator norm at most c: :class:`~pushforward.transforms.ConvResidualBlock`);
    between scales a squeeze (C, H, W) -> (4C, H/2, W/2). Every dimension stays to the end (no
    factor-out) and the base is a standard normal of the image's shape. log det(I + J_g) is
    estimated in training by the unbiased Russian roulette with the Neumann gradient, and in
    evaluation mode exact up to 128 elements per image (digits: 64), else by the training
    estimator (:func:`~pushforward.transforms.log_det_estimators` says which). Sampling inverts
    each block by fixed-point iterations. The defaults are sized for a CPU; the paper's image
    models are far larger.

    Shapes: x (*batch, C, H, W); context (*batch, context_features); log_prob (*batch,) nats of
    the pixel space.

    Reference: Chen, Behrmann, Duvenaud & Jacobsen. Residual flows for invertible generative
    modeling. NeurIPS 2019, section 3 and appendix E (ActNorm before each block, squeezes
    between scales). arXiv:1906.02735.

    Args:
        shape: the image shape (C, H, W); H and W divisible by 2^(levels - 1).
        context_features: size of the context, 0 for none (constant channels of g's input).
        levels: number of scales.
        blocks: residual blocks per scale.
        hidden_channels: hidden channels of each g.
        coefficient, estimator, eval_estimator, terms, exact_terms, stop_probability, iterations:
            as :class:`ResidualFlow`.
        alpha: the logit margin.
        pixel_levels: the data lie in [0, pixel_levels); None for data already in logit space.
        base, embedding: as :class:`ResidualFlow` ("box" needs ``pixel_levels=None``).

    Raises:
        ValueError: for a bad shape, sizes below 1, c outside (0, 1) or an unknown estimator.
    """

    def __init__(self, shape: Sequence[int], context_features: int = 0, levels: int = 2, blocks: int = 4,
                 hidden_channels: int = 64, coefficient: float = 0.97, estimator: str = "roulette",
                 eval_estimator: str | None = None, terms: int = 5, exact_terms: int = 2,
                 stop_probability: float = 0.5, iterations: int | None = 1, alpha: float = 0.05,
                 pixel_levels: int | None = 256, base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(context_features=context_features, levels=levels, blocks=blocks,
                        hidden_channels=hidden_channels)
        if blocks < 1:
            raise ValueError(f"blocks must be an integer >= 1, got {blocks}")
        check_box(base, pixel_levels)
        shape = image_shape(shape, levels, levels - 1)
        parts: list = [_residual_level(
            shape, levels, blocks, context_features=context_features, hidden_channels=hidden_channels,
            coefficient=coefficient, estimator=estimator, eval_estimator=eval_estimator, terms=terms,
            exact_terms=exact_terms, stop_probability=stop_probability, iterations=iterations)]
        if pixel_levels is not None:
            parts.append(logit_preprocessing(alpha, pixel_levels, event_dims=3))
        super().__init__(*preset_base(base, shape, Chain(*parts)), embedding)
