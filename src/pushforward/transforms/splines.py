r"""Monotonic splines as element-wise maps, with identity tails outside [-bound, bound].

The peer libraries' most reported bug is a spline that returns NaN or inf at or beyond its
tail bound. Here every spline goes through :func:`with_identity_tails`, which evaluates the
spline only on inputs inside the bound (others are replaced by 0 before any arithmetic, so
neither the values nor the gradients of the unused branch can be NaN) and the identity outside,
and the knots are pinned so that the first and last equal -bound and +bound exactly. Maps whose
image of [-bound, bound] is not [-bound, bound] (the polynomials of :mod:`.polynomials`) use
:func:`with_linear_tails` instead, on the same principle.

The spline types share the machinery below: knots from unnormalised bin sizes (:func:`_knots`),
the bin search (:func:`_bin`), knot derivatives (:func:`_derivatives`) and the numerical inverse
(:func:`~pushforward.transforms.elementwise.numerical_inverse`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .elementwise import ElementwiseMap, numerical_inverse

__all__ = [
    "with_identity_tails", "with_linear_tails", "rational_quadratic_spline", "RQSpline", "PiecewiseLinear",
    "PiecewiseQuadratic", "CubicSpline", "cubic_spline", "LinearRationalSpline", "linear_rational_spline",
]


def with_identity_tails(
    x: Tensor, bound: float, spline: Callable[[Tensor], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    r"""Apply ``spline`` on [-bound, bound] and the identity (log-derivative 0) outside.

    ``spline(x_inside)`` receives ``x`` with the entries outside the bound replaced by 0 and
    returns (y, log|dy/dx|) of the shape of ``x``.

    Shapes: x (*shape); returns y, ladj (*shape).
    """
    inside = (x >= -bound) & (x <= bound)
    y, ladj = spline(torch.where(inside, x, 0.0))
    return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)


def with_linear_tails(
    u: Tensor, bound: float, inside: Callable[[Tensor], tuple[Tensor, Tensor]],
    lower: tuple[Tensor, Tensor], upper: tuple[Tensor, Tensor], inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""A map f on [-bound, bound] continued by straight lines of its end values and slopes.

    Forward: x = f(z) on [-bound, bound], x = f(±bound) + f'(±bound) (z ∓ bound) beyond it, so
    that value and slope are continuous. Inverse (``inverse=True``, ``inside`` then being
    f^{-1}): z = f^{-1}(x) on [f(-bound), f(bound)], z = ±bound + (x - f(±bound)) / f'(±bound)
    beyond it. As in :func:`with_identity_tails`, ``inside`` only sees the inputs inside (the
    others are replaced by the lower end), so its unused branch cannot make NaN.

    Shapes: u (*shape); ``inside`` maps (*shape) to (out, log-derivative) of shape (*shape);
    lower, upper: (f, log f') at -bound and +bound, each broadcastable to (*shape); returns out,
    ladj (*shape).
    """
    (x_lower, log_lower), (x_upper, log_upper) = lower, upper
    above = u > (x_upper if inverse else bound)
    below = u < (x_lower if inverse else -bound)
    keep = ~(above | below)
    out, ladj = inside(torch.where(keep, u, x_lower if inverse else -bound))
    end_z = torch.where(above, u.new_tensor(bound), u.new_tensor(-bound))
    end_x, log_slope = torch.where(above, x_upper, x_lower), torch.where(above, log_upper, log_lower)
    if inverse:
        tail, tail_ladj = end_z + (u - end_x) * torch.exp(-log_slope), -log_slope
    else:
        tail, tail_ladj = end_x + (u - end_z) * torch.exp(log_slope), log_slope
    return torch.where(keep, out, tail), torch.where(keep, ladj, tail_ladj)


def _softmax(raw: Tensor) -> Tensor:
    """Softmax over the last dimension, written out: on the CPU it is several times faster than
    ``torch.softmax`` for the few bins of a spline (which vectorises along that dimension)."""
    e = torch.exp(raw - raw.detach().amax(-1, keepdim=True))
    return e * e.sum(-1, keepdim=True).reciprocal()


