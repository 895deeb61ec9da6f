r"""Monotonic splines as element-wise maps, with identity tails outside [-bound, bound].

The peer libraries' most reported bug is a spline that returns NaN or inf at or beyond its
tail bound. Here every spline goes through :func:`with_identity_tails`, which evaluates the
spline only on inputs inside the bound (others are replaced by 0 before any arithmetic, so
neither the values nor the gradients of the unused branch can be NaN) and the identity outside,
and the knots are pinned so that the first and last equal -bound and +bound exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .elementwise import ElementwiseMap

__all__ = ["with_identity_tails", "rational_quadratic_spline", "RQSpline"]


def with_identity_tails(
    x: Tensor, bound: float, spline: Callable[[Tensor], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    r"""Apply ``spline`` on [-bound, bound] and the identity (log-derivative 0) outside.

    ``spline(x_inside)`` receives ``x`` with the entries outside the bound replaced by 0 and
    returns (y, log|dy/dx|) of the shape of ``x``.

    Shapes: x (*shape); returns y, ladj (*shape).
    """
    inside = (x >= -bound) & (x <= bound)
    y, ladj = spline(torch.where(inside, x, torch.zeros_like(x)))
    return torch.where(inside, y, x), torch.where(inside, ladj, torch.zeros_like(ladj))


def _knots(raw: Tensor, bound: float, minimum: float) -> Tensor:
    """Knot positions (*, K + 1) from unnormalised bin sizes (*, K); first -bound, last +bound."""
    bins = raw.shape[-1]
    sizes = minimum + (1 - minimum * bins) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(sizes, dim=-1), (1, 0))
    knots = 2 * bound * knots - bound
    # Pin the end knots exactly: cumsum rounding must not move the bound.
    return torch.cat([knots.new_full(knots.shape[:-1] + (1,), -bound), knots[..., 1:-1],
                      knots.new_full(knots.shape[:-1] + (1,), bound)], dim=-1)


def _gather(t: Tensor, k: Tensor) -> Tensor:
    return torch.gather(t, -1, k.unsqueeze(-1)).squeeze(-1)


def rational_quadratic_spline(
    x: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Monotonic rational-quadratic spline through the given knots, or its inverse.

    In bin k, with xi = (x - x_k) / w_k, s_k = h_k / w_k and knot derivatives d_k, d_{k+1}:

        y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]

    and dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2] / [denominator]^2.
    The inverse solves the quadratic a xi^2 + b xi + c = 0 with the numerically stable root
    xi = 2c / (-b - sqrt(b^2 - 4ac)).

    Shapes: x (*shape) inside [knots_x[0], knots_x[-1]]; knots_x, knots_y, derivatives
    (*shape, K + 1); returns y, log|dy/dx| (or x, log|dx/dy| if ``inverse``) of shape (*shape).

    Reference: Durkan et al. Neural spline flows. NeurIPS 2019, eqs. (4)-(8) and appendix A;
    Gregory & Delbourgo, Piecewise rational quadratic interpolation to monotonic data, 1982.
    """
    knots_in = knots_y if inverse else knots_x
    k = (x.unsqueeze(-1) >= knots_in[..., 1:-1]).sum(-1)
    x_k, y_k = _gather(knots_x, k), _gather(knots_y, k)
    w_k, h_k = _gather(knots_x, k + 1) - x_k, _gather(knots_y, k + 1) - y_k
    d_0, d_1 = _gather(derivatives, k), _gather(derivatives, k + 1)
    s = h_k / w_k
    if inverse:
        dy = x - y_k
        a = h_k * (s - d_0) + dy * (d_1 + d_0 - 2 * s)
        b = h_k * d_0 - dy * (d_1 + d_0 - 2 * s)
        c = -s * dy
        disc = (b.square() - 4 * a * c).clamp(min=0)
        xi = (2 * c / (-b - torch.sqrt(disc))).clamp(0, 1)
    else:
        xi = ((x - x_k) / w_k).clamp(0, 1)
    xi1 = xi * (1 - xi)
    denominator = s + (d_1 + d_0 - 2 * s) * xi1
    log_dydx = 2 * torch.log(s) + torch.log(d_1 * xi.square() + 2 * s * xi1 + d_0 * (1 - xi).square()) \
        - 2 * torch.log(denominator)
    if inverse:
        return x_k + xi * w_k, -log_dydx
    return y_k + h_k * (s * xi.square() + d_0 * xi1) / denominator, log_dydx


class RQSpline(ElementwiseMap):
    r"""Monotonic rational-quadratic spline on [-bound, bound] with identity tails.

    The parameters per feature are K unnormalised bin widths, K bin heights and K - 1 interior
    knot derivatives: widths and heights go through a softmax with a minimum size, derivatives
    through d = min_derivative + softplus(raw + c) with c chosen so that raw = 0 gives d = 1;
    the two end derivatives are 1 so that the spline meets its identity tails smoothly. All-zero
    parameters give the identity.

    Shapes: z, x (*shape); h (*shape, 3 bins - 1).

    Reference: Durkan et al. Neural spline flows. NeurIPS 2019, section 3.1.

    Args:
        bins: number of bins K.
        bound: the spline acts on [-bound, bound]; outside it is the identity.
        min_width, min_height, min_derivative: floors that keep bins and slopes non-degenerate.

    Raises:
        ValueError: if the floors leave no room for the bins.
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_width: float = 1e-3,
                 min_height: float = 1e-3, min_derivative: float = 1e-3):
        if bins < 1 or min_width * bins >= 1 or min_height * bins >= 1 or not 0 < min_derivative < 1:
            raise ValueError("RQSpline: need bins >= 1, min_width * bins < 1, min_height * bins < 1, 0 < min_derivative < 1")
        self.bins, self.bound = bins, bound
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self.params = 3 * bins - 1

    def _spline(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.bins
        knots_x = _knots(h[..., :k], self.bound, self.min_width)
        knots_y = _knots(h[..., k : 2 * k], self.bound, self.min_height)
        offset = math.log(math.expm1(1 - self.min_derivative))
        inner = self.min_derivative + F.softplus(h[..., 2 * k :] + offset)
        derivatives = F.pad(inner, (1, 1), value=1.0)
        return knots_x, knots_y, derivatives

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._spline(h)
        return with_identity_tails(z, self.bound, lambda u: rational_quadratic_spline(u, *knots))

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._spline(h)
        return with_identity_tails(x, self.bound, lambda u: rational_quadratic_spline(u, *knots, inverse=True))
