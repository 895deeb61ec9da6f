r"""Transforms that rearrange the elements of an event without changing them: the squeeze of
multi-scale image flows. Their log-abs-det-Jacobian is 0 (a permutation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ..core import Transform, on_images

__all__ = ["Squeeze"]


class Squeeze(Transform):
    r"""Space-to-depth squeeze: each 2 x 2 block of pixels becomes 4 channels of one pixel.

    forward: z (C, H, W) -> x (4C, H/2, W/2), x[4c + 2i + j, h, w] = z[c, 2h + i, 2w + j]
    (``torch.nn.functional.pixel_unshuffle``); inverse: the depth-to-space map back. A
    permutation of the elements, so ladj = 0. A multi-scale flow squeezes in the data -> base
    direction, so in its chain (base -> data) the squeeze appears as ``Inverse(Squeeze())``.

    Shapes: z (*batch, C, H, W) -> x (*batch, 4C, H/2, W/2); ladj (*batch,).

    Reference: Dinh, Sohl-Dickstein & Bengio. Density estimation using Real NVP. ICLR 2017,
    section 3.6 and figure 3.

    Args:
        factor: the block size (2 in the papers).

    Raises:
        ValueError: for a factor below 1, an event that is not (C, H, W), or H or W not
            divisible by the factor (forward), or C not divisible by factor^2 (inverse).
    """

    event_dims = 3

    def __init__(self, factor: int = 2):
        super().__init__()
        if factor < 1:
            raise ValueError(f"Squeeze factor must be at least 1, got {factor}")
        self.factor = factor

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = _image_shape(shape)
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"Squeeze: height and width {h}x{w} must be divisible by {f}")
        return c * f * f, h // f, w // f

    def inverse_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        c, h, w = _image_shape(shape)
        f = self.factor
        if c % (f * f):
            raise ValueError(f"Squeeze inverse: {c} channels are not divisible by {f * f}")
        return c // (f * f), h * f, w * f

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.forward_shape(z.shape[-3:])
        return on_images(lambda u: F.pixel_unshuffle(u, self.factor), z), z.new_zeros(z.shape[:-3])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.inverse_shape(x.shape[-3:])
        return on_images(lambda u: F.pixel_shuffle(u, self.factor), x), x.new_zeros(x.shape[:-3])

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ValueError(f"expected an image event (C, H, W), got shape {tuple(shape)}")
    return tuple(shape)  # type: ignore[return-value]
