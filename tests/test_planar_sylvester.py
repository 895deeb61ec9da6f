"""Family checks of planar, radial and Sylvester flows and their numerical inverses.

The shared contract (round trips, ladj, shapes, gradients) is in test_transforms.py; here the
invertibility constraints, the orthogonalisation, the stated tolerances of the numerical
inverses in float64 and float32, and their failure paths.
"""

import math

import pytest
import torch

import pushforward as pf
from pushforward.testing import perturb
from pushforward.transforms.numerical import ConvergenceError, default_tolerance, newton
from pushforward.transforms.planar_radial import Planar, Radial
from pushforward.transforms.sylvester import (
    HouseholderBasis, OrthogonalBasis, PermutationBasis, Sylvester, orthogonalize,
)

D = 4
DTYPES = [torch.float64, torch.float32]


def randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def set_params(t, **values):
    with torch.no_grad():
        for name, value in values.items():
            t.conditioner.free[name].copy_(value)
    return t


# --- invertibility constraints ---------------------------------------------------------------

def test_planar_u_hat_satisfies_the_constraint_for_any_raw_u_w():
    t = Planar(D, context_features=3).double()
    for seed, scale in enumerate([1e-3, 1.0, 30.0]):
        set_params(t, u=randn(D, seed=seed, scale=scale), w=randn(D, seed=seed + 10, scale=scale))
        set_params(t, u=-t.conditioner.free["w"] * 50)  # w^T u very negative
        u_hat, w, _ = t.parameters_hat(randn(7, 3, seed=seed))
        wu = (w * t.conditioner.free["u"]).sum(-1)
        assert torch.all(t._slope(u_hat, w) > -1)  # what ladj and the inverse use
        slope = (w * u_hat).sum(-1)  # the map's: exactly m(w^T u) but for rounding
        m = torch.nn.functional.softplus(wu).clamp(min=1e-16) - 1
        torch.testing.assert_close(slope, m, atol=1e-14 * (1 + float(wu.detach().abs().max())), rtol=0)


def test_planar_starts_at_the_identity():
    t = Planar(D, context_features=2).double()
    z = randn(5, D)
    x, ladj = t(z, randn(5, 2, seed=1))
    torch.testing.assert_close(x, z)
    torch.testing.assert_close(ladj, torch.zeros(5, dtype=torch.float64))


def test_radial_beta_at_least_minus_alpha_and_identity_at_start():
    t = Radial(D, context_features=2).double()
    z = randn(5, D)
    torch.testing.assert_close(t(z, randn(5, 2, seed=1))[0], z)
    for a, b in [(-20.0, -30.0), (0.0, -50.0), (5.0, 3.0), (40.0, -40.0)]:
        set_params(t, alpha=torch.tensor(a), beta=torch.tensor(b))
        _, alpha, beta = t.parameters_hat(randn(3, 2))
        assert torch.all(alpha > 0) and torch.all(beta >= -alpha)


@pytest.mark.parametrize("beta", [-0.99, 0.0, 3.0])
def test_radial_closed_form_inverse_on_both_branches(beta):
    t = Radial(D).double()
    alpha = 0.5
    set_params(t, alpha=torch.tensor(math.log(math.expm1(alpha))),
               beta=torch.tensor(math.log(math.expm1(alpha + beta * alpha))))
    # radii from far inside to far outside alpha + beta, so that both forms of the root are used
    z = t.conditioner.free["z0"] + randn(60, D) * torch.logspace(-6, 3, 60, dtype=torch.float64).unsqueeze(-1)
    x, ladj = t(z)
    z2, ladj2 = t.inverse(x)
    torch.testing.assert_close(z2, z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ladj2, -ladj, rtol=1e-10, atol=1e-10)


