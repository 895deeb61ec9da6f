r"""Neural autoregressive transforms: monotonic neural networks as element-wise maps.

Each of these maps a feature by a monotonic neural network rather than by an affine map or a
spline. The network is closed-form in the data -> base direction (the density direction of
their papers); the base -> data direction is solved numerically by bisection to a stated
tolerance, with gradients by implicit differentiation (:func:`~.elementwise.numerical_inverse`).

- :class:`DeepSigmoidMap`: the deep sigmoidal flow of NAF, an element-wise map whose
  parameters come from a MADE, so that ``MaskedAutoregressive(D, DeepSigmoidMap())`` is a NAF
  layer (Huang et al. 2018).
- :class:`UMNNMap`: the integral of a positive network, x -> int_0^x g(t; h) dt + beta, with
  Clenshaw-Curtis quadrature (:func:`clenshaw_curtis`); with a MADE it is a UMNN-MAF layer
  (Wehenkel & Louppe 2019).
- :class:`BlockNeuralAutoregressive`: a single network with block lower-triangular weights
  (De Cao et al. 2019).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Transform
from ..nn.mlp import MLP
from .elementwise import ElementwiseMap, numerical_inverse

__all__ = ["DeepSigmoidMap", "UMNNMap", "BlockNeuralAutoregressive", "MaskedBlockLinear", "clenshaw_curtis"]

# softplus^{-1}(1): a zero raw slope gives a = 1.
_SOFTPLUS_ONE = math.log(math.expm1(1.0))
# Floor on the DSF slopes a, so that their log stays finite when softplus underflows.
_MIN_SLOPE = 1e-3


def _sigmoidal_layer(x: Tensor, log_a: Tensor, b: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor]:
    r"""One DSF layer y = logit(w^T sigmoid(a x + b)) and log dy/dx, in log space (NAF eqs. 8-9).

    With C = a x + b: log D = logsumexp(log w + log sigmoid(C)) and, since sum w = 1,
    log(1 - D) = logsumexp(log w + log sigmoid(-C)); y = log D - log(1 - D) and
    log dy/dx = logsumexp(log w + log a + log sigmoid(C) + log sigmoid(-C)) - log D - log(1 - D).

    Shapes: x (*shape); log_a, b, log_w (*shape, units); returns y, ladj (*shape).
    """
    c = log_a.exp() * x.unsqueeze(-1) + b
    log_s, log_1ms = F.logsigmoid(c), F.logsigmoid(-c)
    log_d = torch.logsumexp(log_w + log_s, -1)
    log_1md = torch.logsumexp(log_w + log_1ms, -1)
    ladj = torch.logsumexp(log_w + log_a + log_s + log_1ms, -1) - log_d - log_1md
    return log_d - log_1md, ladj


class DeepSigmoidMap(ElementwiseMap):
    r"""Deep sigmoidal flow (DSF): a monotonic map R -> R built from sigmoids, for NAF.

    Data -> base (``inverse``, closed form), for each of ``layers`` stacked layers:
    y = logit(w^T sigmoid(a * x + b)), with a = softplus(.) + 1e-3 > 0 and w = softmax(.) on the
    simplex, ``units`` hidden units per layer; ladj = sum over layers of log dy/dx, computed in
    log space with log-sum-exps. No clamp of the logit's argument is needed:
    1 - w^T sigmoid(C) = w^T sigmoid(-C), so log D and log(1 - D) are both log-sum-exps of
    log-sigmoids and stay finite where the sigmoids saturate (where a float logit would give
    +-inf); y grows like min_j a_j * x at infinity, so the map is onto R.
    Base -> data (``forward``) is solved by bisection to |x - x*| <= tol * max(1, |x*|)
    (tol = 1e-10 in float64, 1e-5 in float32 by default), with implicit gradients
    (:func:`~.elementwise.numerical_inverse`). Zero parameters give a = 1, w uniform and fixed
    offsets b_j = linspace(-2, 2) that make the units differ (zero-initialised conditioners
    would otherwise keep them identical), a map close to the identity.

    ``MaskedAutoregressive(features, DeepSigmoidMap())`` is a NAF layer with a DSF transformer.

    Shapes: z, x (*shape); h (*shape, params) with params = 3 * units * layers.

    Reference: Huang, Krueger, Lacoste & Courville. Neural autoregressive flows. ICML 2018,
    section 3.1, eqs. (8)-(9), with the derivative in log space as the paper advises.
    arXiv:1804.00779.

    Args:
        units: hidden units of each sigmoidal layer (the paper's DSF uses 16).
        layers: number of stacked scalar sigmoidal layers.
        tol: the bisection tolerance of ``forward`` (default by dtype, as above).
        max_iter: the largest number of bisection halvings.

    Raises:
        ValueError: for fewer than 1 unit or layer.
        ConvergenceError: in ``forward``, if the bisection does not meet its tolerance.
    """

    def __init__(self, units: int = 16, layers: int = 1, tol: float | None = None, max_iter: int = 200):
        if units < 1 or layers < 1:
            raise ValueError(f"DeepSigmoidMap needs units >= 1 and layers >= 1, got {units} and {layers}")
        self.units, self.layers, self.tol, self.max_iter = units, layers, tol, max_iter
        self.params = 3 * units * layers

    def _unpack(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, b, w = h.unflatten(-1, (self.layers, 3, self.units)).unbind(-2)
        log_a = torch.log(F.softplus(a + _SOFTPLUS_ONE) + _MIN_SLOPE)
        offsets = torch.linspace(-2, 2, self.units, dtype=h.dtype, device=h.device) if self.units > 1 else 0
        return log_a, b + offsets, torch.log_softmax(w, -1)

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        log_a, b, log_w = self._unpack(h)
        ladj = torch.zeros_like(x)
        for layer in range(self.layers):
            x, part = _sigmoidal_layer(x, log_a[..., layer, :], b[..., layer, :], log_w[..., layer, :])
            ladj = ladj + part
        return x, ladj

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return numerical_inverse(lambda x: self.inverse(x, h), z, self.tol, self.max_iter)


@functools.lru_cache(maxsize=None)
def _clenshaw_curtis(nodes: int) -> tuple[Tensor, Tensor]:
    n = nodes - 1
    k = torch.arange(nodes, dtype=torch.float64)
    j = torch.arange(1, n // 2 + 1, dtype=torch.float64)
    b = torch.where(2 * j == n, 1.0, 2.0)
    v = 1 - (b / (4 * j**2 - 1) * torch.cos(2 * math.pi * k[:, None] * j / n)).sum(-1)
    c = torch.where((k == 0) | (k == n), 1.0, 2.0)
    return torch.cos(math.pi * k / n), c * v / n


def clenshaw_curtis(nodes: int, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    r"""Clenshaw-Curtis quadrature on [-1, 1]: int f(s) ds ≈ sum_k w_k f(s_k).

    With n = nodes - 1: s_k = cos(k pi / n), k = 0..n, and
    w_k = c_k / n * (1 - sum_{j=1}^{n/2} b_j / (4 j^2 - 1) cos(2 j k pi / n)), where c_k = 1 at
    the end points and 2 elsewhere, b_j = 1 for j = n/2 and 2 elsewhere. Exact for polynomials
    of degree <= n; converges geometrically for analytic f. Computed in float64, then cast.

    Shapes: returns nodes s (nodes,) and weights w (nodes,).

    Reference: Clenshaw & Curtis. A method for numerical integration on an automatic computer.
    Numerische Mathematik 2, 1960; the weights as in Waldvogel, Fast construction of the Fejér
    and Clenshaw-Curtis quadrature rules, BIT 2006, and Trefethen, Is Gauss quadrature better
    than Clenshaw-Curtis? SIAM Review 2008.

    Args:
        nodes: number of nodes (at least 2).
        dtype, device: of the returned tensors (default float64 on the CPU).

    Raises:
        ValueError: for fewer than 2 nodes.
    """
    if nodes < 2:
        raise ValueError(f"Clenshaw-Curtis quadrature needs at least 2 nodes, got {nodes}")
    s, w = _clenshaw_curtis(nodes)
    return s.to(dtype=dtype or torch.float64, device=device), w.to(dtype=dtype or torch.float64, device=device)


class UMNNMap(nn.Module, ElementwiseMap):
    r"""Unconstrained monotonic neural network: the integral of a positive network, for UMNN-MAF.

    Data -> base (``inverse``): z = int_0^x g(t; e) dt + beta, with
    g = softplus(net(t, e) + softplus^{-1}(1)) > 0, net an MLP shared by all features and
    (e, beta) = h the feature's embedding and offset; the integral by Clenshaw-Curtis
    quadrature with ``nodes`` nodes on t = x (1 + s) / 2; ladj = log g(x; e). Base -> data
    (``forward``): bisection to |x - x*| <= tol * max(1, |x*|) (tol = 1e-10 in float64, 1e-5
    in float32 by default), with implicit gradients. Gradients of the quadrature go through
    autograd (the paper's memory-saving backward is not used). The MLP's last layer starts at
    zero, so that zero parameters give the identity.

    The ladj is the exact log-derivative of the integral, which the quadrature approximates,
    so both agree to the quadrature's accuracy. The paper makes g positive with ELU + 1; its
    second derivative jumps at 0, which limits Clenshaw-Curtis to algebraic convergence (about
    4e-6 in the log-derivative with 33 nodes). Softplus has the same asymptotes (linear growth,
    exponential decay) but is analytic, and with a smooth ``activation`` (tanh by default) the
    quadrature converges geometrically, to near float64 precision for moderate |x|.
    ``MaskedAutoregressive(D, UMNNMap())`` is a UMNN-MAF layer.

    Shapes: z, x (*shape); h (*shape, params) with params = embedding + 1.

    Reference: Wehenkel & Louppe. Unconstrained monotonic neural networks. NeurIPS 2019,
    section 3 (the integral of a positive network, Clenshaw-Curtis quadrature).
    arXiv:1908.05164.

    Args:
        embedding: size of the embedding e of each feature given by the conditioner.
        hidden_features: hidden layer sizes of the integrand network.
        nodes: number of quadrature nodes.
        activation: the integrand network's non-linearity (smooth, for the quadrature).
        tol: the bisection tolerance of ``forward`` (default by dtype, as above).
        max_iter: the largest number of bisection halvings.

    Raises:
        ValueError: for fewer than 2 quadrature nodes.
        ConvergenceError: in ``forward``, if the bisection does not meet its tolerance (e.g. a
            target outside the image when g decays).
    """

    def __init__(self, embedding: int = 16, hidden_features: Sequence[int] = (64, 64), nodes: int = 33,
                 activation: type[nn.Module] = nn.Tanh, tol: float | None = None, max_iter: int = 200):
        super().__init__()
        clenshaw_curtis(nodes)
        self.params, self.embedding, self.nodes = embedding + 1, embedding, nodes
        self.tol, self.max_iter = tol, max_iter
        self.integrand = MLP(1 + embedding, 1, hidden_features, activation)

    def _log_integrand(self, t: Tensor, e: Tensor) -> Tensor:
        inputs = torch.cat([t.unsqueeze(-1), e.unsqueeze(-2).expand(*t.shape, -1)], -1)
        u = self.integrand(inputs).squeeze(-1) + _SOFTPLUS_ONE
        # log softplus(u) ~ u where softplus(u) would underflow; the clamp keeps the gradient of
        # the branch not taken finite.
        low = math.log(torch.finfo(u.dtype).tiny) + 1
        return torch.where(u < low, u, torch.log(F.softplus(u.clamp(min=low))))

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        e, beta = h[..., :-1], h[..., -1]
        s, w = clenshaw_curtis(self.nodes, x.dtype, x.device)
        x_ = x.unsqueeze(-1)
        log_g = self._log_integrand(torch.cat([x_ * (1 + s) / 2, x_], -1), e)
        integral = x / 2 * (w * log_g[..., :-1].exp()).sum(-1)
        return integral + beta, log_g[..., -1]

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return numerical_inverse(lambda x: self.inverse(x, h), z, self.tol, self.max_iter)

    def extra_repr(self) -> str:
        return f"embedding={self.embedding}, nodes={self.nodes}, tol={self.tol}"


class MaskedBlockLinear(nn.Module):
    r"""Block lower-triangular linear layer with positive diagonal blocks, weight-normalised.

    For D features with blocks of in_block inputs and out_block outputs each:
    W = exp(s) * g(V) / ||g(V)||_row, g(V) = exp(V) on the diagonal blocks, V below them,
    0 above; y = W u + bias. The log of the diagonal blocks,
    log W_ii = s + V_ii - log ||g(V)||_row, is returned for the log-abs-det-Jacobian.

    Shapes: u (*batch, D * in_block); y (*batch, D * out_block);
    log_diagonal (D, out_block, in_block).

    Reference: De Cao, Titov & Aziz. Block neural autoregressive flow. UAI 2019, section 3
    (block weights, weight normalisation). arXiv:1904.04676.

    Args:
        features: number of blocks D.
        in_block, out_block: inputs and outputs per block.
    """

    def __init__(self, features: int, in_block: int, out_block: int):
        super().__init__()
        self.features, self.in_block, self.out_block = features, in_block, out_block
        rows, cols = features * out_block, features * in_block
        bound = 1 / math.sqrt(cols)
        self.weight = nn.Parameter(torch.empty(rows, cols).uniform_(-bound, bound))
        # The diagonal blocks are positive, so a unit-norm row sums its in_block inputs coherently;
        # exp(s) = e^{1/2} / sqrt(in_block) makes that sum about 1.6 times their mean, a scale that
        # trains faster than the unit gain e^0, and the biases spread over the range of tanh.
        self.log_scale = nn.Parameter(torch.full((rows,), 0.5 - 0.5 * math.log(in_block)))
        self.bias = nn.Parameter(torch.empty(rows).uniform_(-1, 1))
        row, col = torch.arange(rows) // out_block, torch.arange(cols) // in_block
        self.register_buffer("diagonal", row[:, None] == col[None, :], persistent=False)
        self.register_buffer("lower", row[:, None] > col[None, :], persistent=False)

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        v = self.weight
        g = torch.where(self.diagonal, v, 0).exp() * self.diagonal + v * self.lower
        log_norm = 0.5 * torch.log(g.square().sum(-1, keepdim=True))
        weight = torch.exp(self.log_scale[:, None] - log_norm) * g
        log_weight = (self.log_scale[:, None] + v - log_norm).view(self.features, self.out_block, self.features, -1)
        log_diagonal = log_weight.diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        return F.linear(u, weight, self.bias), log_diagonal

    def extra_repr(self) -> str:
        return f"features={self.features}, in_block={self.in_block}, out_block={self.out_block}"


def _log_tanh_derivative(u: Tensor) -> Tensor:
    """log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|."""
    return 2 * (math.log(2) - u - F.softplus(-2 * u))


class BlockNeuralAutoregressive(Transform):
    r"""Block neural autoregressive transform (B-NAF): one monotonic autoregressive network.

    Data -> base (``inverse``, one pass): z = a * net(x, c) + (1 - a) * x, with
    net = L_K o tanh o ... o tanh o L_1, each L_k a :class:`MaskedBlockLinear` (block
    lower-triangular, positive diagonal blocks), the context added to the output of L_1, and
    a = sigmoid(gate) per feature, a gated residual connection. z_i depends on x_{<=i} and
    increases with x_i. The diagonal blocks of the Jacobian of net are accumulated in log
    space, log J_k = logsumexp(log W_k + log J_{k-1}) plus log tanh', so that
    ladj = sum_i log(a_i exp(log J_ii) + 1 - a_i). The residual (on by default) makes the map
    onto R^D: tanh bounds net, so without it targets outside a bounded image cannot be sampled
    and the density integrates to less than one.
    Base -> data (``forward``, D passes): feature by feature, z_i = f_i(x_{<i}, x_i) is solved
    for x_i by bisection to |x_i - x_i*| <= tol * max(1, |x_i*|) (tol = 1e-10 in float64, 1e-5
    in float32 by default), with implicit gradients (:func:`~.elementwise.numerical_inverse`).

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Reference: De Cao, Titov & Aziz. Block neural autoregressive flow. UAI 2019, section 3
    (the network and its log-abs-det-Jacobian), and its gated residual variant.
    arXiv:1904.04676.

    Args:
        features: number of features D.
        context_features: size of the context, 0 for none.
        hidden_features: hidden units *per feature* of each hidden layer (the hidden layers
            are features * hidden_features[k] wide, the paper's "10d", "20d", ...).
        residual: use the gated residual connection.
        tol: the bisection tolerance of ``forward`` (default by dtype, as above).
        max_iter: the largest number of bisection halvings.

    Raises:
        ValueError: if the transform has a context and none is given.
        ConvergenceError: in ``forward``, if a bisection does not meet its tolerance (e.g. a
            target outside the bounded image of a transform without residual).
    """

    def __init__(self, features: int, context_features: int = 0, hidden_features: Sequence[int] = (10, 10),
                 residual: bool = True, tol: float | None = None, max_iter: int = 200):
        super().__init__()
        blocks = [1, *hidden_features, 1]
        self.features, self.context_features, self.tol, self.max_iter = features, context_features, tol, max_iter
        self.layers = nn.ModuleList(MaskedBlockLinear(features, a, b) for a, b in zip(blocks[:-1], blocks[1:]))
        # The first layer's units tile the bulk of standardised data: biases in [-3, 3].
        nn.init.uniform_(self.layers[0].bias, -3, 3)
        self.context = nn.Linear(context_features, features * blocks[1]) if context_features else None
        self.gate = nn.Parameter(torch.zeros(features)) if residual else None

    def _network(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """(z, log dz_i/dx_i), both (*batch, features)."""
        if self.context is not None and context is None:
            raise ValueError(f"{type(self).__name__} was built with context_features={self.context_features} "
                             "and needs a context")
        u, log_jacobian = x, None
        for k, layer in enumerate(self.layers):
            u, log_weight = layer(u)
            if k == 0 and self.context is not None:
                u = u + self.context(context)
            log_jacobian = log_weight if log_jacobian is None else torch.logsumexp(
                log_weight.unsqueeze(-1) + log_jacobian.unsqueeze(-3), dim=-2)
            if k < len(self.layers) - 1:
                log_jacobian = log_jacobian + _log_tanh_derivative(u).unflatten(-1, (self.features, -1)).unsqueeze(-1)
                u = torch.tanh(u)
        log_diagonal = log_jacobian.flatten(-3).expand(x.shape)
        if self.gate is None:
            return u, log_diagonal
        log_a, log_1ma = F.logsigmoid(self.gate), F.logsigmoid(-self.gate)
        z = log_a.exp() * u + log_1ma.exp() * x
        return z, torch.logaddexp(log_a + log_diagonal, log_1ma.expand(x.shape))

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_diagonal = self._network(x, context)
        return z, log_diagonal.sum(-1)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(z)
        for i in range(self.features):
            def f(v: Tensor, i: int = i, prefix: Tensor = x) -> tuple[Tensor, Tensor]:
                u = torch.cat([prefix[..., :i], v.unsqueeze(-1), prefix[..., i + 1:]], -1)
                out, log_diagonal = self._network(u, context)
                return out[..., i], log_diagonal[..., i]

            x_i, _ = numerical_inverse(f, z[..., i], self.tol, self.max_iter)
            x = torch.cat([x[..., :i], x_i.unsqueeze(-1), x[..., i + 1:]], -1)
        return x, -self.inverse(x, context)[1]

    def extra_repr(self) -> str:
        return f"features={self.features}, context_features={self.context_features}, residual={self.gate is not None}"
