r"""Base distributions of flows: the standard normal and a diagonal normal.

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

__all__ = ["StandardNormal", "DiagNormal"]

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