# --- Sylvester bases -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_orthogonalize_gives_orthonormal_columns_the_polar_factor(dtype):
    q0 = randn(3, 6, 4, seed=1).to(dtype)
    q = orthogonalize(q0)
    tol = default_tolerance(dtype)
    defect = q.mT @ q - torch.eye(4, dtype=dtype)
    assert defect.abs().max() <= tol
    u, _, vh = torch.linalg.svd(q0.double(), full_matrices=False)
    torch.testing.assert_close(q.double(), u @ vh, atol=10 * tol, rtol=0)


def test_orthogonalize_failure_paths():
    q = randn(5, 3)
    with pytest.raises(ConvergenceError):
        orthogonalize(q, max_iter=1)
    q[:, 2] = q[:, 0]  # rank-deficient: only rounding moves its zero singular value, x1.5 per iteration
    with pytest.raises(ConvergenceError):
        orthogonalize(q, max_iter=40)
    with pytest.raises(ValueError, match="columns"):
        orthogonalize(randn(3, 5))


@pytest.mark.parametrize("basis", [OrthogonalBasis(3), OrthogonalBasis(), HouseholderBasis(3),
                                   PermutationBasis(False), PermutationBasis(True)], ids=repr)
def test_sylvester_bases_are_orthonormal_with_context(basis):
    t = perturb(Sylvester(D, 2, basis).double())
    q = t.parts(randn(6, D), randn(6, 2, seed=1))[0]
    m = basis.width(D)
    assert q.shape[-2:] == (D, m)
    torch.testing.assert_close(q.mT @ q, torch.eye(m, dtype=torch.float64).expand_as(q.mT @ q))


@pytest.mark.parametrize("basis", [OrthogonalBasis(3), HouseholderBasis(3)], ids=repr)
def test_sylvester_with_context_takes_an_empty_batch(basis):
    flow = pf.SylvesterFlow(D, context_features=2, transforms=2)
    t = Sylvester(D, 2, basis)
    x, ladj = t(torch.zeros(0, D), torch.zeros(0, 2))
    assert x.shape == (0, D) and ladj.shape == (0,)
    assert flow.log_prob(torch.zeros(0, D), torch.zeros(0, 2)).shape == (0,)


def test_sylvester_diagonals_keep_the_invertibility_condition():
    t = Sylvester(D, 0, HouseholderBasis(2)).double()
    with torch.no_grad():
        t.conditioner.free["r"].fill_(50.0)
        t.conditioner.free["r_tilde"].fill_(-50.0)
    _, r, r_tilde, _ = t.parts(randn(1, D))
    product = torch.diagonal(r) * torch.diagonal(r_tilde)
    assert torch.all(product > -1)
    assert torch.all(torch.isfinite(t(randn(8, D, scale=3))[1]))


# --- numerical inverses --------------------------------------------------------------------

def planar(dtype, slope=None):
    torch.manual_seed(0)
    t = perturb(Planar(D).double(), scale=1.0)
    if slope is not None:  # w^T u_hat = slope: -1 < slope, close to -1 is the hard case
        w = t.conditioner.free["w"]
        set_params(t, u=math.log(math.expm1(slope + 1)) * w / w.square().sum())
    return t.to(dtype)


def sylvester(dtype, basis=None):
    torch.manual_seed(0)
    t = perturb(Sylvester(D, 0, basis or OrthogonalBasis(3)).double(), scale=1.0)
    return t.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("slope", [None, -0.999, 20.0], ids=["perturbed", "near-singular", "steep"])
def test_planar_inverse_meets_its_tolerance(dtype, slope):
    t, reference = planar(dtype, slope), planar(torch.float64, slope)
    x = reference(randn(200, D, scale=3.0))[0].to(dtype)
    z, _ = t.inverse(x)
    z_true, _ = reference.inverse(x.double(), None)  # float64 solution of the float32 problem
    u_hat, w, b = reference.parameters_hat()
    a, a_true = (w.to(dtype) * z).sum(-1) + b.to(dtype), (w * z_true).sum(-1) + b
    slope = (w * u_hat).sum(-1)
    # the tolerance, plus the rounding floor of the dtype: eps * |terms| / (d target / d a)
    floor = 4 * torch.finfo(dtype).eps * (a_true.abs() + slope.abs() + 1) / (1 + slope / torch.cosh(a_true) ** 2)
    bound = default_tolerance(dtype) * a_true.abs().clamp(min=1) + floor
    assert torch.all((a.double() - a_true).abs() <= bound)
    error = (z.double() - z_true).norm(dim=-1)
    assert torch.all(error <= (u_hat.norm() + 1) * bound + 10 * torch.finfo(dtype).eps * x.double().norm(dim=-1))


