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
    Dhariwal 2018, section 3.3). Zero padding throughout.

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

    def forward(self, u: Tensor) -> Tensor:
        return on_images(self.net, u)
