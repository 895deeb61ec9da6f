r"""Variational dequantization: a learned noise distribution q(u | v) on [0, 1)^D in place of
uniform noise, for flows of discrete data such as 8-bit images.

A flow p is a density on the continuous space [0, levels)^D; the probability it gives to the
integer pixels v is P(v) = integral over [0, 1)^D of p(v + u) du. For any density q(u | v) on
the unit cube, Jensen's inequality gives the dequantization ELBO (Ho et al. 2019, eq. 12)

    log P(v) >= E_{u ~ q(. | v)} [log p(v + u) - log q(u | v)],

which is the uniform dequantization objective E_u [log p(v + u)] when q is uniform (log q = 0)
and is tight when q(u | v) = p(v + u) / P(v). With K samples u_k ~ q the importance-weighted
estimate log (1/K) sum_k p(v + u_k) / q(u_k | v) is a tighter bound on average, which tends to
log P(v) as K grows (Burda et al. 2016, theorem 1). Bits/dim of either are -value / (D log 2).

:class:`VariationalDequantization` wraps a flow so that its ``log_prob`` is the one-sample ELBO
of the pixels floor(x): :func:`pushforward.fit` trains p and q together unchanged, and
``sample``, ``encode`` and ``decode`` are p's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .checks import check_arguments
from .core import Chain, Flow, Inverse, check_event_shape
from .distributions import StandardNormal
from .nn.convnet import ConvNet
from .transforms.coupling import ImageCoupling
from .transforms.elementwise import AffineMap, Sigmoid
from .transforms.reshape import Squeeze

__all__ = ["UniformDequantizer", "FlowDequantizer", "VariationalDequantization", "importance_weighted_log_likelihoods",
           "dequantized"]


class UniformDequantizer(nn.Module):
    r"""Uniform noise q(u | v) = 1 on [0, 1)^D: u ~ U[0, 1)^D, log q(u | v) = 0.

    With it, :class:`VariationalDequantization`'s objective is the uniform dequantization
    objective log p(v + u) (Theis et al. 2016, section 3.1).

    Shapes: pixels v (*batch, *event) -> u (samples, *batch, *event), log q (samples, *batch).
    """

    def __init__(self, event_dims: int = 3):
        super().__init__()
        self.event_dims = event_dims

    def forward(self, pixels: Tensor, samples: int = 1) -> tuple[Tensor, Tensor]:
        u = torch.rand((samples, *pixels.shape), dtype=pixels.dtype, device=pixels.device)
        return u, pixels.new_zeros((samples, *pixels.shape[: pixels.dim() - self.event_dims]))


class FlowDequantizer(nn.Module):
    r"""Flow++'s variational dequantizer: a conditional image flow ending in a sigmoid,
    u = sigmoid(f(eps; h(v))), eps ~ N(0, I), conditioned on the pixels v.

    When H and W are even, the flow works on the squeezed image (4C, H/2, W/2)
    (:class:`~pushforward.transforms.Squeeze`, unsqueezed before the sigmoid) with channel
    masks, four times fewer positions than the image; otherwise on (C, H, W) with checkerboard
    masks. h(v) is a convolutional network (:class:`~pushforward.nn.ConvNet`) of the centred
    pixels v / levels - 1/2, squeezed alike, giving ``context_channels`` feature maps; f is
    ``couplings`` affine couplings of alternating parity
    (:class:`~pushforward.transforms.ImageCoupling`) whose conditioners see h(v) as extra
    channels. log q(u | v) = log N(eps; 0, I) - log|det du/deps|, the ladj of f and of the
    sigmoid. At initialisation the couplings are the identity and u = sigmoid(eps). The
    defaults keep it small (on MNIST about a seventh of the multiply-adds of the Glow of the
    README), smaller than the paper's, for CPU budgets.

    Shapes: pixels v (*batch, C, H, W) -> u (samples, *batch, C, H, W) in (0, 1), log q
    (samples, *batch) in nats.

    Reference: Ho, Chen, Srinivas, Duan & Abbeel. Flow++: improving flow-based generative
    models with variational dequantization and architecture design. ICML 2019, section 3.1.

    Args:
        shape: the image shape (C, H, W).
        levels: the number of pixel levels (256 for 8-bit images).
        couplings: number of coupling layers of f.
        hidden_channels: hidden channels of h and of each coupling's conditioner.
        context_channels: feature maps of h(v).

    Raises:
        ValueError: for a bad shape or sizes below 1.
    """

    def __init__(self, shape: Sequence[int], levels: int = 256, couplings: int = 4, hidden_channels: int = 16,
                 context_channels: int = 8):
        super().__init__()
        check_arguments(levels=levels, transforms=couplings, hidden_channels=hidden_channels,
                        features=context_channels)
        shape = tuple(shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"a dequantizer of images needs an image shape (C, H, W), got {shape}")
        self.levels = levels
        self.squeeze = Squeeze() if shape[1] % 2 == 0 and shape[2] % 2 == 0 else None
        inner = self.squeeze.forward_shape(shape) if self.squeeze else shape
        self.base = StandardNormal(inner)
        self.features = ConvNet(inner[0], context_channels, hidden_channels)
        mask = "channel" if self.squeeze else "checkerboard"
        layers = [ImageCoupling(inner[0], AffineMap(), mask, k % 2, context_channels, hidden_channels)
                  for k in range(couplings)]
        unsqueeze = [Inverse(self.squeeze)] if self.squeeze else []
        self.transform = Chain(*layers, *unsqueeze, Sigmoid(event_dims=3))

    def context(self, pixels: Tensor) -> Tensor:
        """h(v), the feature maps the couplings see: (*batch, C, H, W) -> (*batch,
        context_channels, H', W') at the flow's resolution (H/2, W/2 when it squeezes)."""
        centred = pixels / self.levels - 0.5
        return self.features(self.squeeze(centred)[0] if self.squeeze else centred)

    def forward(self, pixels: Tensor, samples: int = 1) -> tuple[Tensor, Tensor]:
        h = self.context(pixels)
        eps = self.base.rsample((samples, *pixels.shape[:-3]))
        u, ladj = self.transform(eps, h.expand(samples, *h.shape))
        return u, self.base.log_prob(eps) - ladj