def _sizes(raw: Tensor, minimum: float) -> Tensor:
    """Bin sizes (*, K) from unnormalised ones: a softmax with a floor, summing to 1."""
    return minimum + (1 - minimum * raw.shape[-1]) * _softmax(raw)


@functools.lru_cache(maxsize=32)
def _knot_offsets(bins: int, bound: float, minimum: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The knots (K + 1,) of K bins of the floor size ``minimum`` on [-bound, bound], the last one
    +bound: -bound + 2 bound minimum j for j < K (in double, then rounded once)."""
    j = torch.arange(bins + 1, dtype=torch.float64, device=device)
    return torch.where(j < bins, -bound + 2 * bound * minimum * j, bound).to(dtype)


def _cumulative_knots(sizes: Tensor, bound: float, minimum: float = 0.0) -> Tensor:
    """Knot positions (*, K + 1) of the bins of sizes minimum + (1 - minimum K) sizes_i on
    [-bound, bound], from sizes (*, K) that sum to 1; the first is -bound and the last +bound
    exactly (the last size enters only through the sum).

    A cumulative sum along the last dimension, within each row. A product with one fixed
    (K, K + 1) matrix costs about the same, but on the CPU it rounds one row differently from
    many (matrix-vector against matrix-matrix kernels): the knots of one set of parameters
    then moved by an ulp between calls, which a steep bin magnifies by its derivative.
    """
    offsets = _knot_offsets(sizes.shape[-1], bound, minimum, sizes.dtype, sizes.device)
    below = F.pad(torch.cumsum(sizes[..., :-1], -1), (1, 1))  # sum_{i<j} size_i, 0 at both ends
    return torch.add(offsets, below, alpha=2 * bound * (1 - minimum * sizes.shape[-1]))


def _knots(raw: Tensor, bound: float, minimum: float) -> Tensor:
    """Knot positions (*, K + 1) from unnormalised bin sizes (*, K): bins of the sizes
    :func:`_sizes` gives (a softmax with a floor ``minimum``); the first knot is -bound and the
    last +bound exactly."""
    return _cumulative_knots(_softmax(raw), bound, minimum)


def _unit(t: Tensor) -> Tensor:
    """``t`` clamped to [0, 1], keeping the gradient of ``t``: a bin coordinate that rounding put
    just past a knot keeps its derivative (a plain clamp would give zero there)."""
    return t - (t - t.clamp(0, 1)).detach()


def _gather(t: Tensor, k: Tensor) -> Tensor:
    return torch.gather(t, -1, k.unsqueeze(-1)).squeeze(-1)


def _bin(u: Tensor, knots_x: Tensor, knots_y: Tensor, inverse: bool = False):
    """The bin k of u among the x-knots (y-knots if ``inverse``), its left knot and its size.

    Returns (k, x_k, w_k, y_k, h_k), each of the shape of u.
    """
    knots_in = knots_y if inverse else knots_x
    k = (u.unsqueeze(-1) >= knots_in[..., 1:-1]).sum(-1)
    x_k, y_k = _gather(knots_x, k), _gather(knots_y, k)
    return k, x_k, _gather(knots_x, k + 1) - x_k, y_k, _gather(knots_y, k + 1) - y_k


def _derivatives(raw: Tensor, minimum: float) -> Tensor:
    """Knot derivatives (*, K + 1) from K - 1 unnormalised interior ones (*, K - 1).

    d = minimum + softplus(raw + c), c such that raw = 0 gives d = 1; the end derivatives are 1,
    so that the spline meets identity tails with a continuous slope.
    """
    offset = math.log(math.expm1(1 - minimum))
    return F.pad(minimum + F.softplus(raw + offset), (1, 1), value=1.0)


def rational_quadratic_spline(
    x: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Monotonic rational-quadratic spline through the given knots, or its inverse.

    In bin k, with xi = (x - x_k) / w_k, s_k = h_k / w_k and knot derivatives d_k, d_{k+1}:

        y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]

    and dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2] / [denominator]^2.
    The inverse solves the quadratic a xi^2 + b xi + c = 0 with the root formula that avoids
    cancellation: xi = 2c / (-b - sqrt(b^2 - 4ac)) for b >= 0, (-b + sqrt(b^2 - 4ac)) / 2a else.

    Shapes: x (*shape) inside [knots_x[0], knots_x[-1]]; knots_x, knots_y, derivatives
    (*shape, K + 1); returns y, log|dy/dx| (or x, log|dx/dy| if ``inverse``) of shape (*shape).

    Reference: Durkan et al. Neural spline flows. NeurIPS 2019, eqs. (4)-(8) and appendix A;
    Gregory & Delbourgo, Piecewise rational quadratic interpolation to monotonic data, 1982.
    """
    k, x_k, w_k, y_k, h_k = _bin(x, knots_x, knots_y, inverse)
    d_0, d_1 = _gather(derivatives, k), _gather(derivatives, k + 1)
    s = h_k / w_k
    if inverse:
        # The quadratic divided by (d_0 + d_1) against overflow, with b written without the
        # cancellation of h d_0 - dy d_0, and the root formula chosen by the sign of b.
        dy, rest = x - y_k, (y_k + h_k) - x
        scale = d_0 + d_1
        b = (d_0 * rest - dy * (d_1 - 2 * s)) / scale
        a = h_k * s / scale - b
        c = -s * dy / scale
        # rounding can make b^2 - 4ac zero or negative at a double root (the end of a bin whose
        # derivative sits at the floor): there sqrt's gradient would be inf and the chain's NaN
        root = torch.sqrt((b.square() - 4 * a * c).clamp(min=torch.finfo(x.dtype).tiny))
        positive = b >= 0
        xi = torch.where(positive, 2 * c, root - b) / torch.where(positive, -b - root, 2 * a)
        xi = _unit(xi)
    else:
        xi = _unit((x - x_k) / w_k)
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
        widths, heights, derivatives = h.split((self.bins, self.bins, self.bins - 1), -1)
        return (_knots(widths, self.bound, self.min_width), _knots(heights, self.bound, self.min_height),
                _derivatives(derivatives, self.min_derivative))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._spline(h)
        return with_identity_tails(z, self.bound, lambda u: rational_quadratic_spline(u, *knots))

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._spline(h)
        return with_identity_tails(x, self.bound, lambda u: rational_quadratic_spline(u, *knots, inverse=True))


class PiecewiseLinear(ElementwiseMap):
    r"""Monotonic piecewise-linear spline on [-bound, bound] with identity tails.

    K bins of equal width w = 2 bound / K; the heights h_k come from K unnormalised ones by a
    softmax with a floor. In bin k, with xi = (z - x_k) / w: x = y_k + h_k xi and
    ladj = log(h_k / w) (a piecewise-constant density, the paper's "piecewise-linear coupling",
    its [0, 1] mapped onto [-bound, bound]). All-zero parameters give the identity. The slope
    jumps at the knots and at the bound; the map itself is continuous.

    Shapes: z, x (*shape); h (*shape, bins).

    Reference: Müller, McWilliams, Rousselle, Gross & Novák. Neural importance sampling.
    ACM Transactions on Graphics 2019, section 3.2 (piecewise-linear coupling transform).
    arXiv:1808.03856.

    Args:
        bins: number of bins K.
        bound: the spline acts on [-bound, bound]; outside it is the identity.
        min_height: floor of the normalised bin heights.

    Raises:
        ValueError: if the floor leaves no room for the bins.
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_height: float = 1e-3):
        if bins < 1 or not 0 <= min_height * bins < 1:
            raise ValueError("PiecewiseLinear: need bins >= 1 and 0 <= min_height * bins < 1")
        self.bins, self.bound, self.min_height = bins, bound, min_height
        self.params = bins

    def _spline(self, h: Tensor) -> tuple[Tensor, Tensor]:
        knots_x = _cumulative_knots(torch.full_like(h, 1 / self.bins), self.bound)
        return knots_x, _knots(h, self.bound, self.min_height)

    def _map(self, u: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        def spline(r: Tensor) -> tuple[Tensor, Tensor]:
            _, x_k, w_k, y_k, h_k = _bin(r, *knots, inverse)
            log_slope = torch.log(h_k) - torch.log(w_k)
            if inverse:
                return x_k + _unit((r - y_k) / h_k) * w_k, -log_slope
            return y_k + _unit((r - x_k) / w_k) * h_k, log_slope

        knots = self._spline(h)
        return with_identity_tails(u, self.bound, spline)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(z, h, inverse=False)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(x, h, inverse=True)


class PiecewiseQuadratic(ElementwiseMap):
    r"""Monotonic piecewise-quadratic spline on [-bound, bound] with identity tails.

    The derivative (the density of the paper's [0, 1] warp) is piecewise linear through K + 1
    vertex values v_k > 0 at knots with widths w_k (softmax with a floor): v = m + (1 - m) e^V / A
    with A the area under the unnormalised e^V, so that the map sends [-bound, bound] onto
    itself. In bin k, with alpha = (z - x_k) / w_k and the bin height h_k = w_k (v_k + v_{k+1}) / 2:

        x = y_k + h_k alpha (2 v_k + (v_{k+1} - v_k) alpha) / (v_k + v_{k+1}),
        dx/dz = (h_k / w_k) 2 (v_k + (v_{k+1} - v_k) alpha) / (v_k + v_{k+1}).

    The inverse takes the cancellation-free root
    alpha = t (v_k + v_{k+1}) / (v_k + sqrt((1 - t) v_k^2 + t v_{k+1}^2)), t = (x - y_k) / h_k.
    All-zero parameters give the identity. The slope is continuous inside; at the bound it jumps
    from v_0 (v_K) to the tails' 1.

    Shapes: z, x (*shape); h (*shape, 2 bins + 1): K unnormalised widths, K + 1 vertex values V.

    Reference: Müller, McWilliams, Rousselle, Gross & Novák. Neural importance sampling.
    ACM Transactions on Graphics 2019, section 3.3 (piecewise-quadratic coupling transform).
    arXiv:1808.03856.

    Args:
        bins: number of bins K.
        bound: the spline acts on [-bound, bound]; outside it is the identity.
        min_width: floor of the normalised bin widths.
        min_derivative: floor m of the vertex values (the slope), in (0, 1).

    Raises:
        ValueError: if the floors leave no room for the bins.
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_width: float = 1e-3, min_derivative: float = 1e-3):
        if bins < 1 or not 0 <= min_width * bins < 1 or not 0 < min_derivative < 1:
            raise ValueError("PiecewiseQuadratic: need bins >= 1, min_width * bins < 1, 0 < min_derivative < 1")
        self.bins, self.bound, self.min_width, self.min_derivative = bins, bound, min_width, min_derivative
        self.params = 2 * bins + 1

    def _spline(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        widths, raw = _sizes(h[..., : self.bins], self.min_width), h[..., self.bins :]
        # shifting V by a constant leaves v unchanged and keeps exp from overflowing
        v = torch.exp(raw - raw.detach().amax(-1, keepdim=True))
        area = ((v[..., :-1] + v[..., 1:]) / 2 * widths).sum(-1, keepdim=True)
        v = self.min_derivative + (1 - self.min_derivative) * v / area
        areas = (v[..., :-1] + v[..., 1:]) / 2 * widths
        return _cumulative_knots(widths, self.bound), _cumulative_knots(areas, self.bound), v

    def _map(self, u: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        def spline(r: Tensor) -> tuple[Tensor, Tensor]:
            k, x_k, w_k, y_k, h_k = _bin(r, knots_x, knots_y, inverse)
            v_0, v_1 = _gather(vertices, k), _gather(vertices, k + 1)
            if inverse:
                t = _unit((r - y_k) / h_k)
                alpha = _unit(t * (v_0 + v_1) / (v_0 + torch.sqrt((1 - t) * v_0.square() + t * v_1.square())))
            else:
                alpha = _unit((r - x_k) / w_k)
            log_slope = torch.log(h_k / w_k) + torch.log(2 * (v_0 + (v_1 - v_0) * alpha) / (v_0 + v_1))
            if inverse:
                return x_k + alpha * w_k, -log_slope
            return y_k + h_k * alpha * (2 * v_0 + (v_1 - v_0) * alpha) / (v_0 + v_1), log_slope

        knots_x, knots_y, vertices = self._spline(h)
        return with_identity_tails(u, self.bound, spline)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(z, h, inverse=False)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(x, h, inverse=True)


def cubic_spline(z: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor) -> tuple[Tensor, Tensor]:
    r"""Monotonic cubic Hermite spline through the given knots with the given knot derivatives.

    In bin k, with xi = (z - x_k) / w_k, s_k = h_k / w_k and d_0 = d_k / s_k, d_1 = d_{k+1} / s_k,
    written in the Bernstein basis so that every term is non-negative for d_0, d_1 <= 3:

        x = y_k + h_k [d_0 xi (1 - xi)^2 + (3 - d_1) xi^2 (1 - xi) + xi^3],
        dx/dz = s_k [d_0 (1 - xi)^2 + 2 (3 - d_0 - d_1) xi (1 - xi) + d_1 xi^2].

    It is increasing when 0 < d_0, d_1 <= 2 (Fritsch & Carlson's region contains that square,
    and the derivative is linear in (d_0, d_1), positive at its corners).

    Shapes: z (*shape) inside [knots_x[0], knots_x[-1]]; knots_x, knots_y, derivatives
    (*shape, K + 1); returns x, log|dx/dz| (*shape).

    Reference: Fritsch & Carlson. Monotone piecewise cubic interpolation. SIAM J. Numer. Anal.
    1980; Durkan, Bekasov, Murray & Papamakarios. Cubic-spline flows. ICML 2019 workshop on
    invertible neural networks and normalizing flows, section 3. arXiv:1906.02145.
    """
    k, x_k, w_k, y_k, h_k = _bin(z, knots_x, knots_y)
    s = h_k / w_k
    d_0, d_1 = _gather(derivatives, k) / s, _gather(derivatives, k + 1) / s
    xi = _unit((z - x_k) / w_k)
    xi1 = 1 - xi
    x = y_k + h_k * (d_0 * xi * xi1.square() + (3 - d_1) * xi.square() * xi1 + xi.pow(3))
    slope = d_0 * xi1.square() + 2 * (3 - d_0 - d_1) * xi * xi1 + d_1 * xi.square()
    return x, torch.log(s) + torch.log(slope)


class CubicSpline(ElementwiseMap):
    r"""Monotonic cubic spline on [-bound, bound] with identity tails.

    K bin widths and heights (softmax with a floor); the interior knot derivatives follow
    Steffen's rule d_k = min(2 s_{k-1}, 2 s_k, p_k), p_k = (s_{k-1} w_k + s_k w_{k-1}) /
    (w_{k-1} + w_k) (s the bin slopes), which keeps each d_k / s within (0, 2] of both
    neighbouring bins; the two end derivatives are learned as d = 2 s sigmoid(raw) (raw = 0
    gives s). Evaluated by :func:`cubic_spline`; all-zero parameters give the identity.
    The slope jumps at the bound unless the end derivatives reach 1.

    Inverse: numerical, by :func:`~pushforward.transforms.elementwise.numerical_inverse`
    (bisection to ``tol`` on z, default 1e-10 in float64 and 1e-5 in float32, relative above 1,
    then one Newton step). The paper solves the cubic in closed form; that formula divides by
    the cubic coefficient, which vanishes at the identity and near it.

    Shapes: z, x (*shape); h (*shape, 2 bins + 2): K widths, K heights, 2 end derivatives.

    Reference: Durkan, Bekasov, Murray & Papamakarios. Cubic-spline flows. ICML 2019 workshop
    on invertible neural networks and normalizing flows, section 3. arXiv:1906.02145; Steffen.
    A simple method for monotonic interpolation in one dimension. Astron. Astrophys. 1990, eq. (11).

    Args:
        bins: number of bins K.
        bound: the spline acts on [-bound, bound]; outside it is the identity.
        min_width, min_height: floors of the normalised bin widths and heights.
        tol: tolerance of the inverse on z (None: 1e-10 in float64, 1e-5 in float32).
        max_iter: the largest number of bisection halvings of the inverse.

    Raises:
        ValueError: if the floors leave no room for the bins.
        ConvergenceError: in ``inverse``, if the bisection does not reach ``tol``.
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_width: float = 1e-3, min_height: float = 1e-3,
                 tol: float | None = None, max_iter: int = 200):
        if bins < 1 or not 0 <= min_width * bins < 1 or not 0 <= min_height * bins < 1:
            raise ValueError("CubicSpline: need bins >= 1, min_width * bins < 1, min_height * bins < 1")
        self.bins, self.bound, self.min_width, self.min_height = bins, bound, min_width, min_height
        self.tol, self.max_iter = tol, max_iter
        self.params = 2 * bins + 2

    def _spline(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.bins
        knots_x = _knots(h[..., :k], self.bound, self.min_width)
        knots_y = _knots(h[..., k : 2 * k], self.bound, self.min_height)
        w, s = knots_x.diff(), knots_y.diff() / knots_x.diff()
        p = (s[..., :-1] * w[..., 1:] + s[..., 1:] * w[..., :-1]) / (w[..., :-1] + w[..., 1:])
        inner = torch.minimum(2 * torch.minimum(s[..., :-1], s[..., 1:]), p)
        ends = 2 * s[..., [0, -1]] * torch.sigmoid(h[..., 2 * k :])
        return knots_x, knots_y, torch.cat([ends[..., :1], inner, ends[..., 1:]], dim=-1)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._spline(h)
        return with_identity_tails(z, self.bound, lambda u: cubic_spline(u, *knots))

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._spline(h)

        def forward(z: Tensor) -> tuple[Tensor, Tensor]:
            return with_identity_tails(z, self.bound, lambda u: cubic_spline(u, *knots))

        return with_identity_tails(x, self.bound, lambda u: numerical_inverse(
            forward, u, self.tol, self.max_iter, -self.bound, self.bound))


def linear_rational_spline(x: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor, lambdas: Tensor,
                           inverse: bool = False) -> tuple[Tensor, Tensor]:
    r"""Monotonic linear-rational spline through the given knots, or its inverse.

    Bin k is split at xi = lambda_k (xi = (x - x_k) / w_k) into two linear-rational pieces
    that meet at an intermediate point (lambda, Y_c) with a continuous slope. With the
    normalised knot derivatives d_0 = d_k / s_k, d_1 = d_{k+1} / s_k (s_k = h_k / w_k) and the
    weights w_a = 1, w_b = sqrt(d_0 / d_1), w_c = lambda d_0 + (1 - lambda) sqrt(d_0 d_1),
    Y_c = lambda w_b / ((1 - lambda) + lambda w_b), the normalised output Y = (y - y_k) / h_k is

        Y = w_c Y_c xi / ((lambda - xi) + w_c xi)                                   xi <= lambda,
        Y = (w_c Y_c (1 - xi) + w_b (xi - lambda)) / (w_c (1 - xi) + w_b (xi - lambda))  xi > lambda,

    with dY/dxi = w_c lambda Y_c / D^2 and w_c w_b (1 - lambda)(1 - Y_c) / D^2 (D the
    denominators). Each piece is inverted in closed form. Each branch is evaluated on inputs
    clamped to its own piece, so the unused one cannot divide by zero.

    Shapes: x (*shape) inside [knots_x[0], knots_x[-1]] ([knots_y[0], knots_y[-1]] if
    ``inverse``); knots_x, knots_y, derivatives (*shape, K + 1); lambdas (*shape, K) in (0, 1);
    returns y, log|dy/dx| (or x, log|dx/dy| if ``inverse``) of shape (*shape).

    Reference: Dolatabadi, Erfani & Leckie. Invertible generative modeling using linear
    rational splines. AISTATS 2020, section 3 and algorithm 1. arXiv:2001.05168.
    """
    k, x_k, w_k, y_k, h_k = _bin(x, knots_x, knots_y, inverse)
    s, lam = h_k / w_k, _gather(lambdas, k)
    d_0, d_1 = _gather(derivatives, k) / s, _gather(derivatives, k + 1) / s
    w_b, w_c = torch.sqrt(d_0 / d_1), lam * d_0 + (1 - lam) * torch.sqrt(d_0 * d_1)
    y_c = lam * w_b / ((1 - lam) + lam * w_b)
    if inverse:
        t = _unit((x - y_k) / h_k)
        t_left, t_right = torch.minimum(t, y_c), torch.maximum(t, y_c)
        xi_left = lam * t_left / (w_c * (y_c - t_left) + t_left)
        xi_right = (w_c * (t_right - y_c) + w_b * lam * (1 - t_right)) / (w_c * (t_right - y_c) + w_b * (1 - t_right))
        xi = _unit(torch.where(t <= y_c, xi_left, xi_right))
    else:
        xi = _unit((x - x_k) / w_k)
    left = xi <= lam
    xi_left, xi_right = torch.minimum(xi, lam), torch.maximum(xi, lam)
    d_left = (lam - xi_left) + w_c * xi_left
    d_right = w_c * (1 - xi_right) + w_b * (xi_right - lam)
    log_slope = torch.log(s) + torch.where(
        left, torch.log(w_c * lam * y_c) - 2 * torch.log(d_left),
        torch.log(w_c * w_b * (1 - lam) * (1 - y_c)) - 2 * torch.log(d_right))
    if inverse:
        return x_k + xi * w_k, -log_slope
    y = torch.where(left, w_c * y_c * xi_left / d_left, (w_c * y_c * (1 - xi_right) + w_b * (xi_right - lam)) / d_right)
    return y_k + h_k * y, log_slope


class LinearRationalSpline(ElementwiseMap):
    r"""Monotonic linear-rational spline on [-bound, bound] with identity tails.

    Per feature: K bin widths and K heights (softmax with a floor), K - 1 interior knot
    derivatives (as :class:`RQSpline`; the end ones are 1, so the slope is continuous at the
    bound) and K split points lambda_k = m + (1 - 2 m) sigmoid(raw) (raw = 0 gives 1/2).
    Evaluated, and inverted in closed form, by :func:`linear_rational_spline`. All-zero
    parameters give the identity.

    Shapes: z, x (*shape); h (*shape, 4 bins - 1).

    Reference: Dolatabadi, Erfani & Leckie. Invertible generative modeling using linear
    rational splines. AISTATS 2020. arXiv:2001.05168.

    Args:
        bins: number of bins K.
        bound: the spline acts on [-bound, bound]; outside it is the identity.
        min_width, min_height, min_derivative: floors that keep bins and slopes non-degenerate.
        min_lambda: floor m of the split points, which stay in [m, 1 - m].

    Raises:
        ValueError: if the floors leave no room for the bins.
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, min_width: float = 1e-3, min_height: float = 1e-3,
                 min_derivative: float = 1e-3, min_lambda: float = 0.025):
        if (bins < 1 or not 0 <= min_width * bins < 1 or not 0 <= min_height * bins < 1
                or not 0 < min_derivative < 1 or not 0 <= min_lambda < 0.5):
            raise ValueError("LinearRationalSpline: need bins >= 1, min_width * bins < 1, min_height * bins < 1, "
                             "0 < min_derivative < 1, 0 <= min_lambda < 1/2")
        self.bins, self.bound, self.min_width, self.min_height = bins, bound, min_width, min_height
        self.min_derivative, self.min_lambda = min_derivative, min_lambda
        self.params = 4 * bins - 1

    def _spline(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        k = self.bins
        knots_x = _knots(h[..., :k], self.bound, self.min_width)
        knots_y = _knots(h[..., k : 2 * k], self.bound, self.min_height)
        derivatives = _derivatives(h[..., 2 * k : 3 * k - 1], self.min_derivative)
        lambdas = self.min_lambda + (1 - 2 * self.min_lambda) * torch.sigmoid(h[..., 3 * k - 1 :])
        return knots_x, knots_y, derivatives, lambdas

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._spline(h)
        return with_identity_tails(z, self.bound, lambda u: linear_rational_spline(u, *knots))

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        knots = self._spline(h)
        return with_identity_tails(x, self.bound, lambda u: linear_rational_spline(u, *knots, inverse=True))
