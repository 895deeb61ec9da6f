r"""Normalisation layers as flow transforms, with exact log-abs-det-Jacobians.

In data-parallel training the batch moments must be those of the global batch: the training
engine (:mod:`pushforward.engine`) hands every layer here a ``sync`` function, the
differentiable sum over the processes, through :func:`synchronised`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ..core import Transform

__all__ = ["ActNorm", "BatchNorm", "synchronised"]

Sync = Callable[[Tensor], Tensor]


def _batch_moments(x: Tensor, event_dims: int = 1, sync: Sync | None = None) -> tuple[Tensor, Tensor] | None:
    """Per-feature mean and biased variance of ``x`` over its batch dimensions, or None when
    the batch has fewer than two rows. For images (``event_dims`` 3) the features are the
    channels and the moments are also taken over the pixels.

    With ``sync``, a differentiable sum over the processes of a data-parallel group (whose
    backward sums the gradients over them too, as torch.nn.SyncBatchNorm does), the moments
    are those of the global batch, the rows of every process, exactly, so that training on N
    processes computes what one process computes on the whole batch. Every process must then
    call this in the same order.

    Shapes: x (*batch, features) or (*batch, C, H, W); mean, var (features,) or (C,).
    """
    flat = x.movedim(x.dim() - event_dims, -1).reshape(-1, x.shape[x.dim() - event_dims])
    if sync is None:
        return (flat.mean(0), flat.var(0, unbiased=False)) if len(flat) > 1 else None
    count = torch.full((1,), len(flat), dtype=flat.dtype, device=flat.device)
    sums = sync(torch.cat([flat.sum(0), count]))
    n = int(sums[-1])
    if n < 2:
        return None
    mean = sums[:-1] / n
    # Two passes (mean, then squared deviations) as in the one-process variance, for accuracy.
    return mean, sync(((flat - mean) ** 2).sum(0)) / n


@contextlib.contextmanager
def synchronised(module: nn.Module, sync: Sync | None) -> Iterator[None]:
    """Set ``sync`` on every :class:`ActNorm` and :class:`BatchNorm` inside ``module`` for the
    duration of the context (their own value is put back afterwards).

    Args:
        module: any module (a flow, a VAE).
        sync: the differentiable sum over the processes, or None for the moments of the local batch.
    """
    layers = [m for m in module.modules() if isinstance(m, (ActNorm, BatchNorm))]
    before = [m.sync for m in layers]
    for m in layers:
        m.sync = sync
    try:
        yield
    finally:
        for m, s in zip(layers, before):
            m.sync = s


class ActNorm(Transform):
    r"""Per-feature (per-channel for images) affine layer x = z * exp(s) + t with data-dependent
    initialisation.

    At the first ``inverse`` call in training mode, t and s are set to the mean and log
    standard deviation of that batch (over the pixels too, for images), so that the normalised
    data start with zero mean and unit variance. ladj = sum_i s_i for vectors, H W sum_c s_c for
    images. With ``sync`` (data-parallel training, see :func:`synchronised`) the batch is the
    global one, gathered from every process, so all processes start from the same parameters.

    Shapes: z, x (*batch, features) or, with ``event_dims=3``, (*batch, C, H, W) with
    C = ``features``; ladj (*batch,).

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018, section 3.1 and table 1.

    Args:
        features: number of features, or of channels for images.
        eps: added to the variance of the initialisation.
        event_dims: 1 for vectors, 3 for images (C, H, W).
        sync: the differentiable sum over the processes of a data-parallel group, or None
            (the training engine sets it while it trains, :func:`synchronised`).

    Raises:
        ValueError: for ``event_dims`` other than 1 or 3.
    """

    def __init__(self, features: int, eps: float = 1e-6, event_dims: int = 1, sync: Sync | None = None):
        super().__init__()
        if event_dims not in (1, 3):
            raise ValueError(f"ActNorm acts on vectors (event_dims=1) or images (3), got {event_dims}")
        self.eps, self.event_dims, self.sync = eps, event_dims, sync
        self.shift = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    def _parameters_and_ladj(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(shift, log_scale) shaped to broadcast over ``u``'s event, and the forward ladj."""
        if self.event_dims == 1:
            return self.shift, self.log_scale, self.log_scale.sum().expand(u.shape[:-1])
        pixels = u.shape[-2] * u.shape[-1]
        ladj = (self.log_scale.sum() * pixels).expand(u.shape[:-3])
        return self.shift[:, None, None], self.log_scale[:, None, None], ladj

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_scale, ladj = self._parameters_and_ladj(z)
        return z * torch.exp(log_scale) + shift, ladj

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                moments = _batch_moments(x, self.event_dims, self.sync)
                if moments is not None:
                    self.shift.copy_(moments[0])
                    self.log_scale.copy_(0.5 * torch.log(moments[1] + self.eps))
                    self.initialized.fill_(True)
        shift, log_scale, ladj = self._parameters_and_ladj(x)
        return (x - shift) * torch.exp(-log_scale), -ladj


class BatchNorm(Transform):
    r"""Batch normalisation as a bijection, in the normalising (inverse) direction.

    z = (x - m) / sqrt(v + eps) * exp(gamma) + beta, with (m, v) the batch mean and variance
    in training mode (updating running averages) and the running averages in evaluation mode
    and for sampling (forward). ladj of the inverse = sum_i gamma_i - 1/2 log(v_i + eps).

    With ``sync`` (data-parallel training, set by the training engine through
    :func:`synchronised`) the batch moments are those of the global batch, all-reduced over the
    processes with gradients (like torch.nn.SyncBatchNorm), so N processes train exactly as one
    process on the whole batch; every process must then run the layer in training mode in step
    (evaluation mode needs no communication).

    Shapes: z, x (*batch, features); ladj (*batch,).

    Reference: Papamakarios et al. Masked autoregressive flow for density estimation.
    NeurIPS 2017, appendix B; Dinh et al. Density estimation using Real NVP. ICLR 2017, sec. 3.7.

    Args:
        features: number of features.
        momentum: weight of the current batch in the running averages.
        eps: added to the variance for stability.
        sync: the differentiable sum over the processes of a data-parallel group, or None.
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5, sync: Sync | None = None):
        super().__init__()
        self.momentum, self.eps, self.sync = momentum, eps, sync
        self.log_gamma = nn.Parameter(torch.zeros(features))
        self.beta = nn.Parameter(torch.zeros(features))
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def _ladj(self, var: Tensor, like: Tensor) -> Tensor:
        return (self.log_gamma - 0.5 * torch.log(var + self.eps)).sum().expand(like.shape[:-1])

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        x = (z - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps) + mean
        return x, -self._ladj(var, z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        moments = _batch_moments(x, sync=self.sync) if self.training else None
        if moments is not None:
            mean, var = moments
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        z = (x - mean) / torch.sqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        return z, self._ladj(var, x)