class VariationalDequantization(Flow):
    r"""A flow p of dequantized data trained and scored through a dequantizer q(u | v).

    ``log_prob(x)`` takes the pixels v = floor(x) (x already dequantized, as the image data
    sets are: floor(x) is the pixel) and returns the one-sample dequantization ELBO
    log p(v + u) - log q(u | v), u ~ q(. | v), a stochastic lower bound of log P(v) in nats
    whose reparametrised gradient trains p and q together (:func:`pushforward.fit` unchanged).
    :meth:`importance_weighted` gives the K-sample estimate. ``sample``, ``encode``, ``decode``
    are those of p (the same base and transform, shared).

    Shapes: x (*batch, *event) in [0, levels)^D; log_prob (*batch,).

    Reference: Ho et al. Flow++. ICML 2019, section 3.1 (eq. 12 for the bound); Burda, Grosse &
    Salakhutdinov. Importance weighted autoencoders. ICLR 2016, eq. 8 (the K-sample bound).

    Args:
        flow: the model p of the continuous data.
        dequantizer: q, a module mapping pixels (*batch, *event) and a number of samples K to
            u (K, *batch, *event) and log q (K, *batch): :class:`FlowDequantizer`, or
            :class:`UniformDequantizer` (then log_prob is the uniform objective).
        levels: the number of pixel levels; the data lie in [0, levels).

    Raises:
        ValueError: (at call time) as :meth:`Flow.log_prob`, and for data outside [0, levels].
    """

    def __init__(self, flow: Flow, dequantizer: nn.Module, levels: int = 256):
        super().__init__(flow.base, flow.transform)
        check_arguments(levels=levels)
        self.dequantizer, self.levels = dequantizer, levels

    def elbo(self, x: Tensor, context: Tensor | None = None, samples: int = 1) -> Tensor:
        """``samples`` independent terms log p(v + u_k) - log q(u_k | v) of the pixels
        v = floor(x), each an unbiased estimate of the ELBO, in nats.

        Shapes: x (*batch, *event) -> (samples, *batch).

        Raises:
            ValueError: as :class:`VariationalDequantization`.
        """
        check_arguments(samples=samples)
        x = self._check(x, context)[0]  # the raw context goes on to log_prob, which embeds it
        if bool((x < 0).any()) or bool((x > self.levels).any()):
            raise ValueError(f"data outside the pixel range [0, {self.levels}) of this dequantization")
        # a float32 x rounded up to exactly `levels` (v = levels - 1 and u near 1) stays in range
        pixels = x.floor().clamp(max=self.levels - 1)
        u, log_q = self.dequantizer(pixels, samples)
        if context is not None:
            context = context.expand(samples, *context.shape)
        return super().log_prob(pixels + u, context) - log_q

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The one-sample dequantization ELBO of the pixels floor(x), nats, shape (*batch,)."""
        return self.elbo(x, context)[0]

    def importance_weighted(self, x: Tensor, context: Tensor | None = None, samples: int = 16) -> Tensor:
        r"""The importance-weighted estimate of log P(floor(x)) with K = ``samples`` samples,
        log (1/K) sum_k exp(ELBO term k), in nats: a lower bound in expectation, at least the
        ELBO's on average, equal to it for K = 1.

        Shapes: x (*batch, *event) -> (*batch,).
        """
        return torch.logsumexp(self.elbo(x, context, samples), 0) - math.log(samples)


def importance_weighted_log_likelihoods(flow: VariationalDequantization, x: Tensor, samples: int = 16,
                                        batch_size: int = 1000) -> Tensor:
    """Per-example importance-weighted estimates (:meth:`VariationalDequantization.importance_weighted`)
    in nats, computed in evaluation mode without gradients, ``batch_size // samples`` examples at a
    time, on the flow's device and dtype.

    Shapes: x (N, *event) -> (N,) on the CPU.
    """
    param = next(flow.parameters())
    check_event_shape(x, flow.event_shape, "data")
    step = max(1, batch_size // samples)
    was_training = flow.training
    flow.eval()
    with torch.no_grad():
        out = [flow.importance_weighted(x[i : i + step].to(param), samples=samples).cpu() for i in range(0, len(x), step)]
    flow.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def dequantized(flow: Flow, dequantization: str, levels: int) -> Flow:
    """``flow`` itself for "uniform" dequantization (the data were dequantized once at loading),
    or wrapped in :class:`VariationalDequantization` with a :class:`FlowDequantizer` of its
    event shape for "variational".

    Raises:
        ValueError: for another name, or "variational" with a flow of vectors.
    """
    if dequantization == "uniform":
        return flow
    if dequantization != "variational":
        raise ValueError(f"unknown dequantization {dequantization!r}; choose uniform or variational")
    if len(flow.event_shape) != 3:
        raise ValueError("variational dequantization needs an image flow (glow, realnvp-image) on image data")
    return VariationalDequantization(flow, FlowDequantizer(flow.event_shape, levels), levels)
