r"""The neural autoregressive presets: NAF, B-NAF and UMNN-MAF, each a
:class:`~pushforward.core.Flow` with a standard normal base.

NAF and UMNN are MAF given another element-wise map (a deep sigmoidal flow, an integral of a
positive network); B-NAF is a stack of single block-autoregressive networks. All three evaluate
densities in one pass per layer and sample by bisection (D passes per layer).
"""


from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..checks import check_arguments
from ..core import Chain, Flow, Transform
from ..distributions import preset_base
from ..transforms.linear import Permutation
from ..transforms.neural import BlockNeuralAutoregressive, DeepSigmoidMap, UMNNMap
from .stack import autoregressive_layers, stack

__all__ = ["NAF", "BNAF", "UMNN"]


class NAF(Flow):
    r"""Neural autoregressive flow with deep sigmoidal transformers (NAF-DSF).

    Each layer maps feature i by a deep sigmoidal flow, y_i = logit(w^T sigmoid(a * x_i + b)),
    whose parameters (a, b, w) = MADE(x_{<i}, c): MAF given :class:`DeepSigmoidMap`. Orders
    alternate between natural and reversed. log_prob is one pass per layer; sampling solves each
    layer by bisection (D passes), to the tolerance of :class:`DeepSigmoidMap`.

    Defaults: 5 layers, a MADE of (256, 256) and 16 sigmoid units per DSF, library defaults
    for tabular and toy data.

    Shapes: as :class:`~pushforward.flows.MAF`.

    Reference: Huang, Krueger, Lacoste & Courville. Neural autoregressive flows. ICML 2018.
    arXiv:1804.00779.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of autoregressive layers.
        hidden_features: hidden layer sizes of each MADE.
        units: hidden units of each sigmoidal layer.
        layers: stacked sigmoidal layers per transformer.
        normalization: "batch", "act" or None between layers.
        activation: the MADE's non-linearity.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5,
                 hidden_features: Sequence[int] = (256, 256), units: int = 16, layers: int = 1,
                 normalization: str | None = None, activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features, units=units, layers=layers)
        def dsf() -> DeepSigmoidMap:
            return DeepSigmoidMap(units, layers)

        parts = autoregressive_layers(features, dsf, context_features, transforms, hidden_features, activation)
        super().__init__(*preset_base(base, features, stack(parts, features, normalization)), embedding)


class UMNN(Flow):
    r"""UMNN-MAF: autoregressive layers whose transformers are integrals of positive networks.

    Each layer maps feature i by z_i = int_0^{x_i} g(t; e_i) dt + beta_i, with
    (e_i, beta_i) = MADE(x_{<i}, c) and g a positive MLP shared by the features of the layer:
    MAF given :class:`UMNNMap`, the integral by Clenshaw-Curtis quadrature. Orders alternate
    between natural and reversed. log_prob is one pass per layer; sampling solves each layer by
    bisection (D passes), to the tolerance of :class:`UMNNMap`.

    Defaults: 5 layers, a MADE of (256, 256), embeddings of 16, an integrand network of
    (64, 64) and 33 quadrature nodes, smaller than the paper's UCI models.

    Shapes: as :class:`~pushforward.flows.MAF`.

    Reference: Wehenkel & Louppe. Unconstrained monotonic neural networks. NeurIPS 2019,
    section 4 (UMNN-MAF). arXiv:1908.05164.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none.
        transforms: number of autoregressive layers.
        hidden_features: hidden layer sizes of each MADE.
        feature_embedding: size of each feature's embedding e_i (``UMNNMap``'s ``embedding``).
        integrand_features: hidden layer sizes of the integrand network.
        nodes: number of quadrature nodes.
        normalization: "batch", "act" or None between layers.
        activation: the MADE's non-linearity.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5,
                 hidden_features: Sequence[int] = (256, 256), feature_embedding: int = 16,
                 integrand_features: Sequence[int] = (64, 64), nodes: int = 33,
                 normalization: str | None = None, activation: type[nn.Module] = nn.ReLU,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features, embedding=feature_embedding, integrand_features=integrand_features,
                    nodes=nodes)
        def umnn() -> UMNNMap:
            return UMNNMap(feature_embedding, integrand_features, nodes)

        parts = autoregressive_layers(features, umnn, context_features, transforms, hidden_features, activation)
        super().__init__(*preset_base(base, features, stack(parts, features, normalization)), embedding)


class BNAF(Flow):
    r"""Block neural autoregressive flow: a stack of block-autoregressive networks.

    Each layer is a :class:`~pushforward.transforms.neural.BlockNeuralAutoregressive` network
    z = a * net(x, c) + (1 - a) * x with tanh hidden layers of features * hidden_features[k]
    units; the order of the features is reversed between layers. log_prob is one pass per
    layer; sampling solves each layer feature by feature by bisection (D passes).

    Defaults: 5 layers of 2 hidden layers of 10 units per feature (the paper counts hidden
    sizes in multiples of the dimension d; this is "10d"), with the gated residual connection.

    Shapes: as :class:`~pushforward.flows.MAF`.

    Reference: De Cao, Titov & Aziz. Block neural autoregressive flow. UAI 2019.
    arXiv:1904.04676.

    Args:
        features: data dimension D.
        context_features: size of the context, 0 for none (fed to the first layer of each
            network).
        transforms: number of block-autoregressive networks.
        hidden_features: hidden units per feature of each hidden layer.
        residual: use the gated residual connection.
        normalization: "batch", "act" or None between layers.
        base: "normal", "mixture" (a learned mixture of Gaussians) or "box" (a sigmoid
            onto (0, 1)^D) or a distribution module, see :func:`~pushforward.distributions.preset_base`.
        embedding: a network applied to the context before the layers read it (trained
            jointly); the context may then have any shape it takes.
    """

    def __init__(self, features: int, context_features: int = 0, transforms: int = 5,
                 hidden_features: Sequence[int] = (10, 10), residual: bool = True,
                 normalization: str | None = None,
                 base: str | nn.Module = "normal", embedding: nn.Module | None = None):
        check_arguments(features=features, context_features=context_features, transforms=transforms,
                    hidden_features=hidden_features)
        parts: list[Transform] = []
        for i in range(transforms):
            layer = BlockNeuralAutoregressive(features, context_features, hidden_features, residual)
            parts.append(Chain(Permutation.reverse(features), layer) if i % 2 else layer)
        super().__init__(*preset_base(base, features, stack(parts, features, normalization)), embedding)
