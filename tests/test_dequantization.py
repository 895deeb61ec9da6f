"""Variational dequantization (pushforward.dequantization): the ELBO with a uniform q is the
uniform objective, the bounds are ordered around the exact discrete log-probability of a
Gaussian, the importance-weighted estimate improves the bound, and pf.fit trains p and q."""

import pytest
import torch

import pushforward as pf
from pushforward.dequantization import (FlowDequantizer, UniformDequantizer, VariationalDequantization, dequantized,
                                        importance_weighted_log_likelihoods)
from pushforward.transforms.elementwise import Affine


def pixels_plus_noise(n=6, shape=(1, 4, 4), levels=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, levels, (n, *shape), generator=g).double()
    return v + torch.rand(v.shape, generator=g, dtype=torch.float64)


def small_glow(levels=17):
    torch.manual_seed(0)
    return pf.testing.perturb(pf.Glow((1, 4, 4), levels=2, steps=1, hidden_channels=8, pixel_levels=levels).double(),
                              scale=0.1).eval()


def gaussian(mean=7.3, std=2.5):
    """A flow of independent N(mean, std^2) pixels (1, 2, 2), whose P(v) is in closed form."""
    shift, scale = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return pf.Flow(pf.StandardNormal((1, 2, 2)).double(), Affine(shift, scale, event_dims=3))


def test_with_a_uniform_q_the_objective_is_the_uniform_one_exactly():
    flow = small_glow()
    x = pixels_plus_noise()
    model = VariationalDequantization(flow, UniformDequantizer(), levels=17)
    torch.manual_seed(3)
    elbo = model.log_prob(x)
    torch.manual_seed(3)
    u = torch.rand(1, *x.shape, dtype=x.dtype)[0]
    assert torch.equal(elbo, flow.log_prob(x.floor() + u))
    # the data's own noise is one such u: log_prob of the pixels plus it is the uniform objective
    assert not torch.equal(elbo, flow.log_prob(x))


def test_the_bounds_are_ordered_around_the_exact_discrete_log_probability():
    flow, levels = gaussian(), 17
    v = torch.tensor([[[[3.0, 7.0], [8.0, 12.0]]]], dtype=torch.float64)
    normal = torch.distributions.Normal(7.3, 2.5)
    exact = torch.log(normal.cdf(v + 1) - normal.cdf(v)).sum()
    torch.manual_seed(0)
    q = pf.testing.perturb(FlowDequantizer((1, 2, 2), levels, couplings=2, hidden_channels=8,
                                           context_channels=4).double(), scale=0.3)
    x = v + 0.5
    for dequantizer in (q, UniformDequantizer()):
        model = VariationalDequantization(flow, dequantizer, levels).eval()
        with torch.no_grad():
            elbo = model.elbo(x, samples=4000).mean()
        assert elbo < exact - 1e-3  # a strict bound for a q that is not p(v + u) / P(v)
    # with uniform proposals the weights p(v + u) are bounded: K samples converge fast
    with torch.no_grad():
        iw = model.importance_weighted(x, samples=20000)[0]
    assert iw == pytest.approx(exact.item(), abs=0.01) and iw > elbo


def test_the_flow_dequantizer_is_a_density_on_the_unit_square():
    torch.manual_seed(0)
    q = pf.testing.perturb(FlowDequantizer((1, 1, 2), 17, couplings=3, hidden_channels=8, context_channels=4).double(),
                           scale=0.3)
    v = torch.tensor([[[4.0, 9.0]]], dtype=torch.float64)
    u, log_q = q(v, samples=3)
    assert u.shape == (3, 1, 1, 2) and log_q.shape == (3,)
    assert ((u > 0) & (u < 1)).all()
    # log q(u | v) on a midpoint grid of (0, 1)^2 through the inverse: it integrates to 1
    n = 400
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 1, 1, 2)
    assert q.squeeze is None  # odd height: checkerboard couplings at full resolution
    with torch.no_grad():
        h = q.context(v).expand(len(grid), 4, 1, 2)
        eps, ladj = q.transform.inverse(grid, h)
        mass = torch.exp(q.base.log_prob(eps) + ladj).sum() / n**2
        # the forward map, which sampling uses, goes back to the grid with the opposite ladj
        u, ladj_forward = q.transform(eps, h)
    torch.testing.assert_close(u, grid)
    torch.testing.assert_close(ladj_forward, -ladj)
    assert mass.item() == pytest.approx(1.0, abs=0.01)


