"""Residual flows: the stochastic log-det estimators against the exact one, spectral norms, errors.

The blocks' contract (round trips, exact ladj against autograd, shapes, float32) is the
registry's (``residual-*`` in tests/test_transforms.py); here the family's own properties.
Each stochastic check averages many independent draws, vectorised over a batch of copies of
one input, and allows 4 standard errors of the mean.
"""

import json
import math

import pytest
import torch

import pushforward as pf
from cli_helpers import invoke
from pushforward.cli import main
from pushforward.experiment import load_run
from pushforward.nn.lipschitz import (CERTIFY_FROM, ELU, GRID, SpectralConv2d, SpectralLinear, circular_conv2d,
                                      grid_ceiling)
from pushforward.transforms import ConvergenceError, ConvResidualBlock, ResidualBlock, log_det_estimators

DRAWS = 2000


def block(features=3, hidden=(16,), bound=0.9, **kwargs) -> ResidualBlock:
    """A block in float64 whose layers all sit at the spectral bound, so Lip(g) is close to
    ``bound`` = c^L (the weights are scaled up until normalisation caps each at c)."""
    layers = len(hidden) + 1
    t = ResidualBlock(features, hidden_features=hidden, coefficient=bound ** (1 / layers), iterations=None,
                      activation=ELU, **kwargs).double()
    with torch.no_grad():
        for layer in t.net.linears:
            layer.weight.mul_(10)
    return t


def exact_ladj(t: ResidualBlock, z: torch.Tensor) -> torch.Tensor:
    weights = t.net.effective_weights()
    jac = t.net.jacobian(weights, z, slice(0, None))[1]
    return torch.linalg.slogdet(torch.eye(z.shape[-1], dtype=z.dtype) + jac)[1]


