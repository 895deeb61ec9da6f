"""Family checks of NICE and the neural autoregressive transforms (DSF, UMNN, B-NAF).

The shared contract (round trips, ladj vs autograd, shapes, gradients) runs on the registry
entries neural-dsf, neural-umnn and neural-bnaf in test_transforms.py.
"""

import math

import pytest
import torch

import pushforward as pf
from pushforward import testing
from pushforward.transforms import (BlockNeuralAutoregressive, ConvergenceError, DeepSigmoidMap, MaskedAutoregressive,
                                    UMNNMap, clenshaw_curtis)
from pushforward.transforms.numerical import default_tolerance

D, C = 4, 2


def perturbed(t):
    return testing.perturb(t.double(), scale=0.5).eval()


BUILDERS = {
    "dsf": lambda: MaskedAutoregressive(D, DeepSigmoidMap(units=4, layers=2), C, (12,)),
    "umnn": lambda: MaskedAutoregressive(D, UMNNMap(embedding=3, hidden_features=(8,)), C, (8,)),
    "bnaf": lambda: BlockNeuralAutoregressive(D, C, hidden_features=(3, 3)),
}


# --- Clenshaw-Curtis quadrature ---------------------------------------------------------------

@pytest.mark.parametrize("nodes", [2, 3, 8, 17])
def test_clenshaw_curtis_is_exact_for_polynomials_up_to_its_degree(nodes):
    s, w = clenshaw_curtis(nodes)
    for degree in range(nodes):
        exact = 0.0 if degree % 2 else 2 / (degree + 1)
        assert abs(float((w * s**degree).sum()) - exact) < 1e-14, degree


def test_clenshaw_curtis_integrates_exp_to_machine_precision():
    s, w = clenshaw_curtis(17)
    assert abs(float((w * s.exp()).sum()) - (math.e - 1 / math.e)) < 1e-12


def test_clenshaw_curtis_dtype_and_errors():
    s, w = clenshaw_curtis(5, dtype=torch.float32)
    assert s.dtype == w.dtype == torch.float32
    with pytest.raises(ValueError, match="at least 2 nodes"):
        clenshaw_curtis(1)


# --- NICE -------------------------------------------------------------------------------------

def test_nice_couplings_preserve_volume_and_the_scaling_carries_the_ladj():
    flow = testing.perturb(pf.NICE(D, hidden_features=(16,)).double())
    scaling, couplings = flow.transform
    assert len(couplings) == 4
    z = torch.randn(3, D, dtype=torch.float64)
    _, ladj = couplings(z)
    torch.testing.assert_close(ladj, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(testing.autograd_ladj(couplings, z), torch.zeros(3, dtype=torch.float64))
    _, ladj = flow.transform(z)
    torch.testing.assert_close(ladj, testing.autograd_ladj(scaling, z))
    assert float(ladj.detach().abs().min()) > 1e-3


# --- monotonic and autoregressive -------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_triangular_jacobian_with_positive_diagonal(name):
    t = perturbed(BUILDERS[name]())
    x, c = 2 * torch.randn(3, D, dtype=torch.float64), torch.randn(3, C, dtype=torch.float64)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: t.inverse(v, c[i])[0], x[i])
        assert torch.all(jac.triu(1) == 0), name
        assert torch.all(jac.diagonal() > 0), name
        torch.testing.assert_close(jac.diagonal().log().sum(), t.inverse(x[i], c[i])[1])


def test_deep_sigmoid_is_stable_where_the_sigmoids_saturate():
    dsf = DeepSigmoidMap(units=3, layers=2)
    x = torch.tensor([-1e4, -300.0, -1.0, 0.0, 1.0, 300.0, 1e4])
    h = torch.randn(x.shape + (dsf.params,))
    for dtype in (torch.float32, torch.float64):
        y, ladj = dsf.inverse(x.to(dtype), h.to(dtype))
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        assert torch.all(y.diff() > 0)


def test_umnn_starts_at_the_identity():
    umnn = UMNNMap(embedding=3).double()
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    z, ladj = umnn.inverse(x, torch.zeros(9, umnn.params, dtype=torch.float64))
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(ladj, torch.zeros_like(x))


def test_bnaf_depends_on_the_context():
    t = perturbed(BUILDERS["bnaf"]())
    x = torch.randn(5, D, dtype=torch.float64)
    z1, _ = t.inverse(x, torch.zeros(5, C, dtype=torch.float64))
    z2, _ = t.inverse(x, torch.ones(5, C, dtype=torch.float64))
    assert not torch.allclose(z1, z2)
    with pytest.raises(ValueError, match="needs a context"):
        t.inverse(x)


# --- numerical inverses -----------------------------------------------------------------------

def _assert_bracketed(f, x, y, tol):
    """The root of f(x) = y lies within tol * max(1, |x|) of x."""
    step = tol * x.abs().clamp(min=1)
    assert torch.all(f(x - step) <= y) and torch.all(y <= f(x + step))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["dsf", "umnn"])
def test_elementwise_inverse_meets_its_tolerance(name, dtype):
    torch.manual_seed(1)
    m = DeepSigmoidMap(units=4, layers=2) if name == "dsf" else UMNNMap(embedding=3, hidden_features=(8,))
    if name == "umnn":
        testing.perturb(m, scale=0.5)
        m.to(dtype)
    z = 3 * torch.randn(50, dtype=dtype)
    h = torch.randn(50, m.params, dtype=dtype)
    x, ladj = m.forward(z, h)
    with torch.no_grad():
        _assert_bracketed(lambda v: m.inverse(v, h)[0], x, z, default_tolerance(dtype))
        torch.testing.assert_close(ladj, -m.inverse(x, h)[1])


def test_bnaf_inverse_meets_its_tolerance():
    t = perturbed(BUILDERS["bnaf"]())
    z, c = 3 * torch.randn(20, D, dtype=torch.float64), torch.randn(20, C, dtype=torch.float64)
    with torch.no_grad():
        x, _ = t(z, c)
        for i in range(D):
            def f(v, i=i):
                return t.inverse(torch.cat([x[:, :i], v[:, None], x[:, i + 1:]], -1), c)[0][:, i]
            _assert_bracketed(f, x[:, i], z[:, i], default_tolerance(torch.float64))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_numerical_forward_has_implicit_gradients(name):
    t = perturbed(BUILDERS[name]())
    z = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, C, dtype=torch.float64, requires_grad=True)
    # the context reaches x only through the conditioner: its gradient is the implicit one.
    assert torch.autograd.gradcheck(lambda z, c: t(z, c)[0], (z, c), atol=1e-6)


def test_failures_raise_convergence_error():
    h = torch.randn(4, 3 * 4)
    with pytest.raises(ConvergenceError):
        DeepSigmoidMap(units=4, max_iter=3).forward(torch.randn(4), h)
    bounded = BlockNeuralAutoregressive(2, hidden_features=(3,), residual=False)
    with pytest.raises(ConvergenceError, match="outside the image"):
        bounded(torch.full((1, 2), 1e3))
