r"""MADE: masked autoencoder for distribution estimation, the autoregressive conditioner."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .masked import _MaskedLayers
from .mlp import cat_context

__all__ = ["MADE"]


class MADE(_MaskedLayers):
    r"""Masked autoencoder whose output for feature i depends only on features before i.

    Each input feature i gets the degree order[i] + 1 (1..D), context inputs degree 0, hidden
    units degrees that cycle through [1, D - 1] ([0, D - 1] with context, so that units of
    degree 0 carry the context to every output); a unit sees a unit of lower or equal degree,
    an output of degree d sees hidden units of degree < d. Hence output i depends on the
    features j with order[j] < order[i] and on the whole context, for any number of hidden
    layers and any order. Hidden units are kept sorted by degree, so that every mask is a
    staircase of which only the non-zero blocks are stored and multiplied, as in
    :class:`MaskedLinear`; the weights and biases of all layers are one flat parameter,
    ``packed``, so that an optimiser updates one tensor per MADE, and one autograd node
    computes the whole MADE. ``python -m benchmarks.made_blocks --settings 1-4-1,auto,dense
    --repeats 9`` measured the training step of a MAF of 5 tanh MADEs of 2 x 512 units on 64
    features with one dense masked weight per layer at 0.82x (twice) of that with 1, 4 and 1
    runs, and the default (2, 4 and 2 runs) at 0.99x and 1.04x of it (``--settings
    1-4-1,auto --repeats 21``: 1.05x; torch's default Adam); with ReLU MADEs on 784 features
    (``--features 784 --activation relu --settings dense,auto``) 1.30x of dense.

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
        blocks: row runs of each layer, as in :class:`MaskedLinear` (1: one product per
            layer; None: its size-based default), or a sequence of those, one per layer
            (the hidden layers, then the output layer).

    Raises:
        ValueError: if ``order`` is not a permutation of range(features), or ``blocks`` is a
            sequence of another length than the layers.
    """

    def __init__(self, features: int, params: int, context_features: int = 0,
                 hidden_features: Sequence[int] = (64, 64), order: Sequence[int] | None = None,
                 activation: type[nn.Module] = nn.ReLU, blocks: int | Sequence[int | None] | None = None):
        order = torch.arange(features) if order is None else torch.as_tensor(order)
        if sorted(order.tolist()) != list(range(features)):
            raise ValueError(f"MADE order must be a permutation of range({features}), got {order.tolist()}")
        low = 0 if context_features else 1
        span = max(features - low, 1)
        degrees = torch.cat([torch.zeros(context_features, dtype=torch.long), order + 1])
        masks, units = [], []  # units: per hidden layer, how many units have degree <= k, k = 0..D
        for width in hidden_features:
            hidden = torch.sort(low + torch.arange(width) % span).values  # sorted: block-triangular masks
            masks.append(hidden[:, None] >= degrees[None, :])
            units.append(torch.searchsorted(hidden, torch.arange(features + 1), right=True).tolist())
            degrees = hidden
        masks.append((order + 1).repeat_interleave(params)[:, None] > degrees[None, :])
        super().__init__(masks, blocks, activation(), legacy=[f"network.{2 * k}." for k in range(len(masks))])
        self.features, self.params, self.context_features = features, params, context_features
        self._units = units
        self.register_buffer("order", order.clone())
        # the inputs (context, then features) sorted by degree, for generate()
        self.register_buffer("input_order", torch.cat([torch.arange(context_features),
                                                       context_features + torch.argsort(order)]), persistent=False)
        with torch.no_grad():  # the last layer starts at zero: the transform it conditions starts at the identity
            self.packed[-sum(self._layout.sizes[self._layout.layers[-1].first :]) :].zero_()

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = cat_context(x, context, self.context_features, "MADE")
        return self._chain(x).unflatten(-1, (self.features, self.params))

    def generate(self, step: Callable[[int, Tensor], Tensor], like: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Fill x feature by feature in the MADE's order, x_i = step(i, h_i(x_{<i}, c)), computing
        every hidden unit once.

        This is the autoregressive (sampling) direction: :meth:`forward` at x would give the
        same h_i for every i, but D full passes cost D times the products, while here the pass
        for the feature of position p computes only the hidden units of degree p (they see
        the features of positions < p, all known by then) and that feature's ``params``
        outputs: about one full pass of products in all, in D small steps. Differentiable.

        Shapes: like (*batch, features) gives the batch shape, dtype and device; context
        (*batch, context_features); step gets the feature index i and its parameters
        (*batch, params) and returns x_i (*batch,); returns x (*batch, features).
        """
        # known inputs in degree order: the context, then the features in the MADE's order
        known = cat_context(like[..., :0], context, self.context_features, "MADE")
        *hidden_layers, (out_weight, out_bias) = self.dense()
        if hidden_layers:  # the first layer's columns in degree order, as ``known``
            hidden_layers[0] = (hidden_layers[0][0][:, self.input_order], hidden_layers[0][1])
        else:
            out_weight = out_weight[:, self.input_order]
        hidden = [known[..., :0] for _ in hidden_layers]  # the units computed so far, in degree order
        for position, i in enumerate(torch.argsort(self.order).tolist()):
            below = known
            for layer, (weight, bias) in enumerate(hidden_layers):
                done, total = self._units[layer][position - 1] if position else 0, self._units[layer][position]
                if total > done:
                    rows = slice(done, total)
                    new = nn.functional.linear(below, weight[rows, : below.shape[-1]], bias[rows])
                    hidden[layer] = torch.cat([hidden[layer], self.activation(new)], -1)
                below = hidden[layer]
            rows = slice(i * self.params, (i + 1) * self.params)
            x_i = step(i, nn.functional.linear(below, out_weight[rows, : below.shape[-1]], out_bias[rows]))
            known = torch.cat([known, x_i.unsqueeze(-1)], -1)
        return known[..., self.context_features :][..., self.order]

    def extra_repr(self) -> str:
        return f"features={self.features}, params={self.params}, context_features={self.context_features}"