def mean_and_stderr(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values.mean(0), values.std(0) / math.sqrt(len(values))


def copies(z: torch.Tensor) -> torch.Tensor:
    return z.expand(DRAWS, -1).clone()


# --- the estimators ------------------------------------------------------------------------

def symmetric_linear_block(**kwargs) -> ResidualBlock:
    """g(z) = W z + b with eigenvalues 0.9, -0.9 and 0.5: ||J|| = spectral radius = 0.9, the
    slowest series of a block with Lip(g) = 0.9."""
    t = block(hidden=(), **kwargs)
    q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    with torch.no_grad():
        t.net.linears[0].weight.copy_(q @ torch.diag(torch.tensor([0.9, -0.9, 0.5], dtype=torch.float64)) @ q.T)
    return t


@pytest.mark.parametrize("hidden, bound, p", [((), 0.9, 0.15), ("symmetric", 0.9, 0.15), ((16,), 0.9, 0.15),
                                              ((16, 16), 0.5, 0.5)],
                         ids=["linear-0.9", "linear-symmetric-0.9", "mlp-0.9", "mlp-0.5-default-p"])
def test_russian_roulette_is_unbiased(hidden, bound, p):
    options = dict(estimator="roulette", eval_estimator="roulette", stop_probability=p, terms_per_example=True)
    t = symmetric_linear_block(**options) if hidden == "symmetric" else block(hidden=hidden, bound=bound, **options)
    t.eval()
    z = torch.randn(1, 3, dtype=torch.float64)
    jac = t.net.jacobian(t.net.effective_weights(), z, slice(0, None))[1][0]
    assert torch.linalg.matrix_norm(jac, 2) <= bound + 1e-9
    with torch.no_grad():
        ladj = t(copies(z))[1]
    mean, stderr = mean_and_stderr(ladj)
    exact = exact_ladj(t, z)[0]
    assert abs(mean - exact) < 4 * stderr, (float(mean), float(exact), float(stderr))


def test_russian_roulette_with_one_draw_per_call_is_unbiased():
    """The default: the examples of a call share N; the call means are the independent draws."""
    t = symmetric_linear_block(estimator="roulette", eval_estimator="roulette", stop_probability=0.15).eval()
    z = torch.randn(1, 3, dtype=torch.float64)
    with torch.no_grad():
        ladj = torch.stack([t(z.expand(4, -1))[1].mean() for _ in range(400)])
    mean, stderr = mean_and_stderr(ladj)
    assert abs(mean - exact_ladj(t, z)[0]) < 4 * stderr


def test_series_is_unbiased_for_its_truncation_and_its_bias_shrinks_with_n():
    t = block(bound=0.9).eval()
    z = torch.randn(1, 3, dtype=torch.float64)
    with torch.no_grad():
        jac = t.net.jacobian(t.net.effective_weights(), z, slice(0, None))[1][0]
        exact = exact_ladj(t, z)[0]
    power, truncated = torch.eye(3, dtype=torch.float64), []
    for k in range(1, 13):
        power = power @ jac
        truncated.append((truncated[-1] if truncated else 0) + (-1) ** (k + 1) * torch.trace(power) / k)
    bias = [abs(float(s - exact)) for s in truncated]
    for n in range(1, 12):  # the tail bound sum_{k > n} D L^k / k with L = 0.9
        assert bias[n - 1] <= 3 * 0.9 ** (n + 1) / ((n + 1) * (1 - 0.9)) + 1e-12
    assert bias[11] < bias[0] / 5 and bias[7] < bias[1]
    for n in (1, 4, 10):
        t.eval_estimator, t.terms = "series", n
        with torch.no_grad():
            mean, stderr = mean_and_stderr(t(copies(z))[1])
        assert abs(mean - truncated[n - 1]) < 4 * stderr, (n, float(mean), float(truncated[n - 1]))


def test_neumann_gradient_matches_autograd_of_the_exact_log_det():
    t = block(hidden=(8,), bound=0.9, estimator="roulette", stop_probability=0.15, terms_per_example=True).train()
    z = torch.randn(1, 3, dtype=torch.float64)
    params = [t.net.linears[0].bias, t.net.linears[1].weight]
    # exact: autograd of slogdet(I + J) with respect to z and the parameters
    t.estimator = "exact"
    zz = z.clone().requires_grad_()
    exact = torch.autograd.grad(t(zz)[1].sum(), [zz, *params])
    t.estimator = "roulette"
    # d/dz: one estimate per copy
    zs = copies(z).requires_grad_()
    (grad_z,) = torch.autograd.grad(t(zs)[1].sum(), zs)
    mean, stderr = mean_and_stderr(grad_z)
    assert (abs(mean - exact[0][0]) < 4 * stderr).all(), (mean, exact[0][0], stderr)
    # d/dtheta: one estimate per group of copies
    groups = [torch.autograd.grad(t(copies(z)[:50])[1].mean(), params) for _ in range(40)]
    for i, reference in enumerate(exact[1:]):
        mean, stderr = mean_and_stderr(torch.stack([g[i] for g in groups]))
        assert (abs(mean - reference) < 4 * stderr + 1e-12).all(), (i, mean, reference, stderr)


def test_roulette_memory_does_not_keep_the_terms_graphs():
    """The value is computed without a graph: its autograd graph has the size of one vector-Jacobian
    product whatever the number of terms (checked through the saved tensors' count)."""
    sizes = []
    for p in (0.9, 0.05):  # about 2 and about 60 terms
        t = block(estimator="roulette", stop_probability=p, terms_per_example=True).train()
        z = torch.randn(200, 3, dtype=torch.float64, requires_grad=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
            t(z)[1].sum()
        sizes.append(sum(saved))
    assert sizes[1] <= sizes[0] * 1.01


# --- the inverse ---------------------------------------------------------------------------

def test_inverse_gradients_are_those_of_the_implicit_function():
    t = block(hidden=(8,), bound=0.9).train()
    x, r = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    weight = t.net.linears[0].weight

    def loss() -> torch.Tensor:
        z, ladj = t.inverse(x)
        return (z * r).sum() + ladj.sum()

    (grad,) = torch.autograd.grad(loss(), weight)
    eps = 1e-6
    for index in [(0, 0), (3, 2), (7, 1)]:
        with torch.no_grad():
            weight[index] += eps
            up = loss()
            weight[index] -= 2 * eps
            down = loss()
            weight[index] += eps
        assert float(grad[index]) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-5, abs=1e-7)


def test_inverse_that_does_not_converge_raises():
    t = block(max_iter=2).eval()
    with pytest.raises(ConvergenceError, match=r"in 2 iterations") as error:
        t.inverse(torch.randn(5, 3, dtype=torch.float64))
    assert "\n" not in str(error.value)
    with pytest.raises(ConvergenceError, match="non-finite"):
        block().inverse(torch.full((2, 3), math.nan, dtype=torch.float64))


# --- spectral normalisation ----------------------------------------------------------------

def train_steps(flow: pf.Flow, steps: int = 30, lr: float = 3e-2) -> None:
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    data = 3 * torch.randn(256, 3) ** 3
    for _ in range(steps):
        loss = -flow.log_prob(data).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def spectral_norms(flow: pf.Flow) -> tuple[list[float], list[float]]:
    """The largest singular values of the raw and of the effective weights, by torch.linalg."""
    layers = [m for m in flow.modules() if isinstance(m, SpectralLinear)]
    with torch.no_grad():
        raw = [float(torch.linalg.matrix_norm(m.weight, 2)) for m in layers]
        effective = [float(torch.linalg.matrix_norm(m.effective_weight(), 2)) for m in layers]
    return raw, effective


@pytest.mark.parametrize("iterations, hidden", [(None, 16), (1, 16), (1, CERTIFY_FROM)])
def test_spectral_norm_is_at_most_c_after_training(iterations, hidden):
    c = 0.9
    flow = pf.ResidualFlow(3, transforms=2, hidden_features=(hidden, hidden), coefficient=c, iterations=iterations)
    train_steps(flow)
    raw, effective = spectral_norms(flow.train())
    assert max(raw) > 1.5 * c  # the cap bites
    assert max(effective) <= c * (1 + 1e-5)
    assert max(spectral_norms(flow.eval())[1]) <= c * (1 + 1e-5)


def test_power_iteration_gradient_of_the_norm_converges_to_the_exact_one():
    layer = SpectralLinear(6, 5, 0.5, iterations=1).double()
    exact = torch.autograd.grad(layer.eval().sigma(), layer.weight)[0]
    layer.train()
    first = torch.autograd.grad(layer.sigma(), layer.weight)[0]
    for _ in range(200):
        estimate = layer.sigma()
    sigma = torch.linalg.matrix_norm(layer.weight, 2)
    assert sigma <= estimate < sigma * (1 + GRID)  # the value: sigma rounded up to the grid
    torch.testing.assert_close(estimate, grid_ceiling(sigma))
    torch.testing.assert_close(torch.autograd.grad(estimate, layer.weight)[0], exact)
    assert not torch.allclose(first, exact, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_certified_norm_is_the_grid_ceiling_whatever_the_subspace_holds(dtype, monkeypatch):
    torch.manual_seed(0)
    layer = SpectralLinear(CERTIFY_FROM + 3, CERTIFY_FROM, 0.9, iterations=1).to(dtype)
    with torch.no_grad():  # a spectrum with a cluster at the top, as training leaves it
        u, _, vh = torch.linalg.svd(layer.weight)
        s = torch.linspace(1, 0.1, CERTIFY_FROM, dtype=dtype)
        s[:5] = torch.tensor([2.0, 1.999, 1.998, 1.99, 1.9], dtype=dtype)
        layer.weight.copy_(u @ torch.diag(s) @ vh[:CERTIFY_FROM])
    expected = grid_ceiling(torch.linalg.matrix_norm(layer.weight.double(), 2)).to(dtype)
    assert layer.rounded_sigma(layer.weight) == expected  # a random subspace: eigh decides and resets it
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda *a, **k: pytest.fail("the certificate should decide"))
    for step in range(3):  # then the Cholesky certificate decides, as the weight drifts
        assert layer.rounded_sigma(layer.weight) == expected
        with torch.no_grad():
            layer.weight.add_(1e-4 * torch.randn_like(layer.weight))
        expected = grid_ceiling(torch.linalg.matrix_norm(layer.weight.double(), 2)).to(dtype)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    with torch.no_grad():  # a jump of the norm beyond the next grid point: eigh again
        layer.weight.mul_(1.5)
    expected = grid_ceiling(torch.linalg.matrix_norm(layer.weight.double(), 2)).to(dtype)
    assert layer.rounded_sigma(layer.weight) == expected


def test_power_iteration_recovers_from_a_zero_weight():
    layer = SpectralLinear(6, 5, 0.5, iterations=1).double()
    with torch.no_grad():
        layer.weight.zero_()
    layer.sigma()  # the power iteration meets W = 0: its vectors must survive it
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 6, dtype=torch.float64))
    exact = torch.autograd.grad(SpectralLinear.exact_sigma(layer.weight), layer.weight)[0]
    for _ in range(200):
        estimate = layer.sigma()
    torch.testing.assert_close(torch.autograd.grad(estimate, layer.weight)[0], exact)


