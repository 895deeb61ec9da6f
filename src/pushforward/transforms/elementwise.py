r"""Element-wise transforms: each feature is mapped on its own by a monotonic function.

The math of an element-wise map is kept apart from where its parameters come from. An
*element-wise map* (``AffineMap``, ``RQSpline`` of :mod:`.splines`, ...) takes its parameters
as a tensor ``h`` of shape (*batch, features, map.params) and returns the output with the
element-wise log-derivative; a coupling or autoregressive layer predicts ``h`` with a
conditioner, and :class:`Elementwise` learns it directly (or from a context).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Chain, Transform, sum_rightmost

__all__ = ["ElementwiseMap", "AffineMap", "AdditiveMap", "Elementwise", "Affine", "Sigmoid", "DomainError", "logit_preprocessing"]


class DomainError(ValueError):
    """Raised when an input lies outside the domain of a transform (e.g. logit of x >= 1)."""


class ElementwiseMap:
    r"""A monotonic map x_i = f(z_i; h_i) applied to each feature with its own parameters.

    Subclasses set ``params`` (the number of parameters per feature) and implement
    ``forward(z, h)`` and ``inverse(x, h)``, each returning the output and the element-wise
    log|df/dz| (resp. log|df^{-1}/dx|), both of the shape of the input. Zero parameters give
    the identity map.

    Shapes: z, x (*shape); h (*shape, params).
    """

    params: int = 0

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class AffineMap(ElementwiseMap):
    r"""Affine map x = z * exp(s) + t with a softly clamped log-scale.

    h = (t, s_raw); s = bound * tanh(s_raw / bound) keeps exp(s) within exp(±bound), which
    avoids the overflow of an unbounded exp while equal to s_raw near zero.
    ladj = s (element-wise).

    Shapes: z, x (*shape); h (*shape, 2).

    Reference: Dinh et al. Density estimation using Real NVP. ICLR 2017, eq. (6);
    Papamakarios et al. Masked autoregressive flow for density estimation. NeurIPS 2017, eq. (2).

    Args:
        bound: the largest absolute log-scale, in nats.
    """

    params = 2

    def __init__(self, bound: float = 5.0):
        self.bound = bound

    def _unpack(self, h: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = h.unbind(-1)
        return shift, self.bound * torch.tanh(raw / self.bound)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._unpack(h)
        return z * torch.exp(log_scale) + shift, log_scale

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._unpack(h)
        return (x - shift) * torch.exp(-log_scale), -log_scale


class AdditiveMap(ElementwiseMap):
    r"""Additive (volume-preserving) map x = z + t; ladj = 0.

    Shapes: z, x (*shape); h (*shape, 1).

    Reference: Dinh, Krueger & Bengio. NICE: Non-linear independent components estimation.
    ICLR 2015 workshop, section 3.2.
    """

    params = 1

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return z + h[..., 0], torch.zeros_like(z)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return x - h[..., 0], torch.zeros_like(x)


class Elementwise(Transform):
    r"""An element-wise map with learned parameters, optionally predicted from a context.

    x_i = f(z_i; h_i), ladj = sum_i log|f'(z_i; h_i)|. Without context h is a free parameter
    of shape (features, map.params); with context h = h_0 + W c (a linear function of the
    context, as amortised flows in VAEs).

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Args:
        elementwise_map: an :class:`ElementwiseMap` (affine, spline, ...).
        features: number of features D.
        context_features: size of the context, 0 for none.
    """

    def __init__(self, elementwise_map: ElementwiseMap, features: int, context_features: int = 0):
        super().__init__()
        self.map = elementwise_map
        self.features = features
        self.params = nn.Parameter(torch.zeros(features, elementwise_map.params))
        self.context = nn.Linear(context_features, features * elementwise_map.params) if context_features else None
        if self.context is not None:
            nn.init.zeros_(self.context.weight)
            nn.init.zeros_(self.context.bias)

    def _h(self, x: Tensor, context: Tensor | None) -> Tensor:
        h = self.params.expand(*x.shape, self.map.params)
        if self.context is not None:
            if context is None:
                raise ValueError(f"{type(self).__name__} needs a context")
            h = h + self.context(context).unflatten(-1, (self.features, self.map.params))
        return h

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ladj = self.map.forward(z, self._h(z, context))
        return x, ladj.sum(-1)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.map.inverse(x, self._h(x, context))
        return z, ladj.sum(-1)


class Affine(Transform):
    r"""Fixed element-wise affine map x = shift + scale * z (e.g. a standardisation).

    ladj = sum_i log|scale_i| over the event.

    Shapes: z, x (*batch, *event); shift, scale broadcastable to the event shape; ladj (*batch,).

    Args:
        shift, scale: tensors of the event shape (stored as buffers, not learned).
        event_dims: number of trailing dimensions the map acts on.

    Raises:
        ValueError: if a scale is zero or not finite.
    """

    def __init__(self, shift: Tensor, scale: Tensor, event_dims: int = 1):
        super().__init__()
        shift, scale = torch.as_tensor(shift), torch.as_tensor(scale)
        if not bool(torch.isfinite(scale).all() and (scale != 0).all()):
            raise ValueError("Affine scale must be finite and non-zero")
        self.event_dims = event_dims
        self.register_buffer("shift", shift.clone())
        self.register_buffer("scale", scale.clone())

    def _ladj(self, like: Tensor) -> Tensor:
        log_scale = torch.log(torch.abs(self.scale)).expand(like.shape[like.dim() - self.event_dims :])
        return sum_rightmost(log_scale, self.event_dims).expand(like.shape[: like.dim() - self.event_dims])

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.shift + self.scale * z, self._ladj(z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.shift) / self.scale, -self._ladj(x)


class Sigmoid(Transform):
    r"""Logistic sigmoid x = 1 / (1 + exp(-z)) from R to (0, 1); its inverse is the logit.

    ladj = sum_i log sigmoid(z_i) + log sigmoid(-z_i) = -sum_i softplus(-z_i) + softplus(z_i).

    Shapes: z, x (*batch, *event); ladj (*batch,).

    Raises:
        DomainError: in ``inverse``, for x outside the open interval (0, 1).
    """

    def __init__(self, event_dims: int = 1):
        super().__init__()
        self.event_dims = event_dims

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = -(F.softplus(z) + F.softplus(-z))
        return torch.sigmoid(z), sum_rightmost(ladj, self.event_dims)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not bool(((x > 0) & (x < 1)).all()):
            raise DomainError("logit: input outside the open interval (0, 1)")
        log_x, log_1mx = torch.log(x), torch.log1p(-x)
        return log_x - log_1mx, sum_rightmost(-(log_x + log_1mx), self.event_dims)


def logit_preprocessing(alpha: float = 1e-6, levels: int = 256, event_dims: int = 1) -> Transform:
    r"""The MAF logit preprocessing as a transform from logit space to pixel space [0, levels).

    Forward: x = levels * (sigmoid(r) - alpha) / (1 - 2 alpha), the inverse of
    r = logit(alpha + (1 - 2 alpha) x / levels).

    Reference: Papamakarios et al. Masked autoregressive flow for density estimation.
    NeurIPS 2017, appendix E.2 (alpha = 1e-6 for MNIST).
    """
    scale = levels / (1 - 2 * alpha)
    return Chain(Sigmoid(event_dims), Affine(torch.tensor(-alpha * scale), torch.tensor(scale), event_dims))
