r"""MADE: masked autoencoder for distribution estimation, the autoregressive conditioner."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .mlp import cat_context

__all__ = ["MADE", "MaskedLinear", "SigmoidTanh"]


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


def _default_blocks(out_features: int, in_features: int) -> int:
    """4 runs for layers of at least 512 outputs and 256 inputs, 2 for those of at least 128
    outputs and 2^15 weights, else 1: on the CPU, block products of fewer than 64 rows, or of
    128 rows on narrow inputs, run at a low rate (``benchmarks/made_blocks.py``)."""
    if out_features >= 512 and in_features >= 256:
        return 4
    return 2 if out_features >= 128 and out_features * in_features >= 2**15 else 1


@dataclass(frozen=True)
class _Run:
    """Rows ``rows`` of a layer use only its columns ``columns``: a block of weights stored row
    by row."""

    rows: slice
    columns: slice
    all_rows: bool  # the run covers every row (and ``columns`` every column): no slicing needed
    all_columns: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.stop - self.rows.start, self.columns.stop - self.columns.start


class _Operands(NamedTuple):
    """What one run's product needs: its bias as a column (rows, 1) and its block (rows,
    columns), views of the flat vector, and the layer's rows and input features it uses (None:
    all of them, no slicing)."""

    bias: Tensor
    block: Tensor
    columns: slice | None
    rows: slice | None


@dataclass(frozen=True)
class _Layer:
    """One masked layer of a :class:`_Layout`: its runs, then its bias, from piece ``first`` on."""

    in_features: int
    out_features: int
    runs: tuple[_Run, ...]
    first: int


def _runs(mask: Tensor, blocks: int | None) -> list[_Run]:
    """The runs of one (out, in) mask."""
    out_features, in_features = mask.shape
    if blocks is None:
        blocks = _default_blocks(out_features, in_features)
    if blocks < 1:
        raise ValueError(f"blocks must be at least 1, got {blocks}")
    plan = _block_plan(mask, blocks) if blocks > 1 else None
    if plan is None:  # one run over the columns used at all
        used = mask.any(0).nonzero().flatten()
        plan = [(slice(0, out_features), slice(int(used[0]), int(used[-1]) + 1) if len(used) else slice(0, 0))]
    return [_Run(rows, columns, rows.stop - rows.start == out_features, columns.stop - columns.start == in_features)
            for rows, columns in plan]


class _Layout:
    """Where the weights of a chain of masked linear layers live in one flat vector.

    Each layer's rows are cut into runs (:func:`_block_plan`); a run stores only the block of
    columns its rows use, so that the zero blocks of the mask are neither stored, multiplied
    nor updated by the optimiser. Inside a block, the entries that the mask zeroes (all in
    the staircase of its last columns) are stored as zeros; ``free`` is False there.
    The vector holds, layer after layer, each run's block row by row, then the layer's bias.
    """

    def __init__(self, masks: Sequence[Tensor], blocks: int | Sequence[int | None] | None):
        self.layers: list[_Layer] = []
        self.sizes: list[int] = []  # of the pieces: runs and biases
        free = []
        per_layer = list(blocks) if isinstance(blocks, Sequence) else [blocks] * len(masks)
        if len(per_layer) != len(masks):
            raise ValueError(f"blocks gives {len(per_layer)} layers' runs, the chain has {len(masks)} layers")
        for mask, layer_blocks in zip(masks, per_layer):
            mask = mask.bool()
            runs = _runs(mask, layer_blocks)
            self.layers.append(_Layer(mask.shape[1], mask.shape[0], tuple(runs), len(self.sizes)))
            self.sizes += [run.shape[0] * run.shape[1] for run in runs] + [mask.shape[0]]
            free += [mask[run.rows, run.columns].flatten() for run in runs] + [mask.new_ones(mask.shape[0])]
        self.free = torch.cat(free)
        self._operands: tuple[Tensor, int, list[list[_Operands]]] | None = None  # see operands()

    def __getstate__(self) -> dict:
        # the cached views belong to one parameter; a copy (deepcopy, as sbi makes of its best
        # estimator, or pickle) rebuilds them from its own
        return {**self.__dict__, "_operands": None}

    def operands(self, flat: Tensor) -> list[list[_Operands]]:
        """Per layer, the :class:`_Operands` of each run, as views of ``flat``; for a parameter,
        kept until another tensor or storage comes (making the views cost about a sixth of a
        digits MADE's forward pass on the CPU)."""
        cached = self._operands
        if cached is not None and cached[0] is flat and cached[1] == flat.data_ptr():
            return cached[2]
        operands = [[_Operands((bias if run.all_rows else bias[run.rows]).unsqueeze(1), block,
                               None if run.all_columns else run.columns, None if run.all_rows else run.rows)
                     for run, block in zip(layer.runs, blocks)]
                    for layer, (blocks, bias) in zip(self.layers, self.split(flat))]
        self._operands = (flat, flat.data_ptr(), operands) if isinstance(flat, nn.Parameter) else None
        return operands

    def split(self, flat: Tensor) -> list[tuple[list[Tensor], Tensor]]:
        """Per layer, the block of each run (rows, columns) and the bias, as views of ``flat``."""
        pieces = flat.split(self.sizes)
        return [([pieces[layer.first + j].view(run.shape) for j, run in enumerate(layer.runs)],
                 pieces[layer.first + len(layer.runs)]) for layer in self.layers]

    def pack(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
        """The flat vector of dense (out, in) weights and (out,) biases, masked entries zeroed."""
        pieces = []
        for layer, weight, bias in zip(self.layers, weights, biases):
            pieces += [weight[run.rows, run.columns].flatten() for run in layer.runs] + [bias]
        return torch.cat(pieces) * self.free.to(weights[0].device)

    def unpack(self, flat: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The dense (out, in) weight and (out,) bias of each layer (differentiable in ``flat``)."""
        dense = []
        for layer, (blocks, bias) in zip(self.layers, self.split(flat)):
            weight = flat.new_zeros(layer.out_features, layer.in_features)
            for run, block in zip(layer.runs, blocks):
                weight[run.rows, run.columns] = block
            dense.append((weight, bias))
        return dense


def _tanh_through_sigmoid_(y: Tensor) -> Tensor:
    """tanh(y) = 2 sigmoid(2y) - 1 in place; in float32 within 2e-7 of ``torch.tanh``."""
    return y.mul_(2).sigmoid_().mul_(2).sub_(1)


class SigmoidTanh(nn.Module):
    r"""tanh computed as 2 sigmoid(2y) - 1: the same function as ``nn.Tanh`` (within 2e-7 in
    float32), for the CPUs whose tanh is slow.

    torch's CPU tanh is about 5x slower than its sigmoid on some hosts (AMD EPYC), where a MADE
    of tanh units trains faster with this form; on others (Intel Xeon) the three extra passes
    cost 2-3x a ``tanh_``. The choice is the user's, never a timing's, so that one seed gives
    the same numbers on any host: ``pf.MAF(..., activation=SigmoidTanh)``. A MADE computes its
    density and its samples with the same formula.

    Shapes: any; elementwise.
    """

    def forward(self, y: Tensor) -> Tensor:
        return _tanh_through_sigmoid_(y.clone())


def _activate(activation: nn.Module, y: Tensor) -> tuple[Tensor, Tensor]:
    """(h, what its gradient needs): in place for ReLU and tanh, whose gradient needs only h."""
    if isinstance(activation, nn.ReLU):
        return y.relu_(), y
    if isinstance(activation, nn.Tanh):
        return y.tanh_(), y
    if isinstance(activation, SigmoidTanh):
        return _tanh_through_sigmoid_(y), y
    return activation(y), y


def _activation_grad(activation: nn.Module, saved: Tensor, grad: Tensor) -> Tensor:
    """dL/dy from dL/dh, with ``saved`` from :func:`_activate` (h for ReLU and tanh, else y)."""
    if isinstance(activation, nn.ReLU):
        return torch.ops.aten.threshold_backward(grad, saved, 0)
    if isinstance(activation, (nn.Tanh, SigmoidTanh)):
        return torch.ops.aten.tanh_backward(grad, saved)
    with torch.enable_grad():
        y = saved.detach().requires_grad_()
        return torch.autograd.grad(activation(y), y, grad)[0]


class _MaskedChain(torch.autograd.Function):
    """h_{l+1} = a((W_l * M_l) h_l + b_l) for the layers of a :class:`_Layout` (no ``a`` after the
    last), each run one product of its block, and the gradients of x and of the flat vector.

    The activations are kept feature-major, (features, N), so that each run reads a range of
    rows of its input and writes a range of rows of its output, and the products are
    W h^T instead of h W^T: on the CPU torch's matrix products of these shapes ran about 10 %
    faster that way. Only the output is batch-major (transposed as it is written).

    Shapes: x (N, in); flat (size,); free (size,): 1 where ``flat`` holds a weight the mask
    keeps or a bias, 0 where it holds a masked-out zero (whose gradient is then zeroed, in one
    pass over the whole gradient: cheaper than masking the runs' blocks one by one);
    output (N, out of the last layer).
    """

    @staticmethod
    def forward(ctx, x: Tensor, flat: Tensor, layout: _Layout, activation: nn.Module | None,
                free: Tensor) -> Tensor:
        h, saved = x.t(), [x]  # h: the layer's input, (features, N)
        operands = layout.operands(flat)
        for k, (layer, runs) in enumerate(zip(layout.layers, operands)):
            last = k + 1 == len(operands)
            out = x.new_empty(len(x), layer.out_features) if last else x.new_empty(layer.out_features, len(x))
            y = out.t() if last else out
            for bias, block, columns, rows in runs:
                torch.addmm(bias, block, h if columns is None else h[columns], out=y if rows is None else y[rows])
            if not last:
                h, kept = _activate(activation, y)
                saved += [kept, h]
        ctx.layout, ctx.activation, ctx.free, ctx.operands = layout, activation, free, operands
        ctx.save_for_backward(flat, *saved)  # flat: for autograd's check that it is not modified
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        flat, *saved = ctx.saved_tensors
        layout = ctx.layout
        grad_flat = torch.empty_like(flat)
        grad_parts = layout.split(grad_flat)
        grad = grad.t()
        for k in range(len(grad_parts) - 1, -1, -1):
            runs, (grad_blocks, grad_bias) = ctx.operands[k], grad_parts[k]
            h = saved[2 * k] if k else saved[0].t()
            torch.sum(grad, 1, out=grad_bias)
            grad_h = None
            if k or ctx.needs_input_grad[0]:  # the first layer's input gradient batch-major, as x
                one = len(runs) == 1 and runs[0].columns is None
                grad_h = h.new_empty(h.shape[::-1]).t() if k == 0 else h.new_empty(h.shape)
                if not one:
                    grad_h.zero_()
            for (_, block, columns, rows), grad_block in zip(runs, grad_blocks):
                g = grad if rows is None else grad[rows]
                torch.mm(g, (h if columns is None else h[columns]).t(), out=grad_block)
                if grad_h is not None:
                    if one:
                        torch.mm(block.t(), g, out=grad_h)
                    else:
                        (grad_h if columns is None else grad_h[columns]).addmm_(block.t(), g)
            grad = _activation_grad(ctx.activation, saved[2 * k - 1], grad_h) if k else grad_h
        return (None if grad is None else grad.t()), grad_flat.mul_(ctx.free), None, None, None


class _MaskedLayers(nn.Module):
    """A chain of masked linear layers whose weights and biases are one flat parameter, ``packed``.

    The masked-out entries stored inside a run are zeros with zero gradients, which keeps them
    zero under any optimiser whose step is zero for a zero gradient and zero state (SGD, Adam,
    AdamW, ...). Anything else that writes to the parameter in place (an initialisation, a
    perturbation, ``load_state_dict``) raises its version counter, and the next forward pass
    zeroes those entries again; writes through ``.data`` bypass the counter: call
    :meth:`reset_masked_` after them. The chain is one autograd node with a hand-written
    backward: first derivatives only (no double backward, no ``torch.func`` transforms).
    """

    def __init__(self, masks: Sequence[Tensor], blocks: int | Sequence[int | None] | None, activation: nn.Module | None,
                 legacy: Sequence[str]):
        super().__init__()
        self._legacy = legacy  # per layer, the key prefix of its weight, bias and mask before packing
        self._layout = _Layout(masks, blocks)
        self.activation = activation
        weights, biases = [], []
        for mask in masks:  # nn.Linear's initialisation, layer by layer
            weight = torch.empty(mask.shape)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(mask.shape[1]) if mask.shape[1] else 0.0
            weights.append(weight)
            biases.append(torch.empty(mask.shape[0]).uniform_(-bound, bound))
        self.packed = nn.Parameter(self._layout.pack(weights, biases))
        self.register_buffer("free", self._layout.free.to(self.packed.dtype), persistent=False)
        self._clean_version: int | None = None

    def reset_masked_(self) -> None:
        """Zero the stored masked-out entries of ``packed`` in place."""
        with torch.no_grad():
            self.packed.mul_(self.free)
        self._clean_version = self.packed._version

    def _flat(self) -> Tensor:
        """``packed`` with its masked-out entries zero (in place when it was written to since)."""
        flat = self.packed
        # a tensor swapped in (torch.func.functional_call) is not ours to write; under
        # torch.compile the version counter would recompile every step: mask out of place
        if not isinstance(flat, nn.Parameter) or torch.compiler.is_compiling():
            return flat * self.free
        if flat._version != self._clean_version:
            self.reset_masked_()
        return flat

    def _chain(self, x: Tensor) -> Tensor:
        y = _MaskedChain.apply(x.reshape(-1, x.shape[-1]), self._flat(), self._layout, self.activation,
                               self.free)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def dense(self) -> list[tuple[Tensor, Tensor]]:
        """The dense masked weight (out, in) and bias (out,) of each layer, differentiable."""
        return self._layout.unpack(self._flat())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state dicts from before the packed storage: one (weight, bias, mask) per layer
        legacy = [[f"{prefix}{layer}{key}" for key in ("weight", "bias", "mask")] for layer in self._legacy]
        if prefix + "packed" not in state_dict and all(w in state_dict for w, _, _ in legacy):
            weights = [state_dict.pop(w) * state_dict.pop(m, 1.0) for w, _, m in legacy]
            state_dict[prefix + "packed"] = self._layout.pack(weights, [state_dict.pop(b) for _, b, _ in legacy])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MaskedLinear(_MaskedLayers):
    r"""Linear layer y = (W * M) x + b with a fixed binary mask M, storing only the blocks of W
    that M uses.

    The rows of M are cut into ``blocks`` equal runs when each uses a contiguous range of
    columns (the staircase masks of :class:`MADE`, whose hidden units are sorted by
    degree, for natural or reversed orders); each run stores and multiplies only its range:
    for degrees spread evenly about (blocks + 1) / (2 blocks) of W (0.625 for 4 blocks),
    forward, backward and optimiser step. Otherwise one run of the columns M uses. By default
    (``blocks=None``) layers of at least 512 outputs and 256 inputs use 4 blocks (at least 128
    rows each), layers of at least 128 outputs and 2^15 weights 2 (a digits MADE's 64 -> 512
    input and 512 -> 128 output layers, a 2 x 256 MADE's square layer), smaller ones one: on 2
    CPU threads products of fewer rows or narrow inputs run at a low rate (``python -m
    benchmarks.made_blocks --settings auto,4``: 4 blocks in every layer made MAFs of 8-32-32 and
    16-128-128 MADEs 0.58x and 0.78x as fast; for a digits-sized MAF see
    ``--settings 1-4-1,auto,dense``). W and b are stored in one flat parameter
    ``packed`` (see :class:`_MaskedLayers` for the masked-out entries kept there).

    Shapes: input (*batch, in_features); mask (out_features, in_features);
    output (*batch, out_features).

    Args:
        mask: the binary mask M.
        blocks: the number of row runs (1: one run; None: by the layer's size, as above).

    Raises:
        ValueError: if blocks < 1.
    """

    def __init__(self, mask: Tensor, blocks: int | None = None):
        super().__init__([mask], blocks, None, legacy=[""])
        self.in_features, self.out_features = mask.shape[1], mask.shape[0]

    @property
    def blocks(self) -> int:
        """The number of row runs."""
        return len(self._layout.layers[0].runs)

    @property
    def weight(self) -> Tensor:
        """The dense masked weight W * M (out_features, in_features)."""
        return self.dense()[0][0]

    @property
    def bias(self) -> Tensor:
        """b (out_features,)."""
        return self.dense()[0][1]

    def forward(self, x: Tensor) -> Tensor:
        return self._chain(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.blocks}"


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