def test_residual_map_is_a_contraction():
    t = block(hidden=(16, 16), bound=0.9).eval()
    a, b = torch.randn(500, 3, dtype=torch.float64), torch.randn(500, 3, dtype=torch.float64)
    g = t.net.forward
    ratio = torch.linalg.vector_norm(g(a) - g(b), dim=-1) / torch.linalg.vector_norm(a - b, dim=-1)
    assert float(ratio.detach().max()) <= 0.9 + 1e-12


# --- the convolutional block ---------------------------------------------------------------

IMAGE = (2, 4, 4)


def conv_block(bound=0.9, kernel_sizes=(3, 1, 3), **kwargs) -> ConvResidualBlock:
    """A block of (2, 4, 4) images in float64 whose convolutions all sit at the bound, so
    Lip(g) <= ``bound`` = c^L; with one convolution (``kernel_sizes`` (3,)), g is linear and its
    Jacobian's norm is ``bound`` exactly, the slowest series."""
    layers = len(kernel_sizes)
    t = ConvResidualBlock(IMAGE, hidden_channels=4, kernel_sizes=kernel_sizes, coefficient=bound ** (1 / layers),
                          activation=ELU, iterations=None, **kwargs).double()
    with torch.no_grad():
        for layer in t.net.convs:
            layer.weight.mul_(10)
    return t


