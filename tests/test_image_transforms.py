"""Family checks of the image transforms beyond the registry contract: squeeze and factor-out
are exact permutations of the pixels, couplings keep their conditioning part, ActNorm
initialises per channel."""

import pytest
import torch

from pushforward.core import Chain, Inverse
from pushforward.testing import perturb
from pushforward.transforms import ActNorm, AffineMap
from pushforward.transforms.coupling import ImageCoupling, checkerboard
from pushforward.transforms.multiscale import MultiScale
from pushforward.transforms.reshape import Squeeze


def test_squeeze_moves_each_2x2_block_into_the_channels():
    z = torch.arange(2 * 4 * 6.0).reshape(1, 2, 4, 6)
    x, ladj = Squeeze()(z)
    assert x.shape == (1, 8, 2, 3) and ladj.shape == (1,) and not ladj.any()
    for c in range(2):
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(x[0, 4 * c + 2 * i + j], z[0, c, i::2, j::2])
    assert sorted(x.flatten().tolist()) == z.flatten().tolist()


def test_squeeze_refuses_odd_sizes_and_non_images():
    with pytest.raises(ValueError, match="divisible by 2"):
        Squeeze()(torch.randn(3, 1, 5, 4))
    with pytest.raises(ValueError, match="not divisible by 4"):
        Squeeze().inverse(torch.randn(3, 6, 2, 2))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        Squeeze()(torch.randn(3, 4))
    assert Inverse(Squeeze()).forward_shape((8, 2, 3)) == (2, 4, 6)


@pytest.mark.parametrize("mask,parity", [("channel", 0), ("channel", 1), ("checkerboard", 0), ("checkerboard", 1)])
def test_image_coupling_keeps_its_conditioning_part(mask, parity):
    t = perturb(ImageCoupling(3, AffineMap(), mask, parity, hidden_channels=4))
    z = torch.randn(2, 3, 4, 4)
    x, _ = t(z)
    if mask == "channel":
        kept = slice(0, 1) if parity == 0 else slice(1, 3)
        torch.testing.assert_close(x[:, kept], z[:, kept])
        assert not torch.allclose(x, z)
    else:
        b = checkerboard(4, 4, parity)
        torch.testing.assert_close(x[..., ~b], z[..., ~b])
        assert not torch.allclose(x[..., b], z[..., b])


def test_image_coupling_starts_at_the_identity_and_checks_its_arguments():
    z = torch.randn(2, 4, 4, 4)
    x, ladj = ImageCoupling(4, AffineMap(), hidden_channels=8)(z)
    torch.testing.assert_close(x, z)
    assert not ladj.any()
    with pytest.raises(ValueError, match="unknown mask"):
        ImageCoupling(4, AffineMap(), "stripes")
    with pytest.raises(ValueError, match="at least 2 channels"):
        ImageCoupling(1, AffineMap())
    with pytest.raises(ValueError, match="needs a context"):
        ImageCoupling(4, AffineMap(), context_features=2, hidden_channels=4)(z)


def test_factor_out_passes_the_factored_channels_through_the_prior_only():
    inner = perturb(ImageCoupling(2, AffineMap(), "checkerboard", 0, hidden_channels=4))
    flow = MultiScale(inner, 2)
    z = torch.randn(3, 4, 4, 4)
    x, ladj = flow(z)
    torch.testing.assert_close(x[:, 2:], z[:, 2:])
    x_1, ladj_1 = inner(z[:, :2])
    torch.testing.assert_close(x[:, :2], x_1)
    torch.testing.assert_close(ladj, ladj_1)
    with pytest.raises(ValueError, match="nothing to factor out"):
        flow(torch.randn(3, 2, 4, 4))


def test_actnorm_on_images_normalises_each_channel_at_its_first_batch():
    x = torch.randn(64, 3, 5, 5) * torch.tensor([1.0, 3.0, 0.5])[:, None, None] + torch.tensor([2.0, -1.0, 0.0])[:, None, None]
    t = ActNorm(3, event_dims=3).train()
    z, ladj = t.inverse(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(ladj, torch.full((64,), -25 * t.log_scale.sum().item()))
    with pytest.raises(ValueError, match="event_dims"):
        ActNorm(3, event_dims=2)


def test_a_chain_of_image_transforms_composes_their_shapes():
    chain = Chain(Squeeze(), ImageCoupling(8, AffineMap(), hidden_channels=4), Inverse(Squeeze()))
    assert chain.forward_shape((2, 4, 4)) == (2, 4, 4)
    assert Squeeze().forward_shape((2, 4, 4)) == (8, 2, 2)


@pytest.mark.parametrize("blocks", [0, 1])
def test_conv_net_in_channels_last_layout_computes_what_the_plain_layers_compute(blocks):
    # ConvNet runs its layers on channels-last copies and hands the gradient back in that
    # layout: values and gradients (input and weights) must be those of the layers on NCHW.
    from pushforward.nn.convnet import ConvNet

    torch.manual_seed(0)
    net = ConvNet(3, 4, hidden_channels=8, blocks=blocks).double()
    torch.nn.init.normal_(net.net[-1].weight)
    u = torch.randn(2, 5, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 5, 4, 6, 6, dtype=torch.float64)
    outputs = [net(u), net.net(u.reshape(10, 3, 6, 6)).reshape(2, 5, 4, 6, 6)]
    torch.testing.assert_close(outputs[0], outputs[1])
    assert outputs[0].shape == (2, 5, 4, 6, 6)
    grads = [torch.autograd.grad((y * weight).sum(), [u, *net.parameters()]) for y in outputs]
    for ours, plain in zip(*grads):
        torch.testing.assert_close(ours, plain)