def test_the_importance_weighted_estimate_is_on_average_at_least_the_bound():
    torch.manual_seed(0)
    flow = small_glow()
    q = pf.testing.perturb(FlowDequantizer((1, 4, 4), 17, couplings=2, hidden_channels=8, context_channels=4).double(),
                           scale=0.3)
    model = VariationalDequantization(flow, q, 17).eval()
    x = pixels_plus_noise(n=4)
    with torch.no_grad():
        elbo = model.elbo(x, samples=400)  # (400, 4)
        iw = torch.stack([model.importance_weighted(x, samples=8) for _ in range(50)])  # (50, 4)
    gap = iw.mean(0) - elbo.mean(0)
    stderr = (iw.var(0) / 50 + elbo.var(0) / 400).sqrt()
    assert (gap > 3 * stderr).all()
    torch.manual_seed(5)
    one = model.importance_weighted(x, samples=1)
    torch.manual_seed(5)
    torch.testing.assert_close(one, model.log_prob(x))


def test_the_squeezed_flow_dequantizer_is_exact_given_its_image_context():
    torch.manual_seed(0)
    q = pf.testing.perturb(FlowDequantizer((3, 4, 2), 256, couplings=3, hidden_channels=8,
                                           context_channels=5).double(), scale=0.1)
    assert q.squeeze is not None and q.base.event_shape == (12, 2, 1)
    v = torch.randint(0, 256, (2, 3, 4, 2)).double()
    h = q.context(v)
    assert h.shape == (2, 5, 2, 1)
    eps = torch.randn(2, 12, 2, 1, dtype=torch.float64)
    pf.testing.check_round_trip(q.transform, eps, h)
    pf.testing.check_ladj(q.transform, eps, h)
    u, log_q = q(v, samples=4)
    assert u.shape == (4, 2, 3, 4, 2) and log_q.shape == (4, 2) and ((u > 0) & (u < 1)).all()


def test_fit_trains_the_flow_and_the_dequantizer_and_improves_the_bound():
    torch.manual_seed(0)
    data = pf.data.digits(images=True)
    model = dequantized(pf.Glow((1, 8, 8), levels=1, steps=1, hidden_channels=8, pixel_levels=17), "variational", 17)
    before = {k: v.clone() for k, v in model.dequantizer.state_dict().items()}
    start = pf.evaluate(model, data.valid).mean
    result = pf.fit(model, data.train[:512], data.valid, epochs=3, batch_size=64, lr=3e-3, progress=False)
    assert result.best_valid > start + 10
    changed = [k for k, v in model.dequantizer.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("features") for k in changed) and any(k.startswith("transform") for k in changed)
    iw = importance_weighted_log_likelihoods(model, data.test[:50], samples=4, batch_size=40)
    assert iw.shape == (50,) and torch.isfinite(iw).all()


def test_sample_encode_and_decode_are_those_of_the_model():
    flow = small_glow()
    model = dequantized(flow, "variational", 17).double()
    x = pixels_plus_noise(n=3)
    assert torch.equal(model.encode(x), flow.encode(x))
    torch.manual_seed(0)
    a = model.sample((2,), temperature=0.5)
    torch.manual_seed(0)
    assert torch.equal(a, flow.sample((2,), temperature=0.5))


def test_errors():
    flow = small_glow()
    model = dequantized(flow, "variational", 17).double()
    with pytest.raises(ValueError, match=r"outside the pixel range \[0, 17\)"):
        model.log_prob(pixels_plus_noise() + 17)
    with pytest.raises(ValueError, match="unknown dequantization"):
        dequantized(flow, "gaussian", 17)
    with pytest.raises(ValueError, match="needs an image flow"):
        dequantized(pf.MAF(3), "variational", 17)
    assert dequantized(flow, "uniform", 17) is flow
    with pytest.raises(ValueError, match="samples"):
        model.elbo(pixels_plus_noise(), samples=0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        FlowDequantizer((4, 4))