def positive_conv_block(**kwargs) -> ConvResidualBlock:
    """A linear g(z) = K z + b, K a convolution with a symmetric kernel whose operator is symmetric
    positive definite with norm 0.9: every term of the series adds up, log det(I + K) is large
    (about 12 nats) and a truncation or a biased roulette shows."""
    t = conv_block(kernel_sizes=(3,), **kwargs)
    kernel = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    kernel[:, :, 1, 1] = torch.tensor([[1.0, 0.3], [0.3, 1.0]])
    kernel[:, :, 0, 1] = kernel[:, :, 2, 1] = 0.2 * torch.eye(2)
    with torch.no_grad():
        t.net.convs[0].weight.copy_(10 * kernel)
    return t


def conv_jacobian(t: ConvResidualBlock, z: torch.Tensor) -> torch.Tensor:
    """J_g at one image z (1, C, H, W), flattened to (D, D), by autograd."""
    return torch.autograd.functional.jacobian(lambda u: t.net(u.reshape(1, *IMAGE)).reshape(-1), z.reshape(-1))


def image_copies(z: torch.Tensor, n: int = DRAWS) -> torch.Tensor:
    return z.expand(n, *IMAGE).clone()


@pytest.mark.parametrize("kernel_sizes", ["positive", (3,), (3, 1, 3)])
def test_conv_block_is_a_contraction_and_its_exact_ladj_is_slogdet(kernel_sizes):
    t = (positive_conv_block() if kernel_sizes == "positive" else conv_block(kernel_sizes=kernel_sizes)).eval()
    z = torch.randn(1, *IMAGE, dtype=torch.float64)
    jac = conv_jacobian(t, z)
    norm = float(torch.linalg.matrix_norm(jac, 2))
    assert norm <= 0.9 + 1e-12 and (len(kernel_sizes) > 1 or norm > 0.9 - 1e-12)
    torch.testing.assert_close(t(z)[1][0], torch.linalg.slogdet(torch.eye(32, dtype=torch.float64) + jac)[1])


