"""The latent space of flows (pf.latent): exact encode/decode for every preset, interpolation,
slerp, attribute directions, manipulation, temperature of vector flows and of the factored-out
levels of multi-scale flows, and the library's errors."""

import math

import pytest
import torch

from pushforward import latent, testing
from pushforward.flows import IMAGE_PRESETS, PRESETS, preset_options
from pushforward.transforms.reshape import Squeeze

SMALL = {"hidden_features": (16,), "transforms": 2, "levels": 2, "steps": 1, "hidden_channels": 8, "blocks": 1,
         "rtol": 1e-9, "atol": 1e-9}  # the ODE solver of ffjord, tight for an exact round trip


def build(name, shape):
    options = {k: v for k, v in SMALL.items() if k in preset_options(name)}
    presets = {**PRESETS, **IMAGE_PRESETS}
    return testing.perturb(presets[name](shape, **options).double(), scale=0.1).eval()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_encode_decode_round_trip_of_every_vector_preset(name):
    flow = build(name, 3)
    x = 0.5 * torch.randn(5, 3, dtype=torch.float64)
    z = flow.encode(x)
    assert z.shape == (5, 3)
    torch.testing.assert_close(flow.decode(z), x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(IMAGE_PRESETS))
def test_encode_decode_round_trip_of_every_image_preset_keeps_every_level(name):
    flow = build(name, (1, 8, 8))
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 256
    z = flow.encode(x)
    assert z.shape == (3, 1, 8, 8)  # the factored-out halves are in the one latent tensor
    torch.testing.assert_close(flow.decode(z), x, atol=1e-8, rtol=1e-10)
    # every latent element matters: changing the factored-out part of the first level changes x
    moved = Squeeze()(z)[0]
    moved[:, 2:] += 1.0
    assert (flow.decode(Squeeze().inverse(moved)[0]) - x).abs().amax((1, 2, 3)).min() > 1e-3


def test_temperature_scales_the_latent_of_vector_samples():
    flow = build("maf", 4)
    torch.manual_seed(0)
    z = flow.encode(flow.sample((4000,), temperature=0.5))
    assert z.std().item() == pytest.approx(0.5, rel=0.05)
    assert z.mean().abs().item() < 0.03


@pytest.mark.parametrize("name", sorted(IMAGE_PRESETS))
def test_temperature_holds_for_the_factored_out_levels(name):
    flow = build(name, (1, 8, 8))
    torch.manual_seed(0)
    for temperature in (0.3, 1.0):
        z = flow.encode(flow.sample((500,), temperature=temperature))
        level = Squeeze()(z)[0]  # (4, 4, 4): the first 2 channels went on, the last 2 left the flow
        factored, kept = level[:, 2:], level[:, :2]
        assert factored.std().item() == pytest.approx(temperature, rel=0.05)
        assert kept.std().item() == pytest.approx(temperature, rel=0.05)


def test_linear_path_has_exact_ends_and_equal_steps():
    z_a, z_b = torch.randn(2, 5, dtype=torch.float64)
    path = latent.latent_path(z_a, z_b, 5)
    assert torch.equal(path[0], z_a) and torch.equal(path[-1], z_b)
    torch.testing.assert_close(path[2], (z_a + z_b) / 2)


def test_slerp_keeps_the_norm_and_the_ends():
    torch.manual_seed(1)
    z_a, z_b = torch.randn(2, 3, 50, dtype=torch.float64)
    z_b = z_b / z_b.norm(dim=-1, keepdim=True) * z_a.norm(dim=-1, keepdim=True)
    path = latent.slerp(z_a, z_b, torch.linspace(0, 1, 7))
    assert path.shape == (7, 3, 50)
    torch.testing.assert_close(path.norm(dim=-1), z_a.norm(dim=-1).expand(7, 3))
    assert torch.equal(path[0], z_a) and torch.equal(path[-1], z_b)
    # the linear midpoint of two typical codes is shorter: the reason for slerp
    assert ((z_a + z_b) / 2).norm(dim=-1).max() < 0.9 * z_a.norm(dim=-1).min()


def test_slerp_interpolates_unequal_norms_linearly_and_stays_on_the_great_circle():
    z_a = torch.tensor([2.0, 0.0], dtype=torch.float64)
    z_b = torch.tensor([0.0, 4.0], dtype=torch.float64)
    mid = latent.slerp(z_a, z_b, torch.tensor([0.5]))[0]
    torch.testing.assert_close(mid, 3.0 * torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2))
    parallel = latent.slerp(z_a, 3 * z_a, torch.tensor([0.5]))[0]
    torch.testing.assert_close(parallel, 2 * z_a)
    opposite = latent.slerp(z_a, -z_a, torch.tensor([0.25]))[0]
    torch.testing.assert_close(opposite, z_a / 2)


