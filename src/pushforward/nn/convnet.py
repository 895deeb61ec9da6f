"""Convolutional conditioner of image flows: Glow's three-layer network, or a ResNet."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import on_images
from .mlp import check_context

__all__ = ["ConvNet", "cat_context_channels"]


def cat_context_channels(u: Tensor, context: Tensor | None, context_features: int, owner: str) -> Tensor:
    """Append the context to an image: a vector context (*batch, context_features) as constant
    channels, an image context (*batch, context_features, H, W) (features of another image, e.g.
    the pixels that condition a dequantizer) as it is: (*batch, C, H, W) ->
    (*batch, C + context_features, H, W).

    Raises:
        ValueError: if ``owner`` was built with context_features > 0 and no context (or one of
            another size) is given, or for an image context of another height and width.
    """
    if not context_features:
        return u
    if context is not None and context.dim() == u.dim():
        if context.shape[-3] != context_features or context.shape[-2:] != u.shape[-2:]:
            raise ValueError(f"{owner} expects an image context of shape (*batch, {context_features}, "
                             f"{u.shape[-2]}, {u.shape[-1]}), got {tuple(context.shape)}")
        return torch.cat([u, context], dim=-3)
    check_context(context, context_features, owner)
    planes = context[..., :, None, None].expand(*u.shape[:-3], context_features, *u.shape[-2:])
    return torch.cat([u, planes], dim=-3)


class _ChannelsLastGradient(torch.autograd.Function):
    """The identity, whose backward hands the gradient on in channels-last layout: the gradient
    that reaches a network's output is NCHW-strided (from the element-wise map), and oneDNN's
    backward convolutions and ReLU are slower on mixed layouts (Glow's training step on MNIST,
    2 levels x 8 steps x 64 channels, batch 64, one thread: 149 against 159 ms without it)."""

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


class _ResidualBlock(nn.Module):
    """h + conv3x3(relu(conv3x3(relu(h)))), shape-preserving (He et al. 2016, pre-activation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class ConvNet(nn.Module):
    r"""Convolutional network in_channels -> out_channels that keeps the image size.

    With ``blocks = 0`` it is Glow's conditioner: conv 3x3 (hidden) - ReLU - conv 1x1 (hidden) -
    ReLU - conv 3x3 (out); with ``blocks > 0`` residual blocks of two 3x3 convolutions sit
    between the first convolution and the 1x1 one (a ResNet, as Real NVP's conditioners). With
    ``hidden_channels = 0`` it is a single 3x3 convolution (Glow's split prior). The last layer
    starts at zero, so that the transform it conditions starts at the identity (Kingma &
    Dhariwal 2018, section 3.3). Zero padding throughout. The layers run on channels-last
    (NHWC) copies of the input, with the gradient handed back in that layout too: oneDNN's CPU
    convolutions are faster on it (Glow's conditioner, 64 hidden channels on a batch of 64
    14 x 14 images, one thread: a training step of the three layers 15-18 ms against 20-23 ms
    in NCHW; the forward pass alone 2.3 against 8.2 ms). The output has the input's shape (its
    strides are channels-last).

    Shapes: input (*batch, in_channels, H, W); output (*batch, out_channels, H, W).

    Reference: Kingma & Dhariwal. Glow. NeurIPS 2018, section 3.3 and appendix; Dinh et al.
    Density estimation using Real NVP. ICLR 2017, section 4.1.

    Args:
        in_channels, out_channels: channels of the input and the output.
        hidden_channels: channels of the hidden layers (0: one convolution).
        blocks: residual blocks.

    Raises:
        ValueError: for sizes below 1 (0 allowed for ``hidden_channels`` and ``blocks``).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 512, blocks: int = 0):
        super().__init__()
        if in_channels < 1 or out_channels < 1 or hidden_channels < 0 or blocks < 0:
            raise ValueError(f"ConvNet sizes must be positive, got in_channels={in_channels}, out_channels="
                             f"{out_channels}, hidden_channels={hidden_channels}, blocks={blocks}")
        if hidden_channels == 0:
            layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
        else:
            layers = [nn.Conv2d(in_channels, hidden_channels, 3, padding=1)]
            layers += [_ResidualBlock(hidden_channels) for _ in range(blocks)]
            layers += [nn.ReLU(inplace=True), nn.Conv2d(hidden_channels, hidden_channels, 1), nn.ReLU(inplace=True),
                       nn.Conv2d(hidden_channels, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _channels_last(self, v: Tensor) -> Tensor:
        return _ChannelsLastGradient.apply(self.net(v.contiguous(memory_format=torch.channels_last)))

    def forward(self, u: Tensor) -> Tensor:
        return on_images(self._channels_last, u)