@pytest.mark.parametrize("kernel_sizes, p", [("positive", 0.15), ((3,), 0.15), ((3, 1, 3), 0.5)])
def test_conv_russian_roulette_is_unbiased(kernel_sizes, p):
    options = dict(estimator="roulette", eval_estimator="roulette", stop_probability=p, terms_per_example=True)
    t = (positive_conv_block(**options) if kernel_sizes == "positive"
         else conv_block(kernel_sizes=kernel_sizes, **options)).eval()
    z = torch.randn(1, *IMAGE, dtype=torch.float64)
    exact = torch.linalg.slogdet(torch.eye(32, dtype=torch.float64) + conv_jacobian(t, z))[1]
    with torch.no_grad():
        mean, stderr = mean_and_stderr(t(image_copies(z))[1])
    assert abs(mean - exact) < 4 * stderr, (float(mean), float(exact), float(stderr))


def test_conv_series_is_unbiased_for_its_truncation_and_its_bias_shrinks_with_n():
    t = positive_conv_block(eval_estimator="series").eval()
    z = torch.randn(1, *IMAGE, dtype=torch.float64)
    jac = conv_jacobian(t, z).detach()
    exact = torch.linalg.slogdet(torch.eye(32, dtype=torch.float64) + jac)[1]
    power, truncated = torch.eye(32, dtype=torch.float64), []
    for k in range(1, 11):
        power = power @ jac
        truncated.append((truncated[-1] if truncated else 0) + (-1) ** (k + 1) * torch.trace(power) / k)
    bias = [abs(float(s - exact)) for s in truncated]
    assert bias[9] < bias[0] / 5 and bias[7] < bias[1]
    for n in (1, 4, 10):
        t.terms = n
        with torch.no_grad():
            mean, stderr = mean_and_stderr(t(image_copies(z))[1])
        assert abs(mean - truncated[n - 1]) < 4 * stderr, (n, float(mean), float(truncated[n - 1]))


def test_conv_neumann_gradient_matches_autograd_of_the_exact_log_det():
    t = conv_block(estimator="roulette", stop_probability=0.3, terms_per_example=True).train()
    z = torch.randn(1, *IMAGE, dtype=torch.float64)
    params = [t.net.convs[0].bias, t.net.convs[2].weight]
    t.estimator = "exact"
    exact = torch.autograd.grad(t(z)[1].sum(), params)
    t.estimator = "roulette"
    groups = [torch.autograd.grad(t(image_copies(z, 50))[1].mean(), params) for _ in range(40)]
    for i, reference in enumerate(exact):
        mean, stderr = mean_and_stderr(torch.stack([g[i] for g in groups]))
        assert (abs(mean - reference) < 4 * stderr + 1e-12).all(), (i, mean, reference, stderr)


