"""Element-wise transforms and monotonic element-wise maps: what the registry contracts cannot see.

tests/test_transforms.py checks round trips, ladj against autograd, shapes and gradients at
random points for every registered transform, and tests/test_elementwise_maps.py the map
contract of every element-wise map (finite at and beyond the bound, tails, continuity there,
monotonicity, identity at zero parameters). Here: domain errors; closed-form properties (exact
integration, smoothness at knots, Steffen's slopes); and for the numerical inverses their
tolerance, their implicit gradients and their ConvergenceError.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pushforward as pf
from pushforward import testing
from pushforward.testing import apply_map as apply
from pushforward.testing import edge_points, perturb
from pushforward.transforms import (
    BernsteinPolynomial,
    ConvergenceError,
    CubicSpline,
    DeepSigmoidMap,
    DomainError,
    LeakyReLU,
    LinearRationalSpline,
    MaskedAutoregressive,
    PiecewiseLinear,
    PiecewiseQuadratic,
    Sigmoid,
    Softplus,
    SOSPolynomial,
    Tanh,
    UMNNMap,
)

BOUND = testing.MAP_BOUND
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["float32", "float64"]
MAPS = testing.elementwise_map_examples()
# the maps of the registry whose inverse is solved by bisection, inside their bound
NUMERICAL = [name for name, e in MAPS.items() if e.numerical == "inverse" and e.bound is not None]


def raw_params(m, dtype, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(m.params, generator=g, dtype=torch.float64)).to(dtype)


def make(name: str):
    return MAPS[name].make(torch.float64)


def bounds(m, h: torch.Tensor, inverse: bool) -> torch.Tensor:
    return testing.map_ends(m, h, BOUND, inverse)


# --- element-wise transforms -----------------------------------------------------------------

@pytest.mark.parametrize("transform, bad, match", [
    (Softplus(), [1.0, 0.0], r"\(0, inf\)"),
    (Softplus(), [-2.0], r"\(0, inf\)"),
    (Softplus(), [math.inf], r"\(0, inf\)"),
    (Softplus(), [math.nan], r"\(0, inf\)"),
    (Tanh(), [0.5, 1.0], r"\(-1, 1\)"),
    (Tanh(), [-1.5], r"\(-1, 1\)"),
    (Sigmoid(), [0.0], r"\(0, 1\)"),
], ids=["softplus-zero", "softplus-negative", "softplus-inf", "softplus-nan", "tanh-one", "tanh-below",
        "sigmoid-zero"])
def test_inverse_outside_the_domain_raises_a_domain_error_that_names_it(transform, bad, match):
    x = torch.tensor([bad], dtype=torch.float64)
    with pytest.raises(DomainError, match=match) as info:
        transform.inverse(x)
    assert isinstance(info.value, ValueError)
    assert "1 value(s) outside" in str(info.value)


def test_leaky_relu_rejects_a_slope_that_is_not_positive():
    for slope in (0.0, -0.1, math.inf):
        with pytest.raises(ValueError, match="slope"):
            LeakyReLU(slope)


def test_leaky_relu_slope_is_a_parameter_only_when_learnable():
    assert [n for n, _ in LeakyReLU(0.1).named_parameters()] == []
    learnable = LeakyReLU(0.1, learnable=True).double()
    assert [n for n, _ in learnable.named_parameters()] == ["log_slope"]
    z = torch.tensor([[-2.0, 3.0]], dtype=torch.float64)
    x, ladj = learnable(z)
    torch.testing.assert_close(x, torch.tensor([[-0.2, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(ladj, torch.log(torch.tensor([0.1], dtype=torch.float64)))
    (-ladj.sum()).backward()
    torch.testing.assert_close(learnable.log_slope.grad, torch.tensor(-1.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("transform", [LeakyReLU(0.1), Softplus(), Tanh()], ids=["leaky-relu", "softplus", "tanh"])
def test_elementwise_transforms_are_finite_far_out(transform, dtype):
    z = torch.tensor([[-1e3, -30.0, 0.0, 30.0, 1e3]], dtype=dtype, requires_grad=True)
    x, ladj = transform.to(dtype)(z)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    (g,) = torch.autograd.grad(x.sum() + ladj.sum(), z)
    assert torch.isfinite(g).all()


def test_tanh_and_softplus_ladj_where_the_output_saturates():
    z = torch.tensor([[-1e3, 1e3]], dtype=torch.float64)
    # log(1 - tanh(z)^2) = 2 (log 2 - |z|) + O(exp(-2 |z|)) at each of the two entries
    torch.testing.assert_close(Tanh()(z)[1], torch.tensor([4 * (math.log(2) - 1e3)], dtype=torch.float64))
    # log sigmoid(-1e3) = -1e3 and log sigmoid(1e3) = 0
    torch.testing.assert_close(Softplus()(z)[1], torch.tensor([-1e3], dtype=torch.float64))


class ScaleMap(torch.nn.Module, pf.transforms.ElementwiseMap):
    """x = exp(s) z with a learned s: a map with a parameter of its own."""

    params = 0

    def __init__(self):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, z, h):
        return z * self.log_scale.exp(), self.log_scale.expand_as(z)

    def inverse(self, x, h):
        return x * (-self.log_scale).exp(), -self.log_scale.expand_as(x)


def test_inverse_map_swaps_the_directions_and_keeps_parameters_registered():
    layer = pf.transforms.Elementwise(pf.transforms.InverseMap(ScaleMap()), 3)
    assert "map.map.log_scale" in dict(layer.named_parameters())
    z = torch.randn(4, 3)
    x, ladj = layer(z)
    torch.testing.assert_close(x, z * math.exp(-0.5))
    torch.testing.assert_close(ladj, torch.full((4,), -1.5))
    assert "SOSPolynomial(degree=2" in repr(pf.transforms.InverseMap(SOSPolynomial(2, 2)))


# --- the monotonic maps (their shared contract: tests/test_elementwise_maps.py) ---------------

def test_rejects_impossible_floors():
    for build in (lambda: PiecewiseLinear(bins=0), lambda: PiecewiseLinear(10, min_height=0.1),
                  lambda: PiecewiseQuadratic(10, min_width=0.1), lambda: PiecewiseQuadratic(min_derivative=0.0),
                  lambda: CubicSpline(10, min_height=0.2), lambda: LinearRationalSpline(min_lambda=0.5),
                  lambda: LinearRationalSpline(min_derivative=1.0), lambda: SOSPolynomial(degree=-1),
                  lambda: SOSPolynomial(polynomials=0), lambda: BernsteinPolynomial(degree=0),
                  lambda: BernsteinPolynomial(min_derivative=1.0)):
        with pytest.raises(ValueError):
            build()


# --- the numerical inverses ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", NUMERICAL)
def test_numerical_inverse_meets_its_tolerance(name, dtype):
    m = make(name)
    h = raw_params(m, dtype, 1.5, seed=2)
    z = torch.cat([torch.linspace(-1.5 * BOUND, 1.5 * BOUND, 301, dtype=dtype), edge_points(bounds(m, h, False))])
    x, ladj = apply(m, z, h, inverse=False)
    z2, ladj2 = apply(m, x, h, inverse=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-10  # the stated defaults, relative above 1
    # in float32 the rounding of x itself moves the root by eps |x| / f'(z)
    conditioning = torch.finfo(dtype).eps * x.abs().clamp(min=1) * torch.exp(-ladj)
    assert ((z2 - z).abs() <= tol * z.abs().clamp(min=1) + 4 * conditioning).all(), (z2 - z).abs().max()
    torch.testing.assert_close(ladj2, -ladj, atol=100 * tol, rtol=0)
    # a looser tolerance is met too (the Newton step after the bisection only improves on it)
    m.tol = 1e-3
    assert ((apply(m, x, h, inverse=True)[0] - z).abs() <= 1e-3 * z.abs().clamp(min=1)).all()


@pytest.mark.parametrize("name", NUMERICAL)
def test_numerical_inverse_has_the_implicit_gradients(name):
    m = make(name)
    h = raw_params(m, torch.float64, 1.5, seed=3)
    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64) * bounds(m, h, True).abs().min()
    hh = h.expand(*x.shape, m.params).clone().requires_grad_()
    z, _ = m.inverse(x, hh)
    (dz_dh,) = torch.autograd.grad(z.sum(), hh)
    # dz/dh = -(df/dh) / f'(z) at the solution
    z0 = z.detach()
    hh2 = hh.detach().clone().requires_grad_()
    fx, ladj = m.forward(z0, hh2)
    (df_dh,) = torch.autograd.grad(fx.sum(), hh2)
    torch.testing.assert_close(dz_dh, -df_dh / ladj.exp().unsqueeze(-1), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name", NUMERICAL)
def test_numerical_inverse_raises_convergence_error(name):
    m = make(name)
    h = raw_params(m, torch.float64, 1.5)
    x = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    apply(m, x, h, inverse=True)
    m.max_iter = 3  # too few halvings for the default tolerance
    with pytest.raises(ConvergenceError, match="did not reach tolerance"):
        apply(m, x, h, inverse=True)


@pytest.mark.parametrize("make, direction", [
    (CubicSpline, "inverse"), (SOSPolynomial, "inverse"), (BernsteinPolynomial, "inverse"),
    (DeepSigmoidMap, "forward"), (UMNNMap, "forward"),
], ids=["cubic-spline", "sos", "bernstein", "naf-sampling", "umnn-sampling"])
def test_numerical_inverse_ladj_is_the_log_derivative_autograd_sees_in_float32(make, direction):
    """The gradient comes from the slope at the polished solution, where the ladj is evaluated:
    with the slope at the bisection's point they differed by up to 7e-3 in float32. (The second
    Newton step, for exact second derivatives, adds float32 rounding of about 1e-6.)"""
    torch.manual_seed(0)
    m = make()
    h = torch.randn(512, m.params) * 2
    x = (torch.randn(512) * 3).requires_grad_()
    y, ladj = getattr(m, direction)(x, h)
    (dy_dx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(ladj, dy_dx.log(), atol=2e-6, rtol=0)


# --- closed-form properties ------------------------------------------------------------------

def test_sos_polynomial_is_the_exact_integral_of_its_sum_of_squares():
    m = SOSPolynomial(degree=3, polynomials=2, bound=BOUND)
    h = raw_params(m, torch.float64, 0.7, seed=4)
    z = torch.linspace(-BOUND, BOUND, 21, dtype=torch.float64)
    x, _ = apply(m, z, h, inverse=False)
    x0, _ = apply(m, torch.zeros(1, dtype=torch.float64), h, inverse=False)
    torch.testing.assert_close(x0, h[:1])  # f(0) = c
    # Gauss-Legendre with 8 nodes is exact for the integrand of degree 2r = 6
    nodes, weights = (torch.tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(8))
    u = z.unsqueeze(-1) * (nodes + 1) / 2
    _, log_q = apply(m, u, h, inverse=False)
    integral = (weights * log_q.exp()).sum(-1) * z / 2
    torch.testing.assert_close(x - x0, integral, atol=1e-12, rtol=1e-12)


def test_sos_polynomial_has_degree_2r_plus_1():
    m = SOSPolynomial(degree=2, polynomials=3, bound=BOUND)
    h = raw_params(m, torch.float64, 1.0, seed=5)
    z = torch.linspace(-BOUND, BOUND, 9, dtype=torch.float64)
    x, _ = apply(m, z, h, inverse=False)
    fit = np.polynomial.polynomial.polyfit(z.numpy(), x.numpy(), 8)
    assert abs(fit[5]) > 1e-3 and np.abs(fit[6:]).max() < 1e-8, fit


def test_bernstein_polynomial_matches_its_formula():
    m = BernsteinPolynomial(degree=6, bound=BOUND, min_derivative=1e-3)
    h = raw_params(m, torch.float64, 1.0, seed=6)
    z = torch.linspace(-BOUND, BOUND, 11, dtype=torch.float64)
    x, ladj = apply(m, z, h, inverse=False)
    n = m.degree
    increments = (2 * BOUND / n) * (1e-3 + (1 - 1e-3) * F.softplus(h[1:] + math.log(math.e - 1)))
    theta = torch.cat([h[:1] - BOUND, h[:1] - BOUND + increments.cumsum(0)])
    u = (z + BOUND) / (2 * BOUND)
    expected = sum(theta[j] * math.comb(n, j) * u**j * (1 - u) ** (n - j) for j in range(n + 1))
    torch.testing.assert_close(x, expected, atol=1e-12, rtol=1e-12)
    assert (torch.diff(theta) > 0).all()
    derivative = sum(n * (theta[j + 1] - theta[j]) * math.comb(n - 1, j) * u**j * (1 - u) ** (n - 1 - j)
                     for j in range(n)) / (2 * BOUND)
    torch.testing.assert_close(ladj, derivative.log(), atol=1e-12, rtol=1e-12)


def knot_positions(name: str, m, h: torch.Tensor) -> torch.Tensor:
    """Interior knots of the spline (and for the linear-rational spline, its split points)."""
    knots = m._spline(h)
    inner = knots[0][1:-1]
    if name == "linear-rational-spline":
        x_k, w_k = knots[0][:-1], knots[0].diff()
        inner = torch.cat([inner, x_k + knots[3] * w_k])
    return inner


@pytest.mark.parametrize("name", ["piecewise-quadratic", "cubic-spline", "linear-rational-spline"])
def test_slope_is_continuous_at_the_knots(name):
    m = make(name)
    h = raw_params(m, torch.float64, 1.5, seed=7)
    knots = knot_positions(name, m, h)

    def jump(delta: float) -> torch.Tensor:
        return (apply(m, knots - delta, h, inverse=False)[1] - apply(m, knots + delta, h, inverse=False)[1]).abs()

    # the jump of the log-slope across a knot shrinks with the distance: no step
    assert (jump(1e-10) < 1e-4).all() and (jump(1e-10) <= jump(1e-8) / 50 + 1e-12).all()


def test_cubic_spline_knot_derivatives_follow_steffen():
    m = make("cubic-spline")
    h = raw_params(m, torch.float64, 1.5, seed=8)
    knots_x, knots_y, d = m._spline(h)
    z = knots_x.clone().requires_grad_()
    x, ladj = apply(m, z, h, inverse=False)
    torch.testing.assert_close(x, knots_y, atol=1e-12, rtol=0)  # the knots are interpolated
    torch.testing.assert_close(ladj[:-1].exp(), d[:-1], atol=1e-12, rtol=1e-12)
    s = knots_y.diff() / knots_x.diff()
    assert (d > 0).all() and (d[1:-1] <= 2 * torch.minimum(s[:-1], s[1:]) + 1e-15).all()
    assert (d[0] < 2 * s[0]) and (d[-1] < 2 * s[-1])


# --- presets ---------------------------------------------------------------------------------

POLYNOMIAL_PRESETS = {
    "sos": lambda c: pf.SOSFlow(2, c, transforms=2, hidden_features=(16,), degree=2, polynomials=2, bound=3.0),
    "bernstein": lambda c: pf.BernsteinFlow(2, c, transforms=2, hidden_features=(16,), degree=5, bound=3.0),
}


@pytest.mark.parametrize("context_features", [0, 2], ids=["unconditional", "context"])
@pytest.mark.parametrize("preset", list(POLYNOMIAL_PRESETS))
def test_preset_samples_carry_their_log_prob(preset, context_features):
    torch.manual_seed(0)
    flow = perturb(POLYNOMIAL_PRESETS[preset](context_features).double()).eval()
    c = torch.randn(4, context_features, dtype=torch.float64) if context_features else None
    x, log_prob = flow.sample_and_log_prob((50,), c)
    context = None if c is None else c.expand(50, 4, context_features)
    torch.testing.assert_close(flow.log_prob(x, context), log_prob, atol=1e-8, rtol=1e-8)
    assert pf.flows.PRESETS[preset] is type(flow)
    assert {"transforms", "hidden_features", "normalization"} <= pf.flows.preset_options(preset)


@pytest.mark.parametrize("preset", list(POLYNOMIAL_PRESETS))
def test_preset_sampling_raises_convergence_error(preset):
    flow = perturb(POLYNOMIAL_PRESETS[preset](0).double()).eval()
    for layer in flow.modules():
        if isinstance(layer, MaskedAutoregressive):
            layer.map.map.max_iter = 2
    with pytest.raises(ConvergenceError):
        flow.sample((10,))


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("h_shape", [(4, 3, 2), (3, 2)], ids=["full", "broadcast"])
def test_affine_map_gradients(inverse, h_shape):
    """AffineMap's hand-written backward against finite differences and its values against the
    formula, with and without gradients, for parameters of the input's shape and broadcast over
    its batch."""
    torch.manual_seed(0)
    u = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    h = (2 * torch.randn(h_shape, dtype=torch.float64)).requires_grad_()
    affine = pf.transforms.AffineMap(bound=2.0)
    direction = affine.inverse if inverse else affine.forward
    assert torch.autograd.gradcheck(lambda u, h: direction(u, h), (u, h))
    y, ladj = direction(u, h)
    shift, s = h[..., 0], 2.0 * torch.tanh(h[..., 1] / 2.0)
    expected = (u - shift) * torch.exp(-s) if inverse else u * torch.exp(s) + shift
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(ladj, (-s if inverse else s).expand(4, 3))
    with torch.no_grad():  # the same values without an autograd node
        y_plain, ladj_plain = direction(u, h)
    torch.testing.assert_close(y_plain, y)
    torch.testing.assert_close(ladj_plain, ladj)