class FixedBasis:
    """A given Q: the float64 reference of a transform's own (float32) problem."""

    def __init__(self, q):
        self.q = q

    def width(self, features):
        return self.q.shape[-1]

    def init(self, features):
        return {}

    def __call__(self, params, like):
        return self.q


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("basis", [OrthogonalBasis(3), HouseholderBasis(2), PermutationBasis(True)], ids=repr)
def test_sylvester_inverse_meets_its_tolerance(dtype, basis):
    t = sylvester(dtype, basis)
    q, r, r_tilde, _ = (p.detach().double() for p in t.parts(torch.zeros(1, D, dtype=dtype)))
    reference = Sylvester(D, 0, FixedBasis(q)).double()
    with torch.no_grad():
        for name in ("r", "r_tilde", "bias"):
            reference.conditioner.free[name].copy_(t.conditioner.free[name])
    x = reference(randn(200, D, scale=3.0))[0].to(dtype)
    z, _ = t.inverse(x)
    z_true, _ = reference.inverse(x.double())
    y_true = z_true @ q
    # stated: each component of y = Q^T z within tol * max(1, |y_i|), so z within about ||R|| ||R~|| times that
    gain = torch.linalg.matrix_norm(r, ord=2) * torch.linalg.matrix_norm(r_tilde, ord=2) * math.sqrt(q.shape[-1])
    bound = default_tolerance(dtype) * y_true.abs().clamp(min=1).max(-1).values
    rounding = 100 * torch.finfo(dtype).eps * (x.double().abs().max(-1).values + 1)
    error = (z.double() - z_true).abs().max(-1).values
    assert torch.all(error <= gain * bound + (gain + 1) * rounding)


def test_numerical_inverses_raise_when_not_converged():
    for t in (planar(torch.float64), sylvester(torch.float64)):
        t.max_iter = 1
        with pytest.raises(ConvergenceError):
            t.inverse(randn(10, D, scale=3.0))


def test_newton_raises_without_a_root_and_converges_from_far():
    x0 = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    with pytest.raises(ConvergenceError):  # x^2 + 1 = 0 has no real root
        newton(lambda x: x.square() + 1, lambda x, f: f / (2 * x), x0, max_iter=50)
    # arctan: plain Newton diverges from |x0| > 1.39; the damped steps converge
    root = newton(lambda x: torch.atan(x), lambda x, f: f * (1 + x.square()), torch.full((3, 1), 10.0))
    assert torch.all(root.abs() <= 1e-5)


def test_newton_gradient_is_the_implicit_one():
    theta = torch.tensor([0.3, 2.0, -5.0], dtype=torch.float64, requires_grad=True)

    def solve_cubic(theta):  # x^3 + x = theta
        return newton(lambda x: x ** 3 + x - theta.unsqueeze(-1), lambda x, f: f / (3 * x.square() + 1),
                      torch.zeros(3, 1, dtype=torch.float64)).squeeze(-1)

    torch.autograd.gradcheck(solve_cubic, (theta,))


def test_sylvester_flow_kinds():
    flow = pf.SylvesterFlow(3, transforms=4, kind="triangular")
    layers = flow.transform[1]
    assert [layer.basis.reverse for layer in layers] == [False, True, False, True]
    with pytest.raises(ValueError, match="kind"):
        pf.SylvesterFlow(3, kind="diagonal")
