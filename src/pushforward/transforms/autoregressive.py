r"""Autoregressive transforms: each feature is an element-wise map of itself, with parameters
predicted by a MADE from the features before it (and the context)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core import Transform
from ..nn.made import MADE
from .elementwise import ElementwiseMap

__all__ = ["MaskedAutoregressive"]


class MaskedAutoregressive(Transform):
    r"""Masked autoregressive transform x_i = f(z_i; h_i(x_{<i}, c)) with h given by a MADE.

    The inverse (data -> base, density evaluation) is one network pass,
    z_i = f^{-1}(x_i; h_i(x_{<i}, c)); the forward (base -> data, sampling) fixes one feature
    after the other in the MADE's order (:meth:`~pushforward.nn.MADE.generate`: D small steps
    that together cost about one network pass). ladj = sum_i log|f'(z_i; h_i)|.
    With an affine map this is a MAF layer (Papamakarios et al. 2017, eqs. 2-3) and
    ``Inverse`` of it an IAF layer (Kingma et al. 2016, eq. 10); with a rational-quadratic
    spline it is the autoregressive NSF layer (Durkan et al. 2019).

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Args:
        features: number of features D.
        elementwise_map: the element-wise map f (e.g. ``AffineMap()``, ``RQSpline()``).
        context_features: size of the context, 0 for none.
        hidden_features: hidden layer sizes of the MADE.
        order: the autoregressive order (see :class:`~pushforward.nn.MADE`).
        activation: the MADE's non-linearity.
    """

    def __init__(self, features: int, elementwise_map: ElementwiseMap, context_features: int = 0,
                 hidden_features: Sequence[int] = (64, 64), order: Sequence[int] | None = None,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.map = elementwise_map
        self.made = MADE(features, elementwise_map.params, context_features, hidden_features, order, activation)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ladj = []

        def step(i: int, params: Tensor) -> Tensor:
            x_i, ladj_i = self.map.forward(z[..., i : i + 1], params.unsqueeze(-2))
            ladj.append(ladj_i)
            return x_i.squeeze(-1)

        x = self.made.generate(step, z, context)
        return x, torch.cat(ladj, -1).sum(-1)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.map.inverse(x, self.made(x, context))
        return z, ladj.sum(-1)

    def extra_repr(self) -> str:
        # A map that is a module (it has parameters) is printed as a child already.
        return "" if isinstance(self.map, nn.Module) else f"map={self.map!r}"
