r"""Element-wise transforms: each feature is mapped on its own by a monotonic function.

The math of an element-wise map is kept apart from where its parameters come from. An
*element-wise map* (``AffineMap``, ``RQSpline`` of :mod:`.splines`, ...) takes its parameters
as a tensor ``h`` of shape (*batch, features, map.params) and returns the output with the
element-wise log-derivative; a coupling or autoregressive layer predicts ``h`` with a
conditioner, and :class:`Elementwise` learns it directly (or from a context). The monotonic
maps live in :mod:`.splines` (rational-quadratic, piecewise-linear and -quadratic, cubic,
linear-rational) and :mod:`.polynomials` (sum-of-squares, Bernstein); :func:`numerical_inverse`
inverts those without a closed-form inverse.

Of the fixed element-wise transforms here, those onto an interval (:class:`Sigmoid`,
:class:`Tanh`, :class:`Softplus`) raise :class:`DomainError` in ``inverse`` for inputs outside
it, naming the interval and the offending values; :class:`LeakyReLU` and :class:`Affine` map R
onto R.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.parameters import ContextParameters, read_renamed
from ..core import Chain, Transform, replay_backward, sum_rightmost
from .numerical import bisection, default_tolerance

__all__ = ["ElementwiseMap", "AffineMap", "AdditiveMap", "InverseMap", "Elementwise", "Affine", "Sigmoid",
           "LeakyReLU", "Softplus", "Tanh", "DomainError", "logit_preprocessing", "numerical_inverse"]


class DomainError(ValueError):
    """Raised when an input lies outside the domain of a transform (e.g. logit of x >= 1)."""


def _check_domain(inside: Tensor, x: Tensor, message: str) -> None:
    """Raise :class:`DomainError` with ``message``, the count and an example, unless ``inside`` is all True."""
    if not bool(inside.all()):
        bad = x.detach()[~inside]
        raise DomainError(f"{message}: {bad.numel()} value(s) outside, e.g. {bad.flatten()[0].item():g}")


def numerical_inverse(forward: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor, tol: float | None = None,
                      max_iter: int = 200, lower: float | None = None, upper: float | None = None
                      ) -> tuple[Tensor, Tensor]:
    r"""Inverse z = f^{-1}(x) of an increasing element-wise map by bisection, with gradients.

    :func:`~pushforward.transforms.numerical.bisection` finds z_0 (no gradients) with
    |z_0 - z| <= tol * max(1, |z|); one Newton step r / f'(z_0), r = f(z_0) - x, polishes the
    value, limited to that tolerance (a full step could overshoot in float32 where the slope is
    tiny), and the polished z gets the implicit-function gradients dz/dx = 1 / f'(z),
    dz/dtheta = -(df/dtheta) / f'(z) through N(z) = z - (r - stop_gradient(r)) / f'(z), with
    r = f(z) - x and f' both at z: N leaves the value unchanged. Applied twice, N(N(z)), the
    second derivatives are exact too (N is flat in z at the root, so its error in z enters only
    squared), at the cost of one more evaluation of f. ladj = -log f'(z), at the same z.

    Shapes: x (*shape); ``forward`` maps z (*shape) to (f(z), log f'(z)), both (*shape);
    returns z, ladj (*shape).

    Args:
        forward: the increasing map and its log-derivative, defined on all of R.
        x: the targets.
        tol: tolerance on z (default :func:`~pushforward.transforms.numerical.default_tolerance`).
        max_iter: the largest number of halvings.
        lower, upper: clamp z_0 and z to [lower, upper] (where the root is known to lie
            there, e.g. inside a spline's bound: then neither z nor its ladj can come from a
            tail whose slope differs).

    Raises:
        ConvergenceError: if the bisection does not reach ``tol`` within ``max_iter`` halvings
            or ``x`` lies outside the image of f.
    """
    clamp = lower is not None or upper is not None
    with torch.no_grad():
        z0 = bisection(lambda u: forward(u)[0], x, tol, max_iter)
        z0 = z0.clamp(lower, upper) if clamp else z0
        x0, log_slope0 = forward(z0)
        step = (x0 - x) * torch.exp(-log_slope0)
        limit = (tol if tol is not None else default_tolerance(x.dtype)) * z0.abs().clamp(min=1)
        z = z0 - torch.maximum(torch.minimum(step, limit), -limit)
        z = z.clamp(lower, upper) if clamp else z
    # The gradients at the polished z, where the ladj is evaluated too: with the slope at z0
    # instead, autograd's log-derivative of the inverse and the ladj disagree (by up to 1e-3
    # in float32, where z0 may lie 1e-5 away on a steep map).
    for _ in range(2):  # the second step, from a z with a graph, makes second derivatives exact
        fz, log_slope = forward(z)
        residual = fz - x
        z = z - (residual - residual.detach()) * torch.exp(-log_slope)
    return z, -forward(z)[1]


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


def _affine(u: Tensor, h: Tensor, bound: float, sign: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""y = (u - a) exp(sign s) + c and ladj = sign s, with s = bound tanh(raw / bound): ``sign``
    +1 is the forward map (a = 0, c = shift), -1 the inverse (a = shift, c = 0). tanh(v) =
    2 sigmoid(2v) - 1 (on some CPUs torch's tanh is several times slower than its sigmoid; the
    backward needs tau in any case).

    Shapes: u (*shape); h (*shape, 2) = (shift, raw), either broadcast to the other; returns
    y, ladj and, for the backward, tau = sigmoid(2 raw / bound), exp(sign s) and
    (u - a) exp(sign s), all of the broadcast shape.
    """
    if u.shape != h.shape[:-1]:  # every output of the full shape, so that autograd sums each
        shape = torch.broadcast_shapes(u.shape, h.shape[:-1])  # gradient to its input's shape
        u, h = u.expand(shape), h.expand(*shape, 2)
    shift, raw = h.unbind(-1)
    tau = torch.sigmoid(raw * (2 / bound))
    ladj = torch.mul(tau, 2 * sign * bound).sub_(sign * bound)
    scale = torch.exp(ladj)
    scaled = u * scale if sign > 0 else (u - shift).mul_(scale)
    return (scaled + shift if sign > 0 else scaled), ladj, tau, scale, scaled


class _Affine(torch.autograd.Function):
    r""":func:`_affine` as one autograd node, whose backward uses ds/draw = 1 - tanh^2 =
    4 tau (1 - tau). A backward asked for a graph (``create_graph=True``) is recomputed by
    plain autograd (:func:`~pushforward.core.replay_backward`), so second derivatives are exact.
    """

    @staticmethod
    def forward(ctx, u: Tensor, h: Tensor, bound: float, sign: float) -> tuple[Tensor, Tensor]:
        y, ladj, tau, scale, scaled = _affine(u, h, bound, sign)
        ctx.bound, ctx.sign = bound, sign
        ctx.save_for_backward(tau, scale, scaled, u, h)
        return y, ladj

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_ladj: Tensor):
        tau, scale, scaled, u, h = ctx.saved_tensors
        if torch.is_grad_enabled():
            return *replay_backward(lambda u, h: _affine(u, h, ctx.bound, ctx.sign)[:2], (u, h),
                                    ctx.needs_input_grad, (grad_y, grad_ladj)), None, None
        grad_u = grad_y * scale
        grad_h = grad_y.new_empty(*grad_y.shape, 2)
        if ctx.sign > 0:
            grad_h[..., 0] = grad_y
        else:
            torch.neg(grad_u, out=grad_h[..., 0])
        # dL/draw = sign (dL/dy (u - a) exp(sign s) + dL/dladj) * 4 tau (1 - tau)
        torch.mul(torch.addcmul(grad_ladj, grad_y, scaled), (tau - tau * tau).mul_(4 * ctx.sign), out=grad_h[..., 1])
        return grad_u, grad_h, None, None