def conv_operator_norm(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The operator norm of x -> circular_conv2d(x, weight) on (C_in, *size) images, by brute
    force: the largest singular value of its dense matrix."""
    c = weight.shape[1]
    n = c * size[0] * size[1]
    matrix = torch.autograd.functional.jacobian(
        lambda x: circular_conv2d(x.reshape(c, *size), weight.detach()).reshape(-1),
        torch.zeros(n, dtype=weight.dtype))
    return torch.linalg.matrix_norm(matrix, 2)


@pytest.mark.parametrize("kernel, size", [(3, (4, 4)), (3, (2, 2)), (3, (1, 3)), (1, (3, 3)), (5, (3, 4))])
def test_spectral_conv_norm_is_the_operator_norm_and_the_bound_holds(kernel, size):
    layer = SpectralConv2d(3, 5, kernel, size, 0.9).double()
    with torch.no_grad():
        layer.weight.mul_(10)
    torch.testing.assert_close(layer.sigma(), conv_operator_norm(layer.weight, size), rtol=1e-12, atol=0)
    assert conv_operator_norm(layer.weight, size) > 2  # the cap bites
    assert conv_operator_norm(layer.effective_weight(), size) <= 0.9 * (1 + 1e-12)


def test_spectral_conv_bound_holds_after_training_with_power_iteration_gradients():
    torch.manual_seed(0)
    layer = SpectralConv2d(2, 3, 3, (4, 4), 0.7, iterations=1).double().train()
    optimizer = torch.optim.Adam(layer.parameters(), lr=3e-2)
    x = torch.randn(64, 2, 4, 4, dtype=torch.float64)
    for _ in range(30):  # a loss that rewards a large gain
        optimizer.zero_grad()
        (-layer(x).square().mean()).backward()
        optimizer.step()
    assert conv_operator_norm(layer.weight, (4, 4)) > 1.5 * 0.7
    for mode in (True, False):
        assert conv_operator_norm(layer.train(mode).effective_weight(), (4, 4)) <= 0.7 * (1 + 1e-12)


def test_power_iteration_on_the_convolution_gives_the_exact_gradient_once_converged():
    layer = SpectralConv2d(2, 3, 3, (4, 4), 0.5, iterations=1).double()
    exact = torch.autograd.grad(layer.eval().sigma(), layer.weight)[0]
    layer.train()
    first = torch.autograd.grad(layer.sigma(), layer.weight)[0]
    for _ in range(300):
        estimate = layer.sigma()
    torch.testing.assert_close(torch.autograd.grad(estimate, layer.weight)[0], exact)
    assert not torch.allclose(first, exact, atol=1e-3)


# --- arguments and the estimator rule ------------------------------------------------------

@pytest.mark.parametrize("c", [1.0, 1.5, 0.0, -0.5, math.nan])
def test_coefficient_outside_zero_one_is_a_one_line_error(c):
    for make in (lambda: ResidualBlock(3, coefficient=c), lambda: pf.ResidualFlow(3, coefficient=c),
                 lambda: pf.IResNet(3, coefficient=c)):
        with pytest.raises(ValueError, match=r"coefficient must be a finite number > 0 and < 1") as error:
            make()
        assert "\n" not in str(error.value)


def test_unknown_estimator_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"unknown estimator 'hutchinson'; choose exact, series, roulette"):
        ResidualBlock(3, estimator="hutchinson")
    with pytest.raises(ValueError, match="unknown eval_estimator"):
        ResidualBlock(3, eval_estimator="brute")
    with pytest.raises(ValueError, match="stop_probability"):
        ResidualBlock(3, stop_probability=1.0)


def test_which_estimator_each_mode_uses():
    flow = pf.ResidualFlow(3, transforms=2, hidden_features=(8,))
    assert log_det_estimators(flow.train()) == ["roulette"]
    assert log_det_estimators(flow.eval()) == ["exact"]
    flow = pf.IResNet(3, transforms=2, hidden_features=(8,))
    assert log_det_estimators(flow.train()) == ["series"]
    assert log_det_estimators(flow.eval()) == ["exact"]
    assert log_det_estimators(pf.IResNet(200, transforms=1, hidden_features=(8,)).eval()) == ["series"]
    assert log_det_estimators(pf.MAF(3)) == []


def test_image_preset_is_exact_in_evaluation_up_to_128_elements():
    digits = pf.ResidualFlowImage((1, 8, 8), levels=2, blocks=1, hidden_channels=4)
    assert log_det_estimators(digits, training=True) == ["roulette"]
    assert log_det_estimators(digits, training=False) == ["exact"]
    colour = pf.ResidualFlowImage((3, 8, 8), levels=2, blocks=1, hidden_channels=4, estimator="series")
    assert log_det_estimators(colour, training=False) == ["series"]
    sizes = {m.size for m in digits.modules() if isinstance(m, SpectralConv2d)}
    assert sizes == {(8, 8), (4, 4)}  # each scale's convolutions are bounded on its own image size
    with pytest.raises(ValueError, match="unknown estimator 'brute'"):
        pf.ResidualFlowImage((1, 8, 8), estimator="brute")
    with pytest.raises(ValueError, match="coefficient must be a finite number > 0 and < 1"):
        pf.ResidualFlowImage((1, 8, 8), coefficient=1.0)


def test_presets_sample_and_score_their_samples():
    for flow in (pf.ResidualFlow(3, 2, transforms=2, hidden_features=(16,)),
                 pf.IResNet(3, 2, transforms=2, hidden_features=(16,))):
        flow = pf.testing.perturb(flow.double(), scale=0.1).eval()
        context = torch.randn(6, 2, dtype=torch.float64)
        x, log_p = flow.sample_and_log_prob((), context)
        torch.testing.assert_close(flow.log_prob(x, context), log_p)


def test_reported_metrics_name_the_log_det_estimator():
    from pushforward.experiment import measure_rows

    rows = torch.randn(20, 3)
    assert measure_rows(pf.ResidualFlow(3, transforms=2, hidden_features=(8,)), rows).log_det == "exact"
    assert measure_rows(pf.IResNet(200, transforms=1, hidden_features=(8,)), torch.randn(20, 200)).log_det == "series"
    assert measure_rows(pf.MAF(3, transforms=1, hidden_features=(8,)), rows).log_det is None


# --- the command line ----------------------------------------------------------------------

def test_command_line_sets_what_the_papers_vary(tmp_path):
    out = tmp_path / "run"
    invoke(main, "fit", "--data", "moons", "--flow", "iresnet", "--transforms", 2, "--hidden-features", 8,
           "--coefficient", 0.8, "--estimator", "roulette", "--eval-estimator", "series", "--terms", 3,
           "--exact-terms", 1, "--stop-probability", 0.3, "--iterations", 4, "--epochs", 1, "--max-minutes", 0.05,
           "--quiet", "--out", out)
    kwargs = json.loads((out / "config.json").read_text())["flow_kwargs"]
    assert kwargs == {"base": "normal", "transforms": 2, "hidden_features": [8], "coefficient": 0.8, "estimator": "roulette",
                      "eval_estimator": "series", "terms": 3, "exact_terms": 1, "stop_probability": 0.3,
                      "iterations": 4}
    assert json.loads((out / "metrics.json").read_text())["log_det"] == "series"
    flow, _ = load_run(out)
    blocks = [m for m in flow.modules() if isinstance(m, ResidualBlock)]
    assert [(b.estimator, b.eval_estimator, b.terms, b.exact_terms, b.stop_probability) for b in blocks] == \
        [("roulette", "series", 3, 1, 0.3)] * 2
    assert {(layer.coefficient, layer.iterations) for b in blocks for layer in b.net.linears} == {(0.8, 4)}


@pytest.mark.parametrize("option, value, message", [
    ("--coefficient", 1, "'--coefficient': '1' is not a finite number > 0 and < 1"),
    ("--coefficient", 0, "'--coefficient': '0' is not a finite number > 0 and < 1"),
    ("--estimator", "hutchinson", "'--estimator': 'hutchinson' is not one of 'exact', 'series', 'roulette'"),
    ("--eval-estimator", "brute", "'--eval-estimator': 'brute' is not one of"),
    ("--stop-probability", 1, "'--stop-probability': '1' is not a finite number > 0 and < 1"),
    ("--terms", 0, "'--terms': '0' is not an integer >= 1"),
])
def test_bad_residual_options_are_one_line_errors(tmp_path, option, value, message):
    result = invoke(main, "fit", "--data", "moons", "--flow", "residual", option, value, "--out", tmp_path / "x",
                    ok=False)
    assert result.exit_code == 2 and message in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error")] == \
        [line for line in result.output.splitlines() if message in line]
    result = invoke(main, "fit", "--data", "moons", "--flow", "maf", "--coefficient", 0.5, "--out", tmp_path / "y",
                    ok=False)
    assert "--coefficient does not apply to --flow maf" in result.output


def test_config_with_a_coefficient_out_of_range_is_refused(tmp_path):
    out = tmp_path / "run"
    invoke(main, "fit", "--data", "moons", "--flow", "residual", "--transforms", 1, "--hidden-features", 8,
           "--epochs", 1, "--max-minutes", 0.02, "--quiet", "--out", out)
    config = json.loads((out / "config.json").read_text())
    config["flow_kwargs"]["coefficient"] = 1.5
    (out / "config.json").write_text(json.dumps(config))
    result = invoke(main, "evaluate", out, ok=False)
    assert "config.json is corrupted: flow_kwargs: coefficient must be a finite number > 0 and < 1, got 1.5" \
        in result.output
