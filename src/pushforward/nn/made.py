r"""MADE: masked autoencoder for distribution estimation, the autoregressive conditioner."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import cat_context

__all__ = ["MADE", "MaskedLinear"]


class MaskedLinear(nn.Linear):
    r"""Linear layer y = (W * M) x + b with a fixed binary mask M.

    Shapes: input (*batch, in_features); mask (out_features, in_features);
    output (*batch, out_features).
    """

    def __init__(self, mask: Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Masked autoencoder whose output for feature i depends only on features before i.

    Each input feature i gets the degree order[i] + 1 (1..D), context inputs degree 0, hidden
    units degrees that cycle through [1, D - 1] ([0, D - 1] with context, so that units of
    degree 0 carry the context to every output); a unit sees a unit of lower or equal degree,
    an output of degree d sees hidden units of degree < d. Hence output i depends on the
    features j with order[j] < order[i] and on the whole context, for any number of hidden
    layers and any order.

    Shapes: x (*batch, features); context (*batch, context_features);
    output (*batch, features, params) -- ``params`` parameters per feature.

    Reference: Germain et al. MADE: Masked autoencoder for distribution estimation.
    ICML 2015, section 4 (eqs. 12-13).

    Args:
        features: number of autoregressive features D.
        params: number of outputs per feature.
        context_features: size of the context, 0 for none.
        hidden_features: sizes of the hidden layers.
        order: a permutation of range(D): feature i is the order[i]-th to be generated
            (default: natural order).
        activation: the non-linearity class.

    Raises:
        ValueError: if ``order`` is not a permutation of range(features).
    """

    def __init__(self, features: int, params: int, context_features: int = 0,
                 hidden_features: Sequence[int] = (64, 64), order: Sequence[int] | None = None,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        order = torch.arange(features) if order is None else torch.as_tensor(order)
        if sorted(order.tolist()) != list(range(features)):
            raise ValueError(f"MADE order must be a permutation of range({features}), got {order.tolist()}")
        self.features, self.params, self.context_features = features, params, context_features
        self.register_buffer("order", order.clone())
        low = 0 if context_features else 1
        span = max(features - low, 1)
        degrees = torch.cat([torch.zeros(context_features, dtype=torch.long), order + 1])
        layers: list[nn.Module] = []
        for width in hidden_features:
            hidden = low + torch.arange(width) % span
            layers += [MaskedLinear(hidden[:, None] >= degrees[None, :]), activation()]
            degrees = hidden
        out_degrees = (order + 1).repeat_interleave(params)
        layers.append(MaskedLinear(out_degrees[:, None] > degrees[None, :]))
        self.network = nn.Sequential(*layers)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = cat_context(x, context, self.context_features, "MADE")
        return self.network(x).unflatten(-1, (self.features, self.params))

    def extra_repr(self) -> str:
        return f"features={self.features}, params={self.params}, context_features={self.context_features}"
