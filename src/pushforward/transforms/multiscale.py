r"""The multi-scale architecture of image flows: at each level half of the channels leave the
flow (are "factored out") and the rest go on, squeezed, to the next level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core import Transform
from .convolution import _check_image

__all__ = ["MultiScale", "ChannelGaussianPrior"]


class MultiScale(Transform):
    r"""Factor-out: the first ``channels`` channels go on through ``inner``; the others leave
    the flow here, their density given by ``prior``.

    Data -> base (inverse): split x = (x_1, x_2) along the channels; z_2 is x_2 normalised by
    the prior given x_1 (``prior.inverse``, e.g. Glow's learned conditional Gaussian
    x_2 ~ N(mu(x_1), sigma(x_1)^2) as an affine channel coupling, whose inverse is
    z_2 = (x_2 - mu) / sigma and ladj = -sum log sigma); z_1 = inner^{-1}(x_1). The output
    z = (z_1, z_2) keeps the input's shape, so a multi-scale flow's base is a standard normal
    of the data's shape and no dimension is dropped: the factored part is scored by the prior
    and drawn again when sampling. With ``prior`` None the factored part is standard normal
    itself (Real NVP). Base -> data (forward) runs the same steps backwards.

    Shapes: z, x (*batch, C, H, W); ``inner`` maps (*batch, channels, H, W) to itself;
    context (*batch, context_features) to both; ladj (*batch,).

    Reference: Dinh, Sohl-Dickstein & Bengio. Density estimation using Real NVP. ICLR 2017,
    section 3.6 (eqs. 15-17); Kingma & Dhariwal. Glow. NeurIPS 2018, section 3 and figure 2
    (the "split" with a learned prior).

    Args:
        inner: the rest of the flow, on the channels that go on.
        channels: how many of the first channels go on.
        prior: a transform of the whole (C, H, W) image that leaves the first ``channels``
            channels unchanged and normalises the others given them, or None.

    Raises:
        ValueError: if ``inner`` or ``prior`` does not act on images, if ``inner`` changes the
            shape of its part, or (at call time) if the image has no more than ``channels``
            channels.
    """

    event_dims = 3

    def __init__(self, inner: Transform, channels: int, prior: Transform | None = None):
        super().__init__()
        for part in (inner, prior):
            if part is not None and (part.event_dims, part.data_event_dims) != (3, 3):
                raise ValueError(f"MultiScale parts must act on images (C, H, W); {type(part).__name__} does not")
        self.inner, self.channels, self.prior = inner, channels, prior

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = shape
        if c <= self.channels:
            raise ValueError(f"MultiScale: {c} channels leave nothing to factor out beside {self.channels}")
        if tuple(self.inner.forward_shape((self.channels, h, w))) != (self.channels, h, w):
            raise ValueError("MultiScale: the inner transform must keep the shape of its part")
        return tuple(shape)

    inverse_shape = forward_shape

    def _split(self, u: Tensor) -> tuple[Tensor, Tensor]:
        self.forward_shape(u.shape[-3:])
        return u[..., : self.channels, :, :], u[..., self.channels :, :, :]

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_1, z_2 = self._split(z)
        x_1, ladj = self.inner(z_1, context)
        x = torch.cat([x_1, z_2], dim=-3)
        if self.prior is None:
            return x, ladj
        x, ladj_prior = self.prior(x, context)
        return x, ladj + ladj_prior

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj_prior = 0.0
        if self.prior is not None:
            x, ladj_prior = self.prior.inverse(x, context)
        x_1, z_2 = self._split(x)
        z_1, ladj = self.inner.inverse(x_1, context)
        return torch.cat([z_1, z_2], dim=-3), ladj + ladj_prior

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class ChannelGaussianPrior(Transform):
    r"""A learned per-channel Gaussian for the channels that leave a multi-scale flow (a
    ``prior`` of :class:`MultiScale`): the first ``keep`` channels pass unchanged, and channel
    c >= ``keep`` is x_c = z_c exp(s_c) + m_c, so x_c ~ N(m_c, exp(2 s_c)) for a standard normal
    z_c, with m_c = a_c exp(3 b_c) and s_c = a'_c exp(3 b'_c), all zero at first (the identity).

    The exponent's factor 3 is the log-scale factor of Glow's reference code: an optimiser of the
    Adam family moves a parameter by at most about its learning rate per step, and through the
    exponent m and s travel further in few steps. normflows' Glow uses this prior (``GlowBase``);
    against the conditional Gaussian in a 1,005-step MNIST Glow the evidence is mixed
    (benchmarks/RESULTS.md, 2026-12-08).

    ladj (forward) = H W sum_{c >= keep} s_c; the context is ignored.

    Shapes: z, x (*batch, C, H, W); ladj (*batch,).

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018, section 3 and figure 2 (the split), the reference code's ``logscale_factor``.

    Args:
        channels: number of channels C.
        keep: how many of the first channels pass unchanged (those that go on through the flow).

    Raises:
        ValueError: unless 0 <= keep < channels; for an input that is not (*batch, C, H, W).
    """

    event_dims = 3

    def __init__(self, channels: int, keep: int):
        super().__init__()
        if not 0 <= keep < channels:
            raise ValueError(f"ChannelGaussianPrior: keep must lie in [0, {channels}), got {keep}")
        self.channels, self.keep = channels, keep
        # rows a, b of the mean and a', b' of the log-scale, one column per factored channel
        self.raw = nn.Parameter(torch.zeros(4, channels - keep))

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        _check_image(self, shape, self.channels)
        return tuple(shape)

    inverse_shape = forward_shape

    def _moments(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """m and s shaped (C - keep, 1, 1), and the forward ladj (*batch,) for an input like ``u``."""
        _check_image(self, u.shape, self.channels)
        mean = (self.raw[0] * torch.exp(3 * self.raw[1]))[:, None, None]
        log_scale = (self.raw[2] * torch.exp(3 * self.raw[3]))[:, None, None]
        return mean, log_scale, (log_scale.sum() * u.shape[-2] * u.shape[-1]).expand(u.shape[:-3])

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_scale, ladj = self._moments(z)
        kept, factored = z.split([self.keep, self.channels - self.keep], dim=-3)
        return torch.cat([kept, factored * torch.exp(log_scale) + mean], dim=-3), ladj

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_scale, ladj = self._moments(x)
        kept, factored = x.split([self.keep, self.channels - self.keep], dim=-3)
        return torch.cat([kept, (factored - mean) * torch.exp(-log_scale)], dim=-3), -ladj

    def extra_repr(self) -> str:
        return f"channels={self.channels}, keep={self.keep}"
