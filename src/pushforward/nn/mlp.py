"""Multi-layer perceptron conditioner."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "cat_context", "check_context", "hidden_activation"]

# Activations whose gradient can be computed from their output: applied in place on the
# output of the linear layer before them (autograd allows it; a product's gradient does not
# need its output), which saves one tensor per hidden layer and, on the CPU, the page faults
# of fresh memory (`python -m benchmarks.in_place`; figures in benchmarks/RESULTS.md).
_IN_PLACE = (nn.ReLU, nn.LeakyReLU)


def hidden_activation(activation: type[nn.Module]) -> nn.Module:
    """An instance of ``activation`` for a hidden layer, in place for ReLU and LeakyReLU."""
    return activation(inplace=True) if activation in _IN_PLACE else activation()


def check_context(context: Tensor | None, context_features: int, owner: str) -> None:
    """Raise ``ValueError`` unless ``context`` has ``context_features`` features (``owner``,
    built with context_features > 0, names itself in the message)."""
    if context is None:
        raise ValueError(f"{owner} was built with context_features={context_features} and needs a context")
    if context.shape[-1] != context_features:
        raise ValueError(f"{owner} expects a context of {context_features} features, got {context.shape[-1]}")


def cat_context(x: Tensor, context: Tensor | None, context_features: int, owner: str) -> Tensor:
    """Prepend the context to the features: (*batch, F) -> (*batch, context_features + F).

    Raises:
        ValueError: if ``owner`` was built with context_features > 0 and no context, or one of
            another size, is given.
    """
    if not context_features:
        return x
    check_context(context, context_features, owner)
    return torch.cat([context.expand(*x.shape[:-1], -1), x], dim=-1)


class MLP(nn.Sequential):
    r"""Fully connected network in_features -> hidden_features... -> out_features.

    The last layer starts at zero, so that a transform it conditions starts at the identity
    (as in Glow, Kingma & Dhariwal 2018, section 3.3).

    Shapes: input (*batch, in_features); output (*batch, out_features).

    Args:
        in_features, out_features: input and output sizes.
        hidden_features: sizes of the hidden layers.
        activation: the non-linearity class between layers.
    """

    def __init__(self, in_features: int, out_features: int, hidden_features: Sequence[int] = (64, 64),
                 activation: type[nn.Module] = nn.ReLU):
        sizes = [in_features, *hidden_features, out_features]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), hidden_activation(activation)]
        super().__init__(*layers[:-1])
        nn.init.zeros_(self[-1].weight)
        nn.init.zeros_(self[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)