def test_slerp_over_image_codes():
    z_a, z_b = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    z_b = z_b * z_a.norm() / z_b.norm()
    path = latent.latent_path(z_a, z_b, 4, "slerp", event_dims=3)
    torch.testing.assert_close(path.flatten(1).norm(dim=1), z_a.norm().expand(4))


def test_interpolate_decodes_the_path_from_one_example_to_the_other():
    flow = build("glow", (1, 8, 8))
    x_a, x_b = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 256
    for method in ("linear", "slerp"):
        strip = latent.interpolate(flow, x_a, x_b, 6, method)
        assert strip.shape == (6, 1, 8, 8)
        torch.testing.assert_close(strip[0], x_a)
        torch.testing.assert_close(strip[-1], x_b)
        assert (strip[2] - x_a).abs().max() > 1 and (strip[2] - x_b).abs().max() > 1
    z_a, z_b = flow.encode(torch.stack([x_a, x_b]))
    torch.testing.assert_close(latent.interpolate(flow, x_a, x_b, 3)[1], flow.decode((z_a + z_b) / 2))


def test_attribute_direction_of_two_clusters_points_from_one_to_the_other():
    flow = build("realnvp", 4)
    torch.manual_seed(2)
    centre_a, centre_b = torch.tensor([2.0, 0, 0, 1], dtype=torch.float64), torch.tensor([-1.0, 1, 0, 0], dtype=torch.float64)
    positive = centre_a + 0.05 * torch.randn(300, 4, dtype=torch.float64)
    negative = centre_b + 0.05 * torch.randn(200, 4, dtype=torch.float64)
    direction = latent.attribute_direction(flow, positive, negative, batch_size=64)
    z_a, z_b = flow.encode(centre_a[None])[0], flow.encode(centre_b[None])[0]
    cosine = torch.dot(direction, z_a - z_b) / (direction.norm() * (z_a - z_b).norm())
    assert cosine > 0.99
    # moving the negative centre by the whole direction lands near the positive centre
    moved = latent.manipulate(flow, centre_b[None], direction, [0.0, 1.0])
    assert moved.shape == (1, 2, 4)
    torch.testing.assert_close(moved[0, 0], centre_b)
    assert (moved[0, 1] - centre_a).norm() < 0.1 * (centre_a - centre_b).norm()


def test_attribute_direction_of_identical_sets_is_zero_and_alpha_zero_is_identity():
    flow = build("glow", (1, 8, 8))
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 256
    assert latent.attribute_direction(flow, x, x).abs().max() < 1e-9
    out = latent.manipulate(flow, x[:2], torch.randn(1, 8, 8, dtype=torch.float64), [-1, 0, 2])
    assert out.shape == (2, 3, 1, 8, 8)
    torch.testing.assert_close(out[:, 1], x[:2])


@pytest.mark.parametrize("call,message", [
    (lambda f, x: latent.attribute_direction(f, x[:0], x), "positive set is empty"),
    (lambda f, x: latent.attribute_direction(f, x, x[:0]), "negative set is empty"),
    (lambda f, x: latent.attribute_direction(f, x[:, :, :4, :4], x), r"expected \(\*batch, 1, 8, 8\)"),
    (lambda f, x: latent.attribute_direction(f, x, x, batch_size=0), "batch_size"),
    (lambda f, x: latent.manipulate(f, x, torch.zeros(1, 4, 4, dtype=torch.float64), [1.0]), "direction"),
    (lambda f, x: latent.manipulate(f, x, torch.zeros(1, 8, 8, dtype=torch.float64), []), "alphas"),
    (lambda f, x: latent.manipulate(f, x, torch.zeros(1, 8, 8, dtype=torch.float64), [math.nan]), "alphas"),
    (lambda f, x: latent.interpolate(f, x[0], x[1], 1), "steps"),
    (lambda f, x: latent.interpolate(f, x[0], x[1], 4, "cubic"), "unknown interpolation method"),
    (lambda f, x: latent.interpolate(f, x[:2], x[1], 4), "one example"),
])
def test_bad_input_is_a_one_line_value_error(call, message):
    flow = build("glow", (1, 8, 8))
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 256
    with pytest.raises(ValueError, match=message) as error:
        call(flow, x)
    assert "\n" not in str(error.value)


def test_slerp_refuses_codes_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        latent.slerp(torch.zeros(3), torch.zeros(4), torch.tensor([0.5]))
