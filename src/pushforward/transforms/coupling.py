r"""Coupling transforms: one part of the features is mapped element-wise with parameters
predicted from the other part (and the context), which passes unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core import Transform, sum_rightmost
from ..nn.convnet import ConvNet, cat_context_channels
from ..nn.mlp import MLP, cat_context
from .elementwise import ElementwiseMap

__all__ = ["Coupling", "ImageCoupling", "alternating_mask", "checkerboard"]


def _slice(index: Tensor, step: int) -> slice:
    """The increasing ``index`` of a half (step 1) or of the even or odd features (step 2) as a
    slice: a view of the features instead of a gather, which is slow on the CPU along the last
    dimension."""
    return slice(int(index[0]), int(index[-1]) + 1, step)


def _merge(first: Tensor, second: Tensor, woven: bool) -> Tensor:
    """The features in order from the two parts of a coupling's split: ``first`` holds feature 0;
    the parts are the halves (concatenated) or the even and odd features (interleaved, ``woven``).
    Out of place: slice assignments into a new tensor would cost a copying node in the backward."""
    if not woven:
        return torch.cat([first, second], -1)
    n = second.shape[-1]
    merged = torch.stack([first[..., :n], second], -1).flatten(-2)
    return merged if first.shape[-1] == n else torch.cat([merged, first[..., n:]], -1)


def alternating_mask(features: int, parity: int) -> Tensor:
    """Boolean mask (features,) that is True on the features whose index has the given parity."""
    return torch.arange(features) % 2 == parity


def checkerboard(height: int, width: int, parity: int, device: torch.device | None = None) -> Tensor:
    """Boolean mask (height, width) that is True on the pixels (i, j) with (i + j) % 2 == parity."""
    i = torch.arange(height, device=device)[:, None]
    j = torch.arange(width, device=device)
    return (i + j) % 2 == parity


class Coupling(Transform):
    r"""Coupling layer: x_a = z_a, x_b = f(z_b; h(z_a, c)).

    With (z_a, z_b) split by ``mask`` (True marks the transformed part b) and h an MLP
    conditioner; ladj = sum over b of log|f'(z_b; h)|. Both directions are one network pass.
    With an affine map this is RealNVP's affine coupling (Dinh et al. 2017, eqs. 6-9), with a
    rational-quadratic spline the coupling NSF (Durkan et al. 2019, section 3.2).

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Args:
        mask: boolean tensor (features,), True for the transformed features.
        elementwise_map: the element-wise map f.
        context_features: size of the context, 0 for none.
        hidden_features: hidden layer sizes of the MLP conditioner.
        activation: the conditioner's non-linearity.

    Raises:
        ValueError: if the mask selects no feature or every feature.
    """

    def __init__(self, mask: Tensor, elementwise_map: ElementwiseMap, context_features: int = 0,
                 hidden_features: Sequence[int] = (64, 64), activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.all() or not mask.any():
            raise ValueError("Coupling mask must select some but not all features")
        self.map = elementwise_map
        self.context_features = context_features
        self.register_buffer("index_a", torch.nonzero(~mask).squeeze(-1))
        self.register_buffer("index_b", torch.nonzero(mask).squeeze(-1))
        self.register_buffer("unsplit", torch.argsort(torch.cat([self.index_a, self.index_b])))
        # alternating masks and halves select by slices (views) and merge out of place (_merge);
        # other masks by the index buffers
        changes = int((mask[1:] != mask[:-1]).sum())
        self._woven, self._a_first = changes == len(mask) - 1, not mask[0].item()
        halves = changes == 1
        step = 2 if self._woven else 1
        self._slices = (_slice(self.index_a, step), _slice(self.index_b, step)) if self._woven or halves else None
        n_a, n_b = len(self.index_a), len(self.index_b)
        self.conditioner = MLP(n_a + context_features, n_b * elementwise_map.params, hidden_features, activation)

    def _couple(self, u: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        a, b = self._slices or (self.index_a, self.index_b)
        u_a, u_b = u[..., a], u[..., b]
        inputs = cat_context(u_a, context, self.context_features, "Coupling")
        h = self.conditioner(inputs).unflatten(-1, (len(self.index_b), self.map.params))
        v_b, ladj = (self.map.inverse if inverse else self.map.forward)(u_b, h)
        if self._slices is None:
            return torch.cat([u_a, v_b], dim=-1)[..., self.unsplit], ladj.sum(-1)
        first, second = (u_a, v_b) if self._a_first else (v_b, u_a)
        return _merge(first, second, self._woven), ladj.sum(-1)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=False)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=True)

    def extra_repr(self) -> str:
        # A map that is a module (it has parameters) is printed as a child already.
        return "" if isinstance(self.map, nn.Module) else f"map={self.map!r}"


class ImageCoupling(Transform):
    r"""Coupling layer on images: x_b = f(z_b; h(z_a, c)), x_a = z_a, with a convolutional
    conditioner h (:class:`~pushforward.nn.ConvNet`).

    Masks: "channel" splits the channels into halves, the first C // 2 and the rest; ``parity``
    0 transforms the second half given the first, 1 the first given the second (Glow's coupling,
    Real NVP's channel-wise masks). "checkerboard" transforms the pixels with (i + j) % 2 ==
    ``parity`` given the others: the conditioner sees the image with the transformed pixels set
    to 0 (Real NVP's spatial checkerboard). ladj = sum over the transformed elements of
    log|f'(z_b; h)|. The context, if any, enters the conditioner as constant channels (a vector
    context) or as extra channels (an image context of the image's height and width). With an
    affine map (:class:`~pushforward.transforms.AffineMap`, log-scale bounded by a tanh) this is
    the affine coupling of Real NVP and Glow, with an additive map NICE's.

    Shapes: z, x (*batch, C, H, W); context (*batch, context_features) or
    (*batch, context_features, H, W); ladj (*batch,).

    Reference: Dinh, Sohl-Dickstein & Bengio. Density estimation using Real NVP. ICLR 2017,
    section 3.4 (masks) and eqs. (6)-(9); Kingma & Dhariwal. Glow. NeurIPS 2018, table 1.

    Args:
        channels: number of channels C.
        elementwise_map: the element-wise map f.
        mask: "channel" or "checkerboard".
        parity: which part is transformed (0 or 1).
        context_features: size of the context, 0 for none.
        hidden_channels: hidden channels of the conditioner.
        blocks: residual blocks of the conditioner (0: Glow's three convolutions).

    Raises:
        ValueError: for an unknown mask, a parity other than 0 or 1, or a channel mask on one
            channel; for a context that does not match (at call time).
    """

    event_dims = 3

    def __init__(self, channels: int, elementwise_map: ElementwiseMap, mask: str = "channel", parity: int = 0,
                 context_features: int = 0, hidden_channels: int = 512, blocks: int = 0):
        super().__init__()
        if mask not in ("channel", "checkerboard"):
            raise ValueError(f"unknown mask {mask!r}; choose channel or checkerboard")
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity}")
        if mask == "channel" and channels < 2:
            raise ValueError("a channel mask needs at least 2 channels; use a checkerboard mask")
        self.map, self.mask, self.parity, self.context_features = elementwise_map, mask, parity, context_features
        self.split = (channels // 2, channels - channels // 2)
        if mask == "checkerboard":
            conditioning = transformed = channels
        else:
            conditioning, transformed = self.split[parity], self.split[1 - parity]
        self.conditioner = ConvNet(conditioning + context_features, transformed * elementwise_map.params,
                                   hidden_channels, blocks)

    def _params(self, u_a: Tensor, context: Tensor | None) -> Tensor:
        """The map's parameters (*batch, C_b, H, W, params) from the conditioning part."""
        h = self.conditioner(cat_context_channels(u_a, context, self.context_features, "ImageCoupling"))
        return h.unflatten(-3, (self.map.params, -1)).movedim(-4, -1)

    def _couple(self, u: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        f = self.map.inverse if inverse else self.map.forward
        if self.mask == "checkerboard":
            b = checkerboard(u.shape[-2], u.shape[-1], self.parity, u.device)
            v, ladj = f(u, self._params(u.masked_fill(b, 0.0), context))
            return torch.where(b, v, u), sum_rightmost(ladj.masked_fill(~b, 0.0), 3)
        parts = list(u.split(self.split, dim=-3))
        a, b = self.parity, 1 - self.parity
        parts[b], ladj = f(parts[b], self._params(parts[a], context))
        return torch.cat(parts, dim=-3), sum_rightmost(ladj, 3)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=False)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=True)

    def extra_repr(self) -> str:
        described = f"mask={self.mask!r}, parity={self.parity}"
        return described if isinstance(self.map, nn.Module) else f"{described}, map={self.map!r}"
