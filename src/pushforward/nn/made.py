r"""MADE: masked autoencoder for distribution estimation, the autoregressive conditioner."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .mlp import cat_context, hidden_activation

__all__ = ["MADE", "MaskedLinear"]


class _BlockProduct(torch.autograd.Function):
    """y[:, rows_g] = x[:, columns_g] @ W[rows_g, columns_g]^T + b[rows_g] for row and column
    ranges that cover every non-zero of W, and its gradients (zero outside the blocks).

    Shapes: x (N, in); W (out, in); b (out,); y (N, out).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, blocks: list[tuple[slice, slice]]) -> Tensor:
        y = x.new_empty(len(x), len(weight))
        for r, c in blocks:
            torch.addmm(bias[r], x[:, c], weight[r, c].t(), out=y[:, r])
        ctx.blocks = blocks
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for r, c in ctx.blocks:
            if c.stop == c.start:
                continue
            g = grad[:, r]
            if grad_x is not None:
                grad_x[:, c].addmm_(g, weight[r, c])
            if grad_w is not None:
                grad_w[r, c] = g.t() @ x[:, c]
        grad_b = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def _block_plan(mask: Tensor, blocks: int) -> list[tuple[slice, slice]] | None:
    """Cut the rows of ``mask`` into ``blocks`` equal runs, each with the range of columns its
    rows use; None if some run's columns are not contiguous, or if that saves nothing."""
    cuts = [round(g * len(mask) / blocks) for g in range(blocks + 1)]
    plan = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b == a:
            continue
        used = mask[a:b].any(0).nonzero().flatten()
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
        if len(used) != hi - lo:
            return None
        plan.append((slice(a, b), slice(lo, hi)))
    covered = sum((r.stop - r.start) * (c.stop - c.start) for r, c in plan)
    return plan if covered < mask.numel() else None


# By default, layers with at least this many outputs and inputs use 4 blocks: block products of
# fewer than 128 rows or on narrow inputs run at a low rate on the CPU (benchmarks/made_blocks.py).
_BLOCKED_SHAPE = (512, 256)


class MaskedLinear(nn.Linear):
    r"""Linear layer y = (W * M) x + b with a fixed binary mask M, skipping the zero blocks of M.

    On the CPU, when the rows of M cut into ``blocks`` equal runs each use a contiguous range
    of columns (the staircase masks of :class:`MADE`, whose hidden units are sorted by degree,
    for natural or reversed orders), each run multiplies only its range: for degrees spread
    evenly about (blocks + 1) / (2 blocks) of the dense products (0.625 for 4 blocks), forward
    and backward. Otherwise, and on accelerators (where the number of kernels matters more
    than their size), one dense masked product. By default (``blocks=None``) layers of at
    least 512 outputs and 256 inputs use 4 blocks (at least 128 rows each) and smaller ones
    the dense product: on 2 CPU threads (``python -m benchmarks.made_blocks``) blocks in every
    layer made MNIST-sized MADEs (784-1024-1024) 1.08-1.17x faster to train, but digits-sized
    ones (64-512-512) 0.84-1.05x and tiny ones (8-32-32) 0.45x, the narrow input and output
    layers of those losing what the square hidden layers gain; this default (``--blocks
    1,auto``) made digits MAF(5, 2x512) 1.05x faster and a 784-512-512 MADE 1.21x.

    Shapes: input (*batch, in_features); mask (out_features, in_features);
    output (*batch, out_features).

    Args:
        mask: the binary mask M.
        bias: whether to add b.
        blocks: the number of row runs (1: always one dense product; None: 4 for layers of
            at least 512 outputs and 256 inputs, else 1).

    Raises:
        ValueError: if blocks < 1.
    """

    def __init__(self, mask: Tensor, bias: bool = True, blocks: int | None = None):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        if blocks is None:
            blocks = 4 if mask.shape[0] >= _BLOCKED_SHAPE[0] and mask.shape[1] >= _BLOCKED_SHAPE[1] else 1
        if blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {blocks}")
        self.register_buffer("mask", mask.to(self.weight.dtype))
        self.blocks = _block_plan(mask.bool(), blocks) if blocks > 1 and bias else None

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.mask
        if self.blocks is None or x.device.type != "cpu":
            return nn.functional.linear(x, weight, self.bias)
        y = _BlockProduct.apply(x.reshape(-1, self.in_features), weight, self.bias, self.blocks)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        blocks = "dense" if self.blocks is None else f"{len(self.blocks)} blocks"
        return f"{super().extra_repr()}, {blocks}"


