"""Base distributions beyond the standard normal: the Gaussian mixture (its density is the
mixture formula, its samples follow it) and the box base (a sigmoid front onto (0, 1)^D), each
usable by every preset; and every preset following the default dtype and device."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

import pushforward as pf
from pushforward.distributions import GaussianMixture, preset_base
from pushforward.flows import IMAGE_PRESETS, PRESETS, preset_options

SMALL = {"transforms": 2, "hidden_features": (8,), "bins": 4, "hidden_channels": 4, "levels": 1, "steps": 1,
         "blocks": 1}


def build(name, size=3, **extra):
    presets = {**PRESETS, **IMAGE_PRESETS}
    options = {k: v for k, v in {**SMALL, **extra}.items() if k in preset_options(name)}
    return presets[name](size, **options)


def mixture(features=2, components=3, seed=0):
    torch.manual_seed(seed)
    base = GaussianMixture(features, components).double()
    with torch.no_grad():
        base.logits.copy_(torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)[:components])
        base.loc.mul_(2.0)
        base.log_scale.uniform_(-0.7, 0.3)
    return base


def reference(base):
    """The same mixture written with torch.distributions."""
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=base.logits),
        torch.distributions.Independent(torch.distributions.Normal(base.loc, base.log_scale.exp()), 1))


def test_mixture_log_prob_is_the_mixture_formula():
    base = mixture()
    z = torch.randn(4, 5, 2, dtype=torch.float64) * 2
    expected = torch.tensor([math.log(sum(
        math.exp(base.logits.log_softmax(-1)[k]) * math.prod(
            stats.norm.pdf(float(p[i]), float(base.loc[k, i]), float(base.log_scale[k, i].exp())) for i in range(2))
        for k in range(3))) for p in z.reshape(-1, 2)], dtype=torch.float64).reshape(4, 5)
    torch.testing.assert_close(base.log_prob(z).detach(), expected)
    torch.testing.assert_close(base.log_prob(z), reference(base).log_prob(z))


def test_mixture_samples_follow_the_mixture_two_sample_test():
    base = mixture()
    torch.manual_seed(1)
    ours = base.sample((3000,))
    theirs = reference(base).sample((3000,))
    assert ours.shape == (3000, 2)
    for direction in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.6, 0.8])):
        d = direction.double()
        assert stats.ks_2samp((ours @ d).numpy(), (theirs @ d).numpy()).pvalue > 1e-3


def test_two_sample_test_detects_wrong_weights():
    base, other = mixture(), mixture()
    with torch.no_grad():
        other.logits.copy_(torch.tensor([-3.0, 2.0, -3.0]))
    torch.manual_seed(1)
    ours = base.sample((3000,))[:, 0]
    theirs = reference(other).sample((3000,))[:, 0]
    assert stats.ks_2samp(ours.numpy(), theirs.detach().numpy()).pvalue < 1e-3


def test_mixture_temperature_scales_each_component_around_its_mean():
    base = mixture(components=1)
    torch.manual_seed(3)
    plain = base.sample((500,))
    torch.manual_seed(3)
    cold = base.sample((500,), temperature=0.5)
    torch.testing.assert_close(cold - base.loc[0], 0.5 * (plain - base.loc[0]))


def test_mixture_learns_weights_means_and_scales():
    base = GaussianMixture(1, 2)
    for p in (base.logits, base.loc, base.log_scale):
        p.grad = None
    (-base.log_prob(torch.randn(64, 1)).mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (base.logits, base.loc, base.log_scale))
    with pytest.raises(ValueError, match="at least one component"):
        GaussianMixture(2, 0)


def test_unknown_base_is_refused():
    with pytest.raises(ValueError, match="unknown base 'cauchy'"):
        pf.MAF(2, base="cauchy")
    module = pf.DiagNormal(2)
    assert preset_base(module, 2, pf.Chain())[0] is module


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("base", ["mixture", "box"])
def test_every_preset_takes_each_base(name, base):
    torch.manual_seed(0)
    flow = build(name, 2, base=base).double().eval()
    x = flow.sample((20,))
    assert x.shape == (20, 2)
    log_p = flow.log_prob(x.detach())
    assert torch.isfinite(log_p).all()
    if base == "box":
        assert ((x > 0) & (x < 1)).all()
        with pytest.raises(ValueError, match=r"outside the open interval \(0, 1\)"):
            flow.log_prob(torch.full((1, 2), 1.5, dtype=torch.float64))
    else:
        assert isinstance(flow.base, GaussianMixture)


def test_box_density_integrates_to_one_on_the_unit_interval():
    torch.manual_seed(0)
    flow = pf.testing.perturb(pf.MAF(1, transforms=2, hidden_features=(8,), base="box")).double().eval()
    grid = torch.linspace(0, 1, 200_001, dtype=torch.float64)[1:-1, None]
    density = flow.log_prob(grid).exp()
    assert abs(float(torch.trapezoid(density, grid[:, 0])) - 1) < 1e-3


@pytest.mark.parametrize("name", sorted(IMAGE_PRESETS))
def test_image_presets_take_a_mixture_base_and_refuse_a_box_over_pixels(name):
    flow = build(name, (1, 4, 4), base="mixture").eval()
    assert torch.isfinite(flow.log_prob(torch.rand(2, 1, 4, 4) * 255)).all()
    with pytest.raises(ValueError, match="pixel_levels=None"):
        build(name, (1, 4, 4), base="box")
    assert build(name, (1, 4, 4), base="box", pixel_levels=None).sample((2,)).shape == (2, 1, 4, 4)


# --- dtype and device ----------------------------------------------------------------------

def loose_tensors(module: nn.Module) -> list[str]:
    """Tensors a module holds as plain attributes, which .to() would not move."""
    return [f"{type(m).__name__}.{k}" for m in module.modules() for k, v in vars(m).items()
            if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", sorted({**PRESETS, **IMAGE_PRESETS}))
def test_every_preset_follows_the_default_dtype_and_device_and_moves(name):
    size = (1, 4, 4) if name in IMAGE_PRESETS else 3
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        flow = build(name, size, context_features=2, base="mixture").eval()
    finally:
        torch.set_default_dtype(previous)
    assert {t.dtype for t in [*flow.parameters(), *flow.buffers()] if t.is_floating_point()} == {torch.float64}
    assert loose_tensors(flow) == []
    flow = flow.to(torch.float32)
    x = flow.sample((3,), torch.randn(2))
    assert x.dtype == torch.float32
    assert flow.log_prob(x, torch.randn(3, 2)).dtype == torch.float32
    flow.to("meta")
    assert {t.device.type for t in [*flow.parameters(), *flow.buffers()]} == {"meta"}
