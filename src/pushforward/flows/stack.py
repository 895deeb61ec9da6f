r"""The layer stacks every vector preset is made of: flow layers chained with a normalisation
between them, and the masked autoregressive and coupling layers of alternating orders and masks."""


from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core import Chain, Inverse, Transform
from ..transforms.autoregressive import MaskedAutoregressive
from ..transforms.coupling import Coupling, alternating_mask
from ..transforms.elementwise import ElementwiseMap
from ..transforms.linear import Permutation
from ..transforms.normalization import ActNorm, BatchNorm

__all__ = ["stack", "autoregressive_layers", "coupling_layers"]


_NORMALIZATIONS: dict[str | None, Callable[[int], Transform] | None] = {
    None: None, "none": None, "batch": BatchNorm, "act": ActNorm,
}


def stack(layers: Sequence[Transform], features: int, normalization: str | None) -> Chain:
    """Chain the layers with a normalisation layer ("batch", "act" or None) after each but the last."""
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose batch, act or none")
    norm = _NORMALIZATIONS[normalization]
    parts: list[Transform] = []
    for i, layer in enumerate(layers):
        parts.append(layer)
        if norm is not None and i < len(layers) - 1:
            parts.append(norm(features))
    return Chain(*parts)


def autoregressive_layers(features: int, elementwise_map: Callable[[], ElementwiseMap], context_features: int,
                    transforms: int, hidden_features: Sequence[int], activation: type[nn.Module],
                    inverse: bool = False) -> list[Transform]:
    """Masked autoregressive layers whose orders alternate between natural and reversed."""
    layers: list[Transform] = []
    for i in range(transforms):
        order = torch.arange(features) if i % 2 == 0 else torch.arange(features - 1, -1, -1)
        layer = MaskedAutoregressive(features, elementwise_map(), context_features, hidden_features, order, activation)
        layers.append(Inverse(layer) if inverse else layer)
    return layers


def coupling_layers(features: int, elementwise_map: Callable[[], ElementwiseMap], context_features: int,
              transforms: int, hidden_features: Sequence[int], activation: type[nn.Module],
              masks: str = "alternate") -> list[Transform]:
    """Coupling layers with alternating even/odd masks, or half splits after random permutations."""
    if features < 2:
        raise ValueError("coupling flows need at least 2 features; use an autoregressive flow")
    if masks not in ("alternate", "random"):
        raise ValueError(f"unknown masks {masks!r}; choose alternate or random")
    layers: list[Transform] = []
    for i in range(transforms):
        if masks == "random":
            layers.append(Permutation.random(features, seed=i))
            mask = torch.arange(features) >= features // 2
        else:
            mask = alternating_mask(features, i % 2)
        layers.append(Coupling(mask, elementwise_map(), context_features, hidden_features, activation))
    return layers
