r"""Base distributions of flows: the standard normal, a diagonal normal and a mixture of
Gaussians; :func:`preset_base` turns a preset's ``base`` argument (``"normal"``, ``"mixture"``,
``"box"`` or a module) into its base and transform.

Each is an ``nn.Module`` with ``event_shape``, ``log_prob(z)`` (nats, summed over the event),
``sample(shape, temperature=1)`` and ``rsample(shape, temperature=1)``; its tensors follow the
module's device and dtype. The temperature T scales the standard deviation of the samples (Kingma
& Dhariwal 2018, section 5), not their mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .core import Chain, Transform
from .transforms.elementwise import Sigmoid

__all__ = ["StandardNormal", "DiagNormal", "GaussianMixture", "BASES", "preset_base"]

_LOG_2PI = math.log(2 * math.pi)


class StandardNormal(nn.Module):
    r"""Standard normal N(0, I) on ``event_shape``.

    log p(z) = -1/2 sum_i (z_i^2 + log 2 pi), in nats.

    Shapes: z (*batch, *event_shape); log_prob (*batch,).
    """

    def __init__(self, event_shape: int | Sequence[int]):
        super().__init__()
        self.event_shape = torch.Size([event_shape] if isinstance(event_shape, int) else event_shape)
        # A buffer so that .to(device/dtype) moves the samples too.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _reduce(self, t: Tensor) -> Tensor:
        return t.flatten(t.dim() - len(self.event_shape)).sum(-1) if self.event_shape else t

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * self._reduce(z.square() + _LOG_2PI)

    def rsample(self, shape: Sequence[int] = (), temperature: float = 1.0) -> Tensor:
        a = self._anchor
        eps = torch.randn(*shape, *self.event_shape, device=a.device, dtype=a.dtype)
        return eps if temperature == 1.0 else eps * temperature

    def sample(self, shape: Sequence[int] = (), temperature: float = 1.0) -> Tensor:
        with torch.no_grad():
            return self.rsample(shape, temperature)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}"


class DiagNormal(StandardNormal):
    r"""Normal N(mu, diag(sigma^2)) with learnable mean ``loc`` and log-scale ``log_scale``.

    log p(z) = -1/2 sum_i (((z_i - mu_i) / sigma_i)^2 + 2 log sigma_i + log 2 pi), in nats.

    Shapes: z (*batch, *event_shape); log_prob (*batch,).
    """

    def __init__(self, event_shape: int | Sequence[int]):
        super().__init__(event_shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def log_prob(self, z: Tensor) -> Tensor:
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return -0.5 * self._reduce(u.square() + 2 * self.log_scale + _LOG_2PI)

    def rsample(self, shape: Sequence[int] = (), temperature: float = 1.0) -> Tensor:
        return self.loc + torch.exp(self.log_scale) * super().rsample(shape, temperature)


class GaussianMixture(StandardNormal):
    r"""Mixture of K diagonal Gaussians with learned weights, means and scales.

    p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)) with pi = softmax(logits), so
    log p(z) = logsumexp_k [log pi_k - 1/2 sum_i (((z_i - mu_ki) / sigma_ki)^2 + 2 log sigma_ki
    + log 2 pi)], in nats. Sampling draws a component k ~ pi, then z = mu_k + T sigma_k eps with
    eps ~ N(0, I) and T the temperature (the component choice is not reparametrised: ``rsample``
    gives gradients to the means and scales, not to the weights).

    The means start at N(0, I) draws (distinct components), the scales at 1, the weights equal.

    Shapes: z (*batch, *event_shape); log_prob (*batch,); loc, log_scale (K, *event_shape);
    logits (K,).

    Reference: the mixture base of Izmailov, Kirichenko, Finzi & Wilson. Semi-supervised
    learning with normalizing flows. ICML 2020, section 3 (FlowGMM). arXiv:1912.13025.

    Args:
        event_shape: shape of one sample.
        components: the number K of Gaussians.

    Raises:
        ValueError: for fewer than one component.
    """

    def __init__(self, event_shape: int | Sequence[int], components: int = 8):
        super().__init__(event_shape)
        if components < 1:
            raise ValueError(f"a mixture needs at least one component, got {components}")
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, *self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(components, *self.event_shape))

    def component_log_prob(self, z: Tensor) -> Tensor:
        """log pi_k + log N(z; mu_k, sigma_k) for every component: (*batch, *event) -> (*batch, K)."""
        z = z.unsqueeze(z.dim() - len(self.event_shape))
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return self._reduce(-0.5 * (u.square() + 2 * self.log_scale + _LOG_2PI)) + self.logits.log_softmax(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.component_log_prob(z).logsumexp(-1)

    def rsample(self, shape: Sequence[int] = (), temperature: float = 1.0) -> Tensor:
        k = torch.distributions.Categorical(logits=self.logits.detach()).sample(tuple(shape))
        return self.loc[k] + torch.exp(self.log_scale[k]) * super().rsample(shape, temperature)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}, components={len(self.logits)}"


BASES = ("normal", "mixture", "box")


def preset_base(base: str | nn.Module, event_shape: int | Sequence[int],
                transform: Transform) -> tuple[nn.Module, Transform]:
    r"""The base distribution and transform of a preset for its ``base`` argument.

    - ``"normal"``: the standard normal, the transform unchanged;
    - ``"mixture"``: a learned :class:`GaussianMixture` of 8 components;
    - ``"box"``: for data bounded in the unit box (0, 1)^D: the standard normal and the
      transform followed by a sigmoid, x = sigmoid(g(z)), whose log-abs-det-Jacobian
      sum_i log sigmoid(y_i) + log sigmoid(-y_i) enters log_prob (data on another box
      (a, b) follow by an affine map a + (b - a) x, as ``pushforward fit --base box`` does);
    - a module (anything with ``event_shape``, ``log_prob`` and ``rsample(shape, temperature)``):
      used as given.

    Raises:
        ValueError: for another name.
    """
    if isinstance(base, nn.Module):
        return base, transform
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; choose {', '.join(BASES)} or pass a distribution module")
    if base == "mixture":
        return GaussianMixture(event_shape), transform
    shape = torch.Size([event_shape] if isinstance(event_shape, int) else event_shape)
    if base == "box":
        return StandardNormal(shape), Chain(transform, Sigmoid(transform.data_event_dims))
    return StandardNormal(shape), transform
