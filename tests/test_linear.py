"""Family checks of the linear transforms (the shared contract is in test_transforms.py)."""

import math

import pytest
import torch

import pushforward as pf
from pushforward.nn.parameters import ContextParameters
from pushforward.testing import perturb
from pushforward.transforms.linear import (
    LU, QR, ConvexCombinationTriangular, Dense, Householder, LowerTriangular, UpperTriangular, householder,
)

D = 5
EYE = torch.eye(D, dtype=torch.float64)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def built(t):
    return perturb(t.double(), seed=1)


def assert_affine(t, matrix, bias=None, context=None):
    """t(z) = matrix z + bias and ladj = log|det matrix|."""
    z = randn(4, D)
    x, ladj = t(z, context)
    expected = torch.einsum("...ij,...j->...i", matrix, z) + (0 if bias is None else bias)
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(ladj, torch.linalg.slogdet(matrix)[1].expand(4))


def test_context_parameters_shapes_and_zero_initial_context_map():
    p = ContextParameters({"w": torch.arange(3.0), "b": ()}, context_features=2)
    out = p(torch.randn(4, 6, 2))
    assert out["w"].shape == (4, 6, 3) and out["b"].shape == (4, 6)
    torch.testing.assert_close(out["w"], torch.arange(3.0).expand(4, 6, 3))
    free = ContextParameters({"w": (3,)})
    assert free()["w"].shape == (3,) and free(torch.randn(2, 9))["w"].shape == (3,)  # context ignored
    with pytest.raises(ValueError, match="needs a context"):
        p()
    with pytest.raises(ValueError, match="expected 2"):
        p(torch.randn(4, 3))


def test_householder_product_is_orthogonal_with_and_without_context():
    t = built(Householder(D, reflections=3, context_features=2))
    context = randn(6, 2, seed=2)
    q = t.matrix(context)
    assert q.shape == (6, D, D)
    torch.testing.assert_close(q.mT @ q, EYE.expand(6, D, D))
    assert_affine(t, q[:4], context=context[:4])
    assert torch.all(t(randn(3, D), context[:3])[1] == 0)
    q0 = built(Householder(D)).matrix()
    torch.testing.assert_close(q0 @ q0.mT, EYE)
    # D reflections: determinant (-1)^D
    torch.testing.assert_close(torch.linalg.det(q0), torch.tensor(-1.0, dtype=torch.float64))


def test_householder_zero_vector_is_the_identity():
    z = randn(3, D)
    torch.testing.assert_close(householder(z, torch.zeros(2, D, dtype=torch.float64)), z)


@pytest.mark.parametrize("upper", [False, True])
def test_triangular_is_triangular_with_positive_diagonal(upper):
    t = built(UpperTriangular(D) if upper else LowerTriangular(D))
    w = t.matrix()
    torch.testing.assert_close(w, torch.triu(w) if upper else torch.tril(w))
    assert torch.all(torch.diagonal(w) > 0)
    assert_affine(t, w, t.bias)


def test_lower_triangular_gaussian_pushes_to_the_gaussian():
    a = randn(D, D)
    covariance, mean = a @ a.T + EYE, randn(D, seed=1)
    t = LowerTriangular.gaussian(mean, covariance)
    torch.testing.assert_close(t.matrix() @ t.matrix().T, covariance)
    torch.testing.assert_close(t(torch.zeros(D, dtype=torch.float64))[0], mean)


def test_convex_combination_weights_sum_to_one_and_diagonal_is_one():
    t = built(ConvexCombinationTriangular(D, components=4, context_features=3))
    context = randn(2, 7, 3, seed=3)
    y = t.weights(context)
    assert y.shape == (2, 7, 4) and torch.all(y > 0)
    torch.testing.assert_close(y.sum(-1), torch.ones(2, 7, dtype=torch.float64))
    lower = t.matrix(context)
    torch.testing.assert_close(lower, torch.tril(lower))
    torch.testing.assert_close(torch.diagonal(lower, dim1=-2, dim2=-1), torch.ones(2, 7, D, dtype=torch.float64))
    assert_affine(t, lower[0, :4], context=context[0, :4])
    free = built(ConvexCombinationTriangular(D, components=4))
    torch.testing.assert_close(free.weights().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_lu_reconstructs_w_and_starts_at_a_rotation():
    torch.manual_seed(0)
    t = LU(D).double()
    w0 = t.matrix()
    torch.testing.assert_close(w0 @ w0.T, EYE, atol=1e-6, rtol=0)  # Glow's initialisation: a rotation (float32)
    torch.testing.assert_close(t(randn(3, D))[1], torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    t = built(t)
    p = torch.eye(D, dtype=torch.float64)[t.permutation.permutation]
    lower, upper = t._lower(), t._upper()
    torch.testing.assert_close(lower, torch.tril(lower))
    torch.testing.assert_close(torch.diagonal(lower), torch.ones(D, dtype=torch.float64))
    torch.testing.assert_close(upper, torch.triu(upper))
    torch.testing.assert_close(t.matrix(), p @ lower @ upper)
    assert_affine(t, t.matrix(), t.bias)


def test_qr_reconstructs_w():
    t = built(QR(D))
    q, r = t[1].matrix(), t[0].matrix()
    torch.testing.assert_close(q.T @ q, EYE)
    torch.testing.assert_close(r, torch.triu(r))
    assert torch.all(torch.diagonal(r) > 0)
    torch.testing.assert_close(t.matrix(), q @ r)
    assert_affine(t, t.matrix(), q @ t[0].bias)


def test_dense_is_the_affine_map_with_slogdet():
    t = built(Dense(D))
    assert_affine(t, t.weight, t.bias)


def test_householder_flow_is_a_full_covariance_gaussian():
    torch.manual_seed(0)
    flow = perturb(pf.HouseholderFlow(3, transforms=3).double(), seed=2)
    mean = flow.transform(torch.zeros(3, dtype=torch.float64))[0]
    a = torch.autograd.functional.jacobian(lambda z: flow.transform(z)[0], mean)
    covariance = a @ a.T
    torch.testing.assert_close(flow.transform(randn(3))[0], mean + a @ randn(3))  # affine
    x = randn(6, 3)
    expected = torch.distributions.MultivariateNormal(mean, covariance).log_prob(x)
    torch.testing.assert_close(flow.log_prob(x), expected)
    assert math.isfinite(float(flow.sample((2,)).sum()))