class AffineMap(ElementwiseMap):
    r"""Affine map x = z * exp(s) + t with a softly clamped log-scale.

    h = (t, s_raw); s = bound * tanh(s_raw / bound) keeps exp(s) within exp(±bound), which
    avoids the overflow of an unbounded exp while equal to s_raw near zero.
    ladj = s (element-wise). Where gradients are tracked, each direction is one autograd node
    with a hand-written backward (recomputed by plain autograd when a gradient with a graph is
    asked for, so double backward is exact; no ``torch.func`` transforms); elsewhere
    (``log_prob`` under ``no_grad``, sampling) the same arithmetic runs without a node. ``python -m benchmarks.made_blocks --settings auto+composed,auto --repeats
    21`` measured a MAF training step 1.00-1.02x as fast as with composed operations.

    Shapes: z, x (*shape); h (*shape, 2).

    Reference: Dinh et al. Density estimation using Real NVP. ICLR 2017, eq. (6);
    Papamakarios et al. Masked autoregressive flow for density estimation. NeurIPS 2017, eq. (2).

    Args:
        bound: the largest absolute log-scale, in nats.
    """

    params = 2

    def __init__(self, bound: float = 5.0):
        self.bound = bound

    def _map(self, u: Tensor, h: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        if torch.is_grad_enabled() and (u.requires_grad or h.requires_grad):
            return _Affine.apply(u, h, self.bound, sign)
        return _affine(u, h, self.bound, sign)[:2]  # no autograd node to build

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(z, h, 1.0)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(x, h, -1.0)


class SigmoidAffineMap(ElementwiseMap):
    r"""Affine map whose scale in the data -> base direction is sigmoid(s_raw + 2), as Glow's
    couplings: it can only contract there, which keeps deep stacks stable.

    Data -> base (inverse): z = (x - t) * sigmoid(s_raw + 2), ladj = log sigmoid(s_raw + 2)
    = -softplus(-s_raw - 2) <= 0; base -> data (forward): x = z / sigmoid(s_raw + 2) + t,
    ladj = softplus(-s_raw - 2). Zero parameters give the scale sigmoid(2) = 0.88, not the
    identity (as in Glow).

    Shapes: z, x (*shape); h (*shape, 2) = (t, s_raw).

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018, table 1 and the reference code's ``scale = sigmoid(h + 2)``.
    """

    params = 2

    @staticmethod
    def _log_scale(h: Tensor) -> Tensor:
        """log of the base -> data scale, softplus(-s_raw - 2) >= 0."""
        return F.softplus(-h[..., 1] - 2)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        s = self._log_scale(h)
        return z * torch.exp(s) + h[..., 0], s.expand_as(z)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        s = self._log_scale(h)
        return (x - h[..., 0]) * torch.exp(-s), (-s).expand_as(x)


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


class InverseMap(nn.Module, ElementwiseMap):
    r"""The inverse f^{-1} of an element-wise map: its ``forward`` is ``map.inverse`` and vice versa.

    Chooses which direction of a map is cheap inside a layer, e.g. a polynomial evaluated in
    the data -> base direction (density evaluation) and inverted numerically for sampling,
    as the SOS and Bernstein flows do. It is a module so that a map with parameters of its own
    (an ``nn.Module``) stays registered in the layer that holds it.

    Shapes: as ``map``.

    Args:
        elementwise_map: the map f to invert.
    """

    def __init__(self, elementwise_map: ElementwiseMap):
        super().__init__()
        self.map = elementwise_map
        self.params = elementwise_map.params

    def extra_repr(self) -> str:
        return "" if isinstance(self.map, nn.Module) else f"map={self.map!r}"

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.map.inverse(z, h)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.map.forward(x, h)


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
        self.conditioner = ContextParameters({"h": (features, elementwise_map.params)}, context_features)
        read_renamed(self, "parameters_", "conditioner")  # checkpoints of pushforward 0.1

    def _h(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.conditioner(context)["h"].expand(*x.shape, self.map.params)

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
        _check_domain((x > 0) & (x < 1), x, "logit: input outside the open interval (0, 1)")
        log_x, log_1mx = torch.log(x), torch.log1p(-x)
        return log_x - log_1mx, sum_rightmost(-(log_x + log_1mx), self.event_dims)


class LeakyReLU(Transform):
    r"""Leaky ReLU x = z for z >= 0 and x = a z for z < 0, with a fixed or learned slope a > 0.

    ladj = (log a) times the number of negative entries; the inverse divides the negative
    entries by a. The slope is stored as log a, so a learned slope stays positive.

    Shapes: z, x (*batch, *event); ladj (*batch,).

    Reference: Maas, Hannun & Ng. Rectifier nonlinearities improve neural network acoustic
    models. ICML 2013 workshop; as a flow layer, Oliva et al. Transformation autoregressive
    networks. ICML 2018, section 3.1.

    Args:
        slope: the slope a on the negative half-line.
        learnable: learn log a as a parameter (else a fixed buffer).
        event_dims: number of trailing dimensions the map acts on.

    Raises:
        ValueError: if the slope is not a positive finite number.
    """

    def __init__(self, slope: float = 0.01, learnable: bool = False, event_dims: int = 1):
        super().__init__()
        if not (0 < slope < math.inf):
            raise ValueError(f"LeakyReLU slope must be positive and finite, got {slope}")
        self.event_dims = event_dims
        log_slope = torch.tensor(math.log(slope))
        if learnable:
            self.log_slope = nn.Parameter(log_slope)
        else:
            self.register_buffer("log_slope", log_slope)

    def _leaky(self, u: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        log_slope = sign * self.log_slope.to(u.dtype)
        negative = u < 0
        out = torch.where(negative, u * torch.exp(log_slope), u)
        ladj = torch.where(negative, log_slope, torch.zeros_like(u))
        return out, sum_rightmost(ladj, self.event_dims)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._leaky(z, 1.0)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._leaky(x, -1.0)


class Softplus(Transform):
    r"""Softplus x = log(1 + exp(z)) from R onto (0, inf).

    ladj = sum_i log sigmoid(z_i) = -sum_i softplus(-z_i); inverse z = x + log(-expm1(-x)),
    ladj = -sum_i log(-expm1(-x_i)). In float64 z < -745 (float32: -103) gives x = 0, whose
    inverse is outside the domain.

    Shapes: z, x (*batch, *event); ladj (*batch,).

    Reference: Dugas et al. Incorporating second-order functional knowledge for better option
    pricing. NeurIPS 2000.

    Args:
        event_dims: number of trailing dimensions the map acts on.

    Raises:
        DomainError: in ``inverse``, for x that is not a finite positive number.
    """

    def __init__(self, event_dims: int = 1):
        super().__init__()
        self.event_dims = event_dims

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return F.softplus(z), sum_rightmost(-F.softplus(-z), self.event_dims)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_domain(torch.isfinite(x) & (x > 0), x, "softplus inverse: input outside (0, inf)")
        log_slope = torch.log(-torch.expm1(-x))
        return x + log_slope, sum_rightmost(-log_slope, self.event_dims)


class Tanh(Transform):
    r"""Hyperbolic tangent x = tanh(z) from R onto (-1, 1); its inverse is atanh.

    ladj = sum_i log(1 - tanh(z_i)^2) = sum_i 2 (log 2 - z_i - softplus(-2 z_i)), which stays
    finite where tanh rounds to ±1; inverse ladj = -sum_i log1p(-x_i) + log1p(x_i). In float32
    |z| > 9 rounds to ±1 (float64: 19), whose inverse is outside the domain.

    Shapes: z, x (*batch, *event); ladj (*batch,).

    Args:
        event_dims: number of trailing dimensions the map acts on.

    Raises:
        DomainError: in ``inverse``, for x outside the open interval (-1, 1).
    """

    def __init__(self, event_dims: int = 1):
        super().__init__()
        self.event_dims = event_dims

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = 2 * (math.log(2) - z - F.softplus(-2 * z))
        return torch.tanh(z), sum_rightmost(ladj, self.event_dims)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_domain((x > -1) & (x < 1), x, "atanh: input outside the open interval (-1, 1)")
        log_1mx, log_1px = torch.log1p(-x), torch.log1p(x)
        return (log_1px - log_1mx) / 2, sum_rightmost(-(log_1mx + log_1px), self.event_dims)


def logit_preprocessing(alpha: float = 1e-6, levels: int = 256, event_dims: int = 1) -> Transform:
    r"""The MAF logit preprocessing as a transform from logit space to pixel space [0, levels).

    Forward: x = levels * (sigmoid(r) - alpha) / (1 - 2 alpha), the inverse of
    r = logit(alpha + (1 - 2 alpha) x / levels).

    Reference: Papamakarios et al. Masked autoregressive flow for density estimation.
    NeurIPS 2017, appendix E.2 (alpha = 1e-6 for MNIST).
    """
    scale = levels / (1 - 2 * alpha)
    return Chain(Sigmoid(event_dims), Affine(torch.tensor(-alpha * scale), torch.tensor(scale), event_dims))
