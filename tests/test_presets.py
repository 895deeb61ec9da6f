"""Every preset of pf.flows.PRESETS learns a 2-D toy density and round-trips through save/load."""

import io

import pytest
import torch
from sklearn.datasets import make_moons

import pushforward as pf
from pushforward.flows import PRESETS, preset_options

SMALL = {"hidden_features": (32, 32), "bins": 8}
# Gain in nats over the standard normal on standardised moons. A Householder flow is a rotated
# diagonal Gaussian, i.e. a full-covariance Gaussian, whose best gain on these data is 0.108.
MIN_GAIN = {"householder": 0.08}


def build(name, features=2, **extra):
    options = {k: v for k, v in {**SMALL, **extra}.items() if k in preset_options(name)}
    return PRESETS[name](features, **options)


@pytest.fixture(scope="module")
def moons():
    x = torch.tensor(make_moons(3000, noise=0.05, random_state=0)[0], dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    return x[:2500], x[2500:]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_learns_a_2d_toy(name, moons):
    train, valid = moons
    torch.manual_seed(0)
    flow = build(name)
    base = pf.evaluate(pf.Flow(pf.StandardNormal(2), pf.Chain()), valid).mean
    result = pf.fit(flow, train, valid, epochs=10, batch_size=128, lr=3e-3, progress=False, max_minutes=1)
    gain = MIN_GAIN.get(name, 0.3)
    assert result.best_valid > base + gain, f"{name}: {result.best_valid:.3f} vs base {base:.3f}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_state_dict_round_trip_and_repr(name):
    torch.manual_seed(0)
    flow = pf.testing.perturb(build(name, features=3), scale=0.1).eval()
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    clone = build(name, features=3).eval()
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    x = 0.5 * torch.randn(7, 3)  # within the range where the perturbed SOS flow (8 layers of degree 9) is finite in float32
    log_p = flow.log_prob(x)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(clone.log_prob(x), log_p)
    assert type(flow).__name__ in repr(flow)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_conditional_when_asked(name):
    if "context_features" not in preset_options(name):
        pytest.skip(f"{name} takes no context")
    torch.manual_seed(0)
    flow = pf.testing.perturb(build(name, features=3, context_features=2), scale=0.1).eval()
    context = torch.randn(5, 2)
    x = flow.sample((), context)
    assert x.shape == (5, 3)
    assert torch.isfinite(flow.log_prob(x, context)).all()
