"""Presets (MAF, IAF, RealNVP, NSF) as flows.

Transforms are covered by the registry contract (tests/test_transforms.py); here the flow
level: shapes, sampling against the density, normalisation of the density, the
torch.distributions view, save/load and input validation (fitting: tests/test_train.py).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import pushforward as pf
from pushforward.testing import perturb
from pushforward.transforms import ActNorm, BatchNorm

SMALL = dict(transforms=2, hidden_features=(16,))
SPLINE = dict(bins=4, bound=3.0)
BUILDERS = {
    "maf": lambda d, c, **kw: pf.MAF(d, c, **SMALL, **kw),
    "iaf": lambda d, c, **kw: pf.IAF(d, c, **SMALL, **kw),
    "realnvp": lambda d, c, **kw: pf.RealNVP(d, c, **SMALL, **kw),
    "nsf-coupling": lambda d, c, **kw: pf.NSF(d, c, **SMALL, **SPLINE, autoregressive=False, **kw),
    "nsf-autoregressive": lambda d, c, **kw: pf.NSF(d, c, **SMALL, **SPLINE, autoregressive=True, **kw),
}
PRESET_CLASSES = {"maf": pf.MAF, "iaf": pf.IAF, "realnvp": pf.RealNVP, "nsf-coupling": pf.NSF,
                  "nsf-autoregressive": pf.NSF}
NAMES = list(BUILDERS)
CONTEXT = 2


def build(name: str, features: int = 3, context_features: int = 0, seed: int = 0, scale: float = 0.3,
          **kwargs) -> pf.Flow:
    """A small preset in float64, perturbed away from the identity, in eval mode."""
    torch.manual_seed(seed)
    flow = BUILDERS[name](features, context_features, **kwargs).double()
    return perturb(flow, scale=scale, seed=seed).eval()


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


@pytest.fixture(params=[0, CONTEXT], ids=["unconditional", "context"])
def context_features(request):
    return request.param


# --- shapes and sampling -------------------------------------------------------------------

def test_shapes(name, context_features):
    flow = build(name, 3, context_features)
    for batch in [(4,), (2, 4)]:
        x = randn(*batch, 3)
        c = randn(*batch, context_features, seed=1) if context_features else None
        lp = flow.log_prob(x, c)
        assert lp.shape == batch and lp.dtype == torch.float64 and torch.isfinite(lp).all()
    if context_features:
        c = randn(4, context_features, seed=2)
        assert flow.sample((), c).shape == (4, 3)
        assert flow.sample((5,), c).shape == (5, 4, 3)
        assert flow.sample((2, 5), c).shape == (2, 5, 4, 3)
        x, lp = flow.sample_and_log_prob((5,), c)
        assert x.shape == (5, 4, 3) and lp.shape == (5, 4)
        # the samples follow their own row of the context
        c2 = torch.stack([c[0]] * 4)
        torch.manual_seed(3)
        a = flow.sample((5,), c2)
        assert not torch.allclose(a[:, 0], a[:, 1])  # different base draws, same context
    else:
        assert flow.sample().shape == (3,)
        assert flow.sample((5,)).shape == (5, 3)
        assert flow.sample((2, 5)).shape == (2, 5, 3)
        x, lp = flow.sample_and_log_prob((5,))
        assert x.shape == (5, 3) and lp.shape == (5,)
    assert torch.isfinite(x).all() and torch.isfinite(lp).all()


def test_sample_and_log_prob_agrees_with_log_prob(name, context_features):
    flow = build(name, 3, context_features)
    c = randn(4, context_features, seed=1) if context_features else None
    x, lp = flow.sample_and_log_prob((16,), c)
    assert not x.requires_grad and not lp.requires_grad
    expanded = None if c is None else c.expand(16, 4, context_features)
    torch.testing.assert_close(flow.log_prob(x, expanded), lp, atol=1e-9, rtol=1e-9)
    x2, lp2 = flow.rsample_and_log_prob((16,), c)
    torch.testing.assert_close(flow.log_prob(x2, expanded), lp2, atol=1e-9, rtol=1e-9)


def test_rsample_gives_gradients(name, context_features):
    flow = build(name, 3, context_features)
    c = randn(4, context_features, seed=1).requires_grad_() if context_features else None
    x = flow.rsample((8,), c)
    assert x.requires_grad
    x.square().sum().backward()
    grads = {n: p.grad for n, p in flow.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    if c is not None:
        assert c.grad is not None and c.grad.abs().sum() > 0
    assert not flow.sample((8,), None if c is None else c.detach()).requires_grad


def test_as_distribution(name, context_features):
    flow = build(name, 3, context_features)
    c = randn(4, context_features, seed=1) if context_features else None
    d = flow.as_distribution(c)
    assert isinstance(d, torch.distributions.Distribution)
    batch = (4,) if context_features else ()
    assert d.batch_shape == batch and d.event_shape == (3,)
    x = d.sample((5,))
    assert x.shape == (5, *batch, 3)
    lp = d.log_prob(x)
    assert lp.shape == (5, *batch) and torch.isfinite(lp).all()
    expanded = None if c is None else c.expand(5, 4, context_features)
    torch.testing.assert_close(lp, flow.log_prob(x, expanded))
    # a value with only the batch shape, and reparametrised samples
    assert d.log_prob(x[0]).shape == batch
    r = d.rsample((3,))
    assert r.shape == (3, *batch, 3) and r.requires_grad
    # the generic machinery of torch.distributions works on top of it
    assert isinstance(d.log_prob(d.sample()), torch.Tensor)


def test_repr(name, context_features):
    flow = build(name, 3, context_features)
    text = repr(flow)
    assert text.startswith(PRESET_CLASSES[name].__name__ + "(")
    layer = "Coupling" if name in ("realnvp", "nsf-coupling") else "MaskedAutoregressive"
    assert layer in text and "StandardNormal" in text
    if name.startswith("nsf"):
        assert "RQSpline(bins=4, bound=3.0" in text
    if name == "iaf":
        assert "Inverse" in text


@pytest.mark.parametrize("normalization", [None, "batch", "act"])
def test_save_and_load_state_dict(name, context_features, normalization, tmp_path):
    flow = build(name, 3, context_features, normalization=normalization)
    if normalization == "batch":
        # non-trivial running statistics, which live in buffers
        flow.train()
        flow.log_prob(randn(64, 3, seed=5) * 2 + 1, randn(64, context_features, seed=6) if context_features else None)
        flow.eval()
    path = tmp_path / "flow.pt"
    torch.save(flow.state_dict(), path)
    fresh = build(name, 3, context_features, seed=1, normalization=normalization)
    x = randn(6, 3, seed=2)
    c = randn(6, context_features, seed=3) if context_features else None
    assert not torch.allclose(fresh.log_prob(x, c), flow.log_prob(x, c))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(fresh.log_prob(x, c), flow.log_prob(x, c), atol=0, rtol=0)
    torch.manual_seed(4)
    a = flow.sample((3,), None if c is None else c[:2])
    torch.manual_seed(4)
    b = fresh.sample((3,), None if c is None else c[:2])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# --- the density against the samples -------------------------------------------------------

BOX, CELLS = 7.0, 400


def grid_density(flow: pf.Flow, context: torch.Tensor | None = None) -> torch.Tensor:
    """Density (CELLS, CELLS) at the cell midpoints of [-BOX, BOX]^2."""
    edges = torch.linspace(-BOX, BOX, CELLS + 1, dtype=torch.float64)
    mid = (edges[1:] + edges[:-1]) / 2
    x = torch.stack(torch.meshgrid(mid, mid, indexing="ij"), -1)
    c = None if context is None else context.expand(CELLS, CELLS, context.shape[-1])
    with torch.no_grad():
        return flow.log_prob(x, c).exp()


@pytest.mark.parametrize("context_features", [0, CONTEXT], ids=["unconditional", "context"])
def test_density_integrates_to_one(name, context_features):
    flow = build(name, 2, context_features, scale=0.2)
    c = randn(context_features, seed=7) if context_features else None
    p = grid_density(flow, c)
    integral = float(p.sum()) * (2 * BOX / CELLS) ** 2
    torch.manual_seed(0)
    x = flow.sample((20000,), None if c is None else c.expand(1, -1))
    outside = float((x.abs() > BOX).any(-1).double().mean())
    assert outside < 0.05, "the box does not hold the mass"
    # the grid mass plus the sampled mass outside the box; the sampling error is ~1e-3
    assert abs(integral + outside - 1) < 1e-2, (integral, outside)
    if name in ("maf", "nsf-coupling", "nsf-autoregressive"):
        assert outside < 1e-3 and abs(integral - 1) < 1e-2, (integral, outside)


def test_density_integrates_to_one_and_not_to_something_else():
    """The integration check above is discriminating: a log_prob off by 0.05 nats fails it."""
    flow = build("maf", 2, scale=0.2)
    p = grid_density(flow) * math.exp(0.05)
    integral = float(p.sum()) * (2 * BOX / CELLS) ** 2
    assert abs(integral - 1) > 1e-2


@pytest.mark.parametrize("context_features", [0, CONTEXT], ids=["unconditional", "context"])
def test_samples_follow_the_density_chi_square(name, context_features):
    """Histogram of samples on 20 x 20 cells against the grid-integrated density of each cell."""
    flow = build(name, 2, context_features, scale=0.2)
    c = randn(context_features, seed=7) if context_features else None
    p = grid_density(flow, c) * (2 * BOX / CELLS) ** 2
    coarse = CELLS // 20
    expected_p = p.reshape(20, coarse, 20, coarse).sum((1, 3)).flatten()
    n = 20000
    torch.manual_seed(1)
    x = flow.sample((n,), None if c is None else c.expand(1, -1)).reshape(n, 2)
    inside = (x.abs() < BOX).all(-1)
    idx = ((x[inside] + BOX) / (2 * BOX) * 20).long().clamp(0, 19)
    observed = torch.bincount(idx[:, 0] * 20 + idx[:, 1], minlength=400).double()
    expected = n * expected_p
    # pool the sparse cells and the outside of the box into one bin
    keep = expected >= 5
    obs = torch.cat([observed[keep], (n - observed[keep].sum()).reshape(1)])
    exp = torch.cat([expected[keep], (n - expected[keep].sum()).reshape(1)])
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    pvalue = stats.chi2.sf(chi2, len(obs) - 1)
    assert pvalue > 1e-3, f"chi2 = {chi2:.1f} on {len(obs) - 1} dof, p = {pvalue:.2g}"


def test_chi_square_check_detects_a_wrong_sampler():
    """The check above is discriminating: samples of another flow fail it."""
    flow, other = build("maf", 2, scale=0.2), build("maf", 2, scale=0.2, seed=1)
    p = grid_density(flow) * (2 * BOX / CELLS) ** 2
    expected = 20000 * p.reshape(20, 20, 20, 20).sum((1, 3)).flatten()
    torch.manual_seed(1)
    x = other.sample((20000,))
    idx = ((x.clamp(-BOX + 1e-9, BOX - 1e-9) + BOX) / (2 * BOX) * 20).long()
    observed = torch.bincount(idx[:, 0] * 20 + idx[:, 1], minlength=400).double()
    keep = expected >= 5
    chi2 = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert stats.chi2.sf(chi2, int(keep.sum())) < 1e-6


@pytest.mark.parametrize("name", ["maf", "iaf", "nsf-autoregressive"])
def test_one_dimensional_flow_ks_test_against_the_integrated_cdf(name):
    flow = build(name, 1, scale=0.5)
    edges = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    with torch.no_grad():
        p = flow.log_prob(edges[:, None]).exp()
    steps = (p[1:] + p[:-1]) / 2 * (edges[1] - edges[0])
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])
    assert abs(float(cdf[-1]) - 1) < 1e-3
    torch.manual_seed(2)
    x = flow.sample((5000,))[:, 0].numpy()
    result = stats.kstest(x, lambda v: np.interp(v, edges.numpy(), cdf.numpy()))
    assert result.pvalue > 1e-3, result


# --- bad input -----------------------------------------------------------------------------

def test_log_prob_rejects_the_wrong_trailing_shape(name):
    flow = build(name, 3)
    for bad in [randn(4, 2), randn(4, 3, 1), torch.tensor(1.0, dtype=torch.float64), randn(4, 4)]:
        with pytest.raises(ValueError, match="shape"):
            flow.log_prob(bad)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_log_prob_rejects_non_finite_data(name, value):
    flow = build(name, 3)
    x = randn(4, 3)
    x[2, 1] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        flow.log_prob(x)


def test_conditional_flow_needs_its_context(name):
    flow = build(name, 3, CONTEXT)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(randn(4, 3))
    with pytest.raises(ValueError, match="context"):
        flow.sample((4,))
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(randn(4, 3), randn(5, CONTEXT))  # batch shapes differ
    bad = randn(4, CONTEXT)
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(randn(4, 3), bad)


@pytest.mark.parametrize("name", ["maf", "realnvp"])
def test_context_with_the_wrong_number_of_features_raises_value_error(name):
    flow = build(name, 3, CONTEXT)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(randn(4, 3), randn(4, CONTEXT + 1))


# --- construction --------------------------------------------------------------------------

@pytest.mark.parametrize("normalization", ["batch", "act", "none"])
def test_normalization_layers(name, normalization):
    flow = BUILDERS[name](3, 0, normalization=normalization).double()
    kinds = {"batch": BatchNorm, "act": ActNorm, "none": None}
    layers = [m for m in flow.modules() if isinstance(m, (BatchNorm, ActNorm))]
    if kinds[normalization] is None:
        assert not layers
    else:
        assert len(layers) == 1 and isinstance(layers[0], kinds[normalization])  # between the 2 layers
    x = randn(128, 3) * torch.tensor([3.0, 0.5, 1.0], dtype=torch.float64) + 2
    flow.train()
    lp = flow.log_prob(x)
    assert torch.isfinite(lp).all()
    lp.mean().backward()
    if normalization == "act":
        assert bool(layers[0].initialized)
    if normalization == "batch":
        assert not torch.allclose(layers[0].running_mean, torch.zeros(3, dtype=torch.float64))
    perturb(flow, seed=3)
    flow.eval()
    s, lp = flow.sample_and_log_prob((32,))
    torch.testing.assert_close(flow.log_prob(s), lp, atol=1e-9, rtol=1e-9)


def test_unknown_options_raise():
    with pytest.raises(ValueError, match="normalization"):
        pf.MAF(3, normalization="layer")
    with pytest.raises(ValueError, match="normalization"):
        pf.NSF(3, normalization="group")
    with pytest.raises(ValueError, match="masks"):
        pf.RealNVP(3, masks="checkerboard")


@pytest.mark.parametrize("make", [lambda: pf.RealNVP(1), lambda: pf.NSF(1), lambda: pf.NSF(1, autoregressive=False)],
                         ids=["realnvp", "nsf", "nsf-coupling"])
def test_coupling_with_one_feature_raises(make):
    with pytest.raises(ValueError, match="2 features"):
        make()


def test_random_masks_and_single_feature_autoregressive_flows():
    flow = perturb(pf.RealNVP(4, masks="random", **SMALL).double()).eval()
    x, lp = flow.sample_and_log_prob((10,))
    torch.testing.assert_close(flow.log_prob(x), lp)
    for one in (pf.MAF(1, **SMALL), pf.IAF(1, **SMALL), pf.NSF(1, autoregressive=True, **SMALL)):
        one = perturb(one.double()).eval()
        x, lp = one.sample_and_log_prob((10,))
        assert x.shape == (10, 1)
        torch.testing.assert_close(one.log_prob(x), lp)


def test_presets_start_at_the_standard_normal(name):
    flow = BUILDERS[name](3, CONTEXT).double().eval()
    x, c = randn(5, 3), randn(5, CONTEXT, seed=1)
    torch.testing.assert_close(flow.log_prob(x, c), pf.StandardNormal(3).double().log_prob(x))



@pytest.mark.parametrize("features", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("split", ["even", "odd", "upper-half", "lower-half", "ends", "thirds"])
def test_coupling_keeps_its_conditioning_part_and_maps_the_other_in_place(features, split):
    """x_a = z_a and x_b = f(z_b; h(z_a)) at the mask's own positions, for the splits that
    select by slices and merge out of place (halves, even/odd) and for those that gather."""
    from pushforward.transforms import AffineMap, Coupling

    index = torch.arange(features)
    mask = {"even": index % 2 == 0, "odd": index % 2 == 1, "upper-half": index >= features // 2,
            "lower-half": index < (features + 1) // 2, "ends": (index == 0) | (index == features - 1),
            "thirds": index % 3 == 1}[split]
    if mask.all() or not mask.any():
        pytest.skip("the split selects every feature or none")
    layer = perturb(Coupling(mask, AffineMap(), hidden_features=(8,)).double())
    z = torch.randn(6, features, dtype=torch.double)
    for direction, apply in (("forward", layer.map.forward), ("inverse", layer.map.inverse)):
        x, ladj = getattr(layer, direction)(z)
        h = layer.conditioner(z[:, ~mask]).unflatten(-1, (int(mask.sum()), 2))
        x_b, ladj_b = apply(z[:, mask], h)
        assert torch.equal(x[:, ~mask], z[:, ~mask])
        torch.testing.assert_close(x[:, mask], x_b, rtol=0, atol=0)
        torch.testing.assert_close(ladj, ladj_b.sum(-1))