class MADE(nn.Module):
    r"""Masked autoencoder whose output for feature i depends only on features before i.

    Each input feature i gets the degree order[i] + 1 (1..D), context inputs degree 0, hidden
    units degrees that cycle through [1, D - 1] ([0, D - 1] with context, so that units of
    degree 0 carry the context to every output); a unit sees a unit of lower or equal degree,
    an output of degree d sees hidden units of degree < d. Hence output i depends on the
    features j with order[j] < order[i] and on the whole context, for any number of hidden
    layers and any order. Hidden units are kept sorted by degree, so that every mask is a
    staircase of which :class:`MaskedLinear` multiplies only the non-zero blocks.

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
        blocks: row runs of each :class:`MaskedLinear` (1: dense masked products; None: its
            size-based default).

    Raises:
        ValueError: if ``order`` is not a permutation of range(features).
    """

    def __init__(self, features: int, params: int, context_features: int = 0,
                 hidden_features: Sequence[int] = (64, 64), order: Sequence[int] | None = None,
                 activation: type[nn.Module] = nn.ReLU, blocks: int | None = None):
        super().__init__()
        order = torch.arange(features) if order is None else torch.as_tensor(order)
        if sorted(order.tolist()) != list(range(features)):
            raise ValueError(f"MADE order must be a permutation of range({features}), got {order.tolist()}")
        self.features, self.params, self.context_features = features, params, context_features
        self.register_buffer("order", order.clone())
        # the inputs (context, then features) sorted by degree, for generate()
        self.register_buffer("input_order", torch.cat([torch.arange(context_features),
                                                       context_features + torch.argsort(order)]), persistent=False)
        low = 0 if context_features else 1
        span = max(features - low, 1)
        degrees = torch.cat([torch.zeros(context_features, dtype=torch.long), order + 1])
        layers: list[nn.Module] = []
        self._units: list[list[int]] = []  # per hidden layer: how many units have degree <= k, k = 0..D
        for width in hidden_features:
            hidden = torch.sort(low + torch.arange(width) % span).values  # sorted: block-triangular masks
            mask = hidden[:, None] >= degrees[None, :]
            layers += [MaskedLinear(mask, blocks=blocks), hidden_activation(activation)]
            self._units.append(torch.searchsorted(hidden, torch.arange(features + 1), right=True).tolist())
            degrees = hidden
        out_degrees = (order + 1).repeat_interleave(params)
        layers.append(MaskedLinear(out_degrees[:, None] > degrees[None, :], blocks=blocks))
        self.network = nn.Sequential(*layers)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = cat_context(x, context, self.context_features, "MADE")
        return self.network(x).unflatten(-1, (self.features, self.params))

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
        linears, activations = self.network[::2], self.network[1::2]
        hidden = [known[..., :0] for _ in activations]  # the units computed so far, in degree order
        for position, i in enumerate(torch.argsort(self.order).tolist()):
            below = known
            for layer, (linear, activation) in enumerate(zip(linears, activations)):
                done, total = self._units[layer][position - 1] if position else 0, self._units[layer][position]
                if total > done:
                    rows = slice(done, total)
                    weight = linear.weight[rows] * linear.mask[rows]
                    weight = weight[:, self.input_order] if layer == 0 else weight
                    new = activation(nn.functional.linear(below, weight[:, : below.shape[-1]], linear.bias[rows]))
                    hidden[layer] = torch.cat([hidden[layer], new], -1)
                below = hidden[layer]
            rows, out = slice(i * self.params, (i + 1) * self.params), linears[-1]
            weight = (out.weight[rows] * out.mask[rows])[:, : below.shape[-1]]
            x_i = step(i, nn.functional.linear(below, weight, out.bias[rows]))
            known = torch.cat([known, x_i.unsqueeze(-1)], -1)
        return known[..., self.context_features :][..., self.order]

    def extra_repr(self) -> str:
        return f"features={self.features}, params={self.params}, context_features={self.context_features}"
