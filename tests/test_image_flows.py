"""The image presets Glow, Real NVP (multi-scale) and Residual Flow as flows: exact round trips and ladj of the
whole preset, the pixel-space accounting (bits/dim), sampling, context, errors."""

import math

import pytest
import torch

import pushforward as pf
from pushforward import testing

SMALL = {
    "glow": lambda shape, c=0, **kw: pf.Glow(shape, c, levels=2, steps=2, hidden_channels=8, **kw),
    "realnvp-image": lambda shape, c=0, **kw: pf.RealNVPImage(shape, c, levels=2, hidden_channels=8, blocks=1, **kw),
    "residual-image": lambda shape, c=0, **kw: pf.ResidualFlowImage(shape, c, levels=2, blocks=1, hidden_channels=8,
                                                                     **kw),
}


def build(name, shape=(1, 4, 4), context_features=0, **kwargs):
    torch.manual_seed(0)
    flow = SMALL[name](shape, context_features, **kwargs).double()
    return testing.perturb(flow, scale=0.1).eval()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("context_features", [0, 2])
def test_the_whole_preset_is_exact(name, context_features):
    flow = build(name, context_features=context_features, pixel_levels=None)
    z = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    c = torch.randn(2, context_features, dtype=torch.float64) if context_features else None
    testing.check_round_trip(flow.transform, z, c)
    testing.check_ladj(flow.transform, z, c)


@pytest.mark.parametrize("convolution", ["1x1", "emerging", "periodic"])
def test_glow_takes_each_invertible_convolution(convolution):
    torch.manual_seed(0)
    flow = pf.Glow((1, 6, 6), levels=1, steps=2, hidden_channels=8, additive=True, convolution=convolution,
                   pixel_levels=None)
    flow = testing.perturb(flow.double(), scale=0.1).eval()
    z = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    testing.check_round_trip(flow.transform, z)
    testing.check_ladj(flow.transform, z)


def test_glow_at_initialisation_gives_the_analytic_bits_per_dim_of_uniform_noise():
    # At initialisation (eval mode: ActNorm not yet fitted; zero conditioners, additive couplings
    # and split priors the identity; LU-1x1 a rotation) Glow is x = 256 (R u + 1/2) for rotations
    # R of the channels, so for pixels uniform on [0, 256)
    # E[-log p(x)] / D = 1/2 log(2 pi) + E[u^2] / 2 + log 256 with u ~ U[-1/2, 1/2): E[u^2] = 1/12.
    flow = pf.Glow((1, 8, 8), levels=2, steps=2, hidden_channels=8, additive=True).eval()
    torch.manual_seed(1)
    x = torch.rand(20000, 1, 8, 8) * 256
    with torch.no_grad():
        bits = -flow.log_prob(x).mean().item() / (64 * math.log(2))
    expected = (0.5 * math.log(2 * math.pi) + 1 / 24 + math.log(256)) / math.log(2)
    assert bits == pytest.approx(expected, abs=2e-3)


@pytest.mark.parametrize("name", SMALL)
def test_samples_lie_in_the_pixel_range_and_follow_the_temperature(name):
    flow = build(name, shape=(3, 8, 8)).float()
    torch.manual_seed(0)
    cold = flow.sample((50,), temperature=0.1)
    assert cold.shape == (50, 3, 8, 8) and torch.isfinite(cold).all()
    torch.manual_seed(0)
    warm = flow.sample((50,))
    assert cold.std(0).mean() < warm.std(0).mean()
    x = torch.rand(4, 3, 8, 8) * 256
    torch.testing.assert_close(flow.decode(flow.encode(x)), x, atol=1e-2, rtol=1e-4)


def test_image_presets_refuse_shapes_they_cannot_halve():
    with pytest.raises(ValueError, match="divisible by 4"):
        pf.Glow((1, 6, 6), levels=2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        pf.Glow((64,))
    with pytest.raises(ValueError, match="unknown convolution"):
        pf.Glow((1, 4, 4), levels=1, convolution="fancy")
    with pytest.raises(ValueError, match="unknown split prior"):
        pf.Glow((1, 4, 4), levels=1, split_prior="fancy")
    with pytest.raises(ValueError, match="divisible by 4"):
        pf.RealNVPImage((1, 6, 6), levels=3)
    with pytest.raises(ValueError, match="divisible by 2"):
        pf.ResidualFlowImage((1, 5, 6), levels=2)


def test_image_flows_train_downhill():
    x = torch.rand(64, 1, 8, 8) * 256
    flow = pf.Glow((1, 8, 8), levels=2, steps=2, hidden_channels=16)
    result = pf.fit(flow, x[:48], x[48:], epochs=3, batch_size=16, progress=False, verbose=False)
    history = [h["train_loss"] for h in result.history]
    assert history[-1] < history[0]


def test_glow_takes_a_per_channel_split_prior_that_starts_at_the_identity():
    flow = pf.Glow((1, 8, 8), levels=2, steps=1, hidden_channels=8, split_prior="channel")
    priors = [m for m in flow.modules() if isinstance(m, pf.transforms.ChannelGaussianPrior)]
    assert [(p.channels, p.keep) for p in priors] == [(4, 2)]
    z = torch.randn(3, 4, 4, 4)
    x, ladj = priors[0](z)
    torch.testing.assert_close(x, z)
    assert not ladj.any()
    with torch.no_grad():
        priors[0].raw.normal_()
    x, ladj = priors[0](z)
    torch.testing.assert_close(x[:, :2], z[:, :2])  # the channels that go on pass unchanged
    assert not torch.allclose(x[:, 2:], z[:, 2:]) and ladj.abs().min() > 0
    assert flow.sample((2,)).shape == (2, 1, 8, 8)
    assert torch.isfinite(flow.log_prob(torch.rand(2, 1, 8, 8) * 256)).all()
    with pytest.raises(ValueError, match=r"\(\*batch, 4, H, W\)"):
        priors[0](torch.randn(3, 3, 4, 4))
    with pytest.raises(ValueError, match="keep must lie"):
        pf.transforms.ChannelGaussianPrior(4, 4)
