r"""The latent space of a flow: interpolation and attribute manipulation.

A flow is invertible, so every example x has an exact latent code z = g^{-1}(x)
(:meth:`~pushforward.core.Flow.encode`) and every z decodes to x = g(z)
(:meth:`~pushforward.core.Flow.decode`). Moving in z and decoding gives new examples: a path
between two codes (:func:`interpolate`), or a code moved along the direction of an attribute
(:func:`attribute_direction`, :func:`manipulate`; Kingma & Dhariwal 2018, section 5).

The latent of a multi-scale image flow (:class:`~pushforward.Glow`,
:class:`~pushforward.RealNVPImage`) is one tensor of the image's shape (C, H, W), the base's
event shape: at each level, :class:`~pushforward.transforms.MultiScale` keeps the half of the
channels that leaves the flow (normalised by its prior) beside the half that goes on, and the
squeezes are undone on the way out. Nothing is dropped, so ``decode(encode(x))`` is x up to
rounding, and the temperature of :meth:`~pushforward.core.Flow.sample` scales every level,
the factored-out ones included. For either preset with more than one level,
``Squeeze()(z)[0]`` (:class:`~pushforward.transforms.Squeeze`) splits the latent of the first
level along the channels: the first 2C channels went on to the next level, the last 2C left the
flow there (C the image's channels).

Shapes: one example x has the flow's event shape, its code z the base's event shape; functions
take batches (N, *event) unless they say otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .core import Flow, check_event_shape

__all__ = ["slerp", "latent_path", "interpolate", "encode_batches", "attribute_direction", "manipulate"]

METHODS = ("linear", "slerp")


def slerp(z_a: Tensor, z_b: Tensor, t: Tensor, event_dims: int = 1) -> Tensor:
    r"""Spherical interpolation of the directions of ``z_a`` and ``z_b``, with the norm
    interpolated linearly.

    z_t = ((1 - t) |z_a| + t |z_b|) (sin((1 - t) omega) a + sin(t omega) b) / sin(omega), with
    a, b the unit vectors of z_a, z_b (norms over the ``event_dims`` trailing dimensions) and
    omega their angle; where omega is within 1e-6 of 0 or pi (parallel or opposite codes, whose
    great circle is not defined by them) the linear interpolation (1 - t) z_a + t z_b. Codes of equal norm keep it along the whole path (the norm of a
    standard normal code is concentrated near sqrt(D); the linear path's midpoint is shorter),
    and z_0 = z_a, z_1 = z_b exactly.

    Shapes: z_a, z_b (*batch, *event); t (T,) -> (T, *batch, *event).

    Reference: Shoemake. Animating rotation with quaternion curves. SIGGRAPH 1985; White.
    Sampling generative networks. arXiv:1609.04468, 2016 (slerp in latent spaces).

    Raises:
        ValueError: if z_a and z_b differ in shape.
    """
    if z_a.shape != z_b.shape:
        raise ValueError(f"the two codes differ in shape: {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    t = t.to(z_a).reshape(-1, *[1] * z_a.dim())
    linear = (1 - t) * z_a + t * z_b
    norm_a = z_a.flatten(z_a.dim() - event_dims).norm(dim=-1)
    norm_b = z_b.flatten(z_b.dim() - event_dims).norm(dim=-1)
    cos = ((z_a * z_b).flatten(z_a.dim() - event_dims).sum(-1) / (norm_a * norm_b)).clamp(-1, 1)
    omega = torch.acos(cos).nan_to_num(0.0)  # a zero code has no direction: linear
    omega, norm_a, norm_b = (v.reshape(*v.shape, *[1] * event_dims) for v in (omega, norm_a, norm_b))
    parallel = (omega < 1e-6) | (omega > math.pi - 1e-6)
    safe = torch.where(parallel, torch.ones_like(omega), omega)
    t_omega = t * safe
    # sin((1 - t) omega) as sin(omega - t omega) keeps t = 0 exact; at t = 1 it is sin(0) = 0
    direction = (torch.sin(safe - t_omega) * z_a / norm_a + torch.sin(t_omega) * z_b / norm_b) / torch.sin(safe)
    spherical = ((1 - t) * norm_a + t * norm_b) * direction
    path = torch.where(parallel, linear, spherical)
    # the ends exactly: rounding in the norms and sines would move them by an ulp
    path[t.flatten() == 0] = z_a
    path[t.flatten() == 1] = z_b
    return path


def latent_path(z_a: Tensor, z_b: Tensor, steps: int, method: str = "linear", event_dims: int = 1) -> Tensor:
    """``steps`` codes from ``z_a`` to ``z_b`` at t = 0, 1/(steps-1), ..., 1, linear
    ((1 - t) z_a + t z_b) or spherical (:func:`slerp`); the first is z_a and the last z_b exactly.

    Shapes: z_a, z_b (*event) -> (steps, *event).

    Raises:
        ValueError: for fewer than 2 steps, an unknown method, or codes of different shapes.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (the two ends included), got {steps!r}")
    if method not in METHODS:
        raise ValueError(f"unknown interpolation method {method!r}; choose {' or '.join(METHODS)}")
    if z_a.shape != z_b.shape:
        raise ValueError(f"the two codes differ in shape: {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device)
    if method == "slerp":
        return slerp(z_a, z_b, t, event_dims)
    return (1 - t.reshape(-1, *[1] * z_a.dim())) * z_a + t.reshape(-1, *[1] * z_a.dim()) * z_b


def _examples(flow: Flow, x: Tensor, name: str) -> Tensor:
    """``x`` as a batch (N, *event), N >= 1, of the flow's event shape."""
    check_event_shape(x, flow.event_shape, name)
    if x.dim() != len(flow.event_shape) + 1:
        raise ValueError(f"{name} must be a batch (N, {', '.join(map(str, flow.event_shape))}), "
                         f"got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty: it needs at least one example")
    return x


def _example(flow: Flow, x: Tensor, name: str) -> Tensor:
    """One example of the flow's event shape, given as (*event) or (1, *event), as (1, *event)."""
    check_event_shape(x, flow.event_shape, name)
    if x.dim() > len(flow.event_shape) + 1 or (x.dim() > len(flow.event_shape) and len(x) != 1):
        raise ValueError(f"{name} must be one example of shape {tuple(flow.event_shape)}, got {tuple(x.shape)}")
    return x.reshape(1, *flow.event_shape)


def interpolate(flow: Flow, x_a: Tensor, x_b: Tensor, steps: int = 8, method: str = "linear") -> Tensor:
    r"""The decoded path between the codes of two examples: x_t = g(z_t) for the ``steps``
    codes z_t of :func:`latent_path` from z_a = g^{-1}(x_a) to z_b = g^{-1}(x_b); the ends
    are the decoded codes themselves, so x_0 and x_{steps-1} are x_a and x_b up to rounding.

    Shapes: x_a, x_b (*event) or (1, *event) -> (steps, *event).

    Reference: Kingma & Dhariwal. Glow. NeurIPS 2018, section 5 and figure 5 (linear
    interpolation in the latent space of a flow).

    Args:
        flow: an unconditional flow.
        x_a, x_b: the two examples, in the flow's data space.
        steps: number of images on the path, ends included (>= 2).
        method: "linear" or "slerp" (:func:`slerp`, which keeps the norm typical of the base).

    Raises:
        ValueError: for examples of another shape than the flow's, fewer than 2 steps, or an
            unknown method.
    """
    x = torch.cat([_example(flow, x_a, "x_a"), _example(flow, x_b, "x_b")])
    with torch.no_grad():
        z_a, z_b = flow.encode(x)
        return flow.decode(latent_path(z_a, z_b, steps, method, len(flow.base.event_shape)))


def encode_batches(flow: Flow, x: Tensor, batch_size: int = 256) -> Tensor:
    """The codes of the examples ``x``, encoded ``batch_size`` at a time without gradients, on
    the flow's device.

    Shapes: x (N, *event) -> (N, *base event).

    Raises:
        ValueError: for an empty batch, examples of another shape than the flow's, or a
            batch size below 1.
    """
    x = _examples(flow, x, "x")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = next(flow.parameters()).device
    with torch.no_grad():
        return torch.cat([flow.encode(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])


def attribute_direction(flow: Flow, positive: Tensor, negative: Tensor, batch_size: int = 256) -> Tensor:
    r"""The direction of an attribute in the latent space: the mean code of the examples that
    have it minus the mean code of those that do not,
    Delta = mean_i g^{-1}(x_i^+) - mean_j g^{-1}(x_j^-).

    Shapes: positive (N+, *event), negative (N-, *event) -> Delta (*base event).

    Reference: Kingma & Dhariwal. Glow. NeurIPS 2018, section 5 ("semantic manipulation",
    figure 5).

    Raises:
        ValueError: for an empty set, examples of another shape than the flow's, or a batch
            size below 1.
    """
    for x, name in ((positive, "the positive set"), (negative, "the negative set")):
        _examples(flow, x, name)
    means = [encode_batches(flow, x, batch_size).mean(0) for x in (positive, negative)]
    return means[0] - means[1]


def manipulate(flow: Flow, x: Tensor, direction: Tensor, alphas: Sequence[float] | Tensor) -> Tensor:
    r"""Examples moved along a latent direction: g(g^{-1}(x) + alpha Delta) for each alpha.

    Shapes: x (N, *event); direction (*base event) -> (N, len(alphas), *event); alpha = 0
    gives x back up to rounding.

    Reference: Kingma & Dhariwal. Glow. NeurIPS 2018, section 5 and figure 5.

    Raises:
        ValueError: for an empty batch or no alphas, examples or a direction of another shape
            than the flow's, or alphas that are not finite.
    """
    x = _examples(flow, x, "x")
    check_event_shape(direction, flow.base.event_shape, "the direction")
    if direction.dim() != len(flow.base.event_shape):
        raise ValueError(f"the direction must have the latent's shape {tuple(flow.base.event_shape)}, "
                         f"got {tuple(direction.shape)}")
    alphas = torch.as_tensor(alphas, dtype=direction.dtype, device=direction.device).flatten()
    if len(alphas) == 0 or not bool(torch.isfinite(alphas).all()):
        raise ValueError(f"alphas must be one or more finite numbers, got {alphas.tolist()}")
    z = encode_batches(flow, x)
    moved = z[:, None] + alphas.reshape(-1, *[1] * direction.dim()) * direction
    with torch.no_grad():
        return flow.decode(moved)
