r"""Monotonic polynomials as element-wise maps: sum-of-squares and Bernstein polynomials.

Each acts on [-bound, bound] and continues outside by straight lines with the end values and
slopes (:func:`~pushforward.transforms.splines.with_linear_tails`), so the map is C^1, increasing
on all of R, and neither its values nor its gradients can overflow at or beyond the bound. The
polynomial is evaluated in closed form in ``forward``; ``inverse`` solves it by bisection
(:func:`~pushforward.transforms.elementwise.numerical_inverse`) to ``tol`` on z (default 1e-10
in float64, 1e-5 in float32, relative above 1) and raises
:class:`~pushforward.transforms.numerical.ConvergenceError` if it does not get there. The papers
apply their polynomial in the data -> base direction; wrap the map in
:class:`~pushforward.transforms.elementwise.InverseMap` for that (as the presets of
:mod:`pushforward.flows.polynomials` do), so that density evaluation is the closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .elementwise import ElementwiseMap, numerical_inverse
from .splines import with_linear_tails

__all__ = ["SOSPolynomial", "BernsteinPolynomial", "bernstein_basis"]

Inside = Callable[[Tensor], tuple[Tensor, Tensor]]
Polynomial = tuple[Inside, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


def _with_tails(u: Tensor, bound: float, polynomial: Polynomial, inverse: bool, tol: float | None,
                max_iter: int) -> tuple[Tensor, Tensor]:
    """The polynomial on [-bound, bound] with linear tails (forward), or its inverse by bisection.

    ``polynomial`` is (inside, (f, log f') at -bound, (f, log f') at +bound).
    """
    inside, lower, upper = polynomial

    def forward(z: Tensor) -> tuple[Tensor, Tensor]:
        return with_linear_tails(z, bound, inside, lower, upper)

    def solve(x: Tensor) -> tuple[Tensor, Tensor]:
        return numerical_inverse(forward, x, tol, max_iter, -bound, bound)

    return with_linear_tails(u, bound, solve, lower, upper, inverse=True) if inverse else forward(u)


def _horner(coefficients: Tensor, t: Tensor) -> Tensor:
    """sum_j c_j t^j for coefficients (*shape, n) in increasing degree and t (*shape)."""
    out = coefficients[..., -1]
    for j in range(coefficients.shape[-1] - 2, -1, -1):
        out = out * t + coefficients[..., j]
    return out


class SOSPolynomial(ElementwiseMap):
    r"""Sum-of-squares polynomial: an increasing polynomial of odd degree 2r + 1.

    With t = z / bound, inside [-bound, bound]:

        x = c + bound * integral_0^t q(s) ds,   q(s) = m + sum_{k=1}^{K} (sum_{l=0}^{r} a_{kl} s^l)^2,

    so dx/dz = q(z / bound) >= m > 0. The integral is exact: the coefficients of q are the
    self-convolutions of the a_k, integrated term by term and evaluated by Horner's rule; the
    log-derivative uses q as a sum of squares, which cannot round below m. The coefficients
    are a_{kl} = raw_{kl} + [l = 0] sqrt((1 - m) / K), so all-zero parameters give q = 1 and the
    identity. Outside the bound: linear tails with the end values and slopes (C^1). The
    scaling t = z / bound keeps the powers of z within [-1, 1].

    Inverse: bisection to ``tol`` on z (1e-10 in float64, 1e-5 in float32 by default, relative
    above 1), then one Newton step (see the module docstring).

    Shapes: z, x (*shape); h (*shape, 1 + K (r + 1)): the shift c, then a_{kl} with l fastest.

    Reference: Jaini, Selby & Yu. Sum-of-squares polynomial flow. ICML 2019, section 3
    (the SOS transformation as the integral of a sum of squares). arXiv:1905.02325.

    Args:
        degree: the degree r of each squared polynomial (the map has degree 2r + 1).
        polynomials: the number K of squares.
        bound: the polynomial acts on [-bound, bound]; linear beyond.
        min_derivative: the constant m added to the sum of squares, in [0, 1) (m = 0 is the
            paper's form, whose slope can vanish where all squares do).
        tol: tolerance of the inverse on z (None: by dtype, see above).
        max_iter: the largest number of bisection halvings of the inverse.

    Raises:
        ValueError: for a negative degree, no squares or m outside [0, 1).
        ConvergenceError: in ``inverse``, if the bisection does not reach ``tol``.
    """

    def __init__(self, degree: int = 4, polynomials: int = 5, bound: float = 5.0, min_derivative: float = 1e-3,
                 tol: float | None = None, max_iter: int = 200):
        if degree < 0 or polynomials < 1 or not 0 <= min_derivative < 1:
            raise ValueError("SOSPolynomial: need degree >= 0, polynomials >= 1 and 0 <= min_derivative < 1")
        self.degree, self.polynomials, self.bound, self.min_derivative = degree, polynomials, bound, min_derivative
        self.tol, self.max_iter = tol, max_iter
        self.params = 1 + polynomials * (degree + 1)

    def _polynomial(self, h: Tensor) -> Polynomial:
        r, m = self.degree, self.min_derivative
        a = h[..., 1:].unflatten(-1, (self.polynomials, r + 1))
        a = torch.cat([a[..., :1] + math.sqrt((1 - m) / self.polynomials), a[..., 1:]], dim=-1)
        # coefficients of q (degree 2r): sum over k of the anti-diagonals of a_k a_k^T, plus m
        outer = (a.unsqueeze(-1) * a.unsqueeze(-2)).sum(-3)
        square = sum(F.pad(outer[..., l, :], (l, r - l)) for l in range(r + 1))
        q = torch.cat([square[..., :1] + m, square[..., 1:]], dim=-1)
        powers = torch.arange(1, 2 * r + 2, dtype=h.dtype, device=h.device)
        integral = F.pad(q / powers, (1, 0))  # of int_0^t q(s) ds, degree 2r + 1

        def inside(z: Tensor) -> tuple[Tensor, Tensor]:
            t = z / self.bound
            q = m + _horner(a, t.unsqueeze(-1)).square().sum(-1)
            return h[..., 0] + self.bound * _horner(integral, t), torch.log(q)

        ends = h[..., 0].new_tensor(self.bound)
        return inside, inside(-ends.expand_as(h[..., 0])), inside(ends.expand_as(h[..., 0]))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return _with_tails(z, self.bound, self._polynomial(h), False, self.tol, self.max_iter)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return _with_tails(x, self.bound, self._polynomial(h), True, self.tol, self.max_iter)


def bernstein_basis(u: Tensor, degree: int) -> Tensor:
    r"""The Bernstein basis b_{j,n}(u) = C(n, j) u^j (1 - u)^{n - j}, j = 0..n, for u in [0, 1].

    Computed by the recurrence b_{j,n} = (1 - u) b_{j,n-1} + u b_{j-1,n-1} (no powers, so the
    gradients are finite at u = 0 and 1, and every term is non-negative).

    Shapes: u (*shape); returns (*shape, degree + 1).
    """
    basis = torch.ones_like(u).unsqueeze(-1)
    for _ in range(degree):
        basis = _elevate(basis, u)
    return basis


def _elevate(basis: Tensor, u: Tensor) -> Tensor:
    """The Bernstein basis of degree n + 1 at u from that of degree n, (*shape, n + 1)."""
    u = u.unsqueeze(-1)
    return F.pad(basis * (1 - u), (0, 1)) + F.pad(basis * u, (1, 0))


class BernsteinPolynomial(ElementwiseMap):
    r"""Increasing Bernstein polynomial of degree M on [-bound, bound], with linear tails.

    With u = (z + bound) / (2 bound) in [0, 1] and increasing coefficients
    theta_0 = raw_0 - bound, theta_j = theta_{j-1} + Delta_j,
    Delta_j = (2 bound / M) (m + (1 - m) softplus(raw_j + log(e - 1))) > 0:

        x = sum_{j=0}^{M} theta_j b_{j,M}(u),   dx/dz = (M / (2 bound)) sum_{j=0}^{M-1} Delta_{j+1} b_{j,M-1}(u),

    so dx/dz >= m. All-zero parameters give theta_j = -bound + 2 bound j / M, the identity.
    Outside the bound: linear tails with the end values theta_0, theta_M and the end slopes
    (C^1).

    Inverse: bisection to ``tol`` on z (1e-10 in float64, 1e-5 in float32 by default, relative
    above 1), then one Newton step (see the module docstring).

    Shapes: z, x (*shape); h (*shape, M + 1).

    Reference: Sick, Hothorn & Dürr. Deep transformation models: tackling complex regression
    problems with neural network based transformation models. ICPR 2020 (2021), section 2
    (increasing coefficients by cumulative softplus). arXiv:2004.00464; Ramasinghe, Fernando,
    Khan & Barnes. Robust normalizing flows using Bernstein-type polynomials. 2021.
    arXiv:2102.03509.

    Args:
        degree: the degree M >= 1.
        bound: the polynomial acts on [-bound, bound]; linear beyond.
        min_derivative: the floor m of the slope, in [0, 1).
        tol: tolerance of the inverse on z (None: by dtype, see above).
        max_iter: the largest number of bisection halvings of the inverse.

    Raises:
        ValueError: for a degree below 1 or m outside [0, 1).
        ConvergenceError: in ``inverse``, if the bisection does not reach ``tol``.
    """

    def __init__(self, degree: int = 10, bound: float = 5.0, min_derivative: float = 1e-3,
                 tol: float | None = None, max_iter: int = 200):
        if degree < 1 or not 0 <= min_derivative < 1:
            raise ValueError("BernsteinPolynomial: need degree >= 1 and 0 <= min_derivative < 1")
        self.degree, self.bound, self.min_derivative = degree, bound, min_derivative
        self.tol, self.max_iter = tol, max_iter
        self.params = degree + 1

    def _polynomial(self, h: Tensor) -> Polynomial:
        n, b, m = self.degree, self.bound, self.min_derivative
        increments = (2 * b / n) * (m + (1 - m) * F.softplus(h[..., 1:] + math.log(math.e - 1)))
        theta = F.pad(torch.cumsum(increments, dim=-1), (1, 0)) + (h[..., :1] - b)

        def inside(z: Tensor) -> tuple[Tensor, Tensor]:
            u = ((z + b) / (2 * b)).clamp(0, 1)
            basis = bernstein_basis(u, n - 1)
            slope = (n / (2 * b)) * (increments * basis).sum(-1)
            return (theta * _elevate(basis, u)).sum(-1), torch.log(slope)

        log_end_slopes = torch.log((n / (2 * b)) * increments[..., [0, -1]]).unbind(-1)
        return inside, (theta[..., 0], log_end_slopes[0]), (theta[..., -1], log_end_slopes[1])

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return _with_tails(z, self.bound, self._polynomial(h), False, self.tol, self.max_iter)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return _with_tails(x, self.bound, self._polynomial(h), True, self.tol, self.max_iter)
