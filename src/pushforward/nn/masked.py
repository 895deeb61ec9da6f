r"""Masked linear layers stored packed: the kernel under :class:`~pushforward.nn.made.MADE`.

A chain of masked linear layers h_{l+1} = a((W_l * M_l) h_l + b_l) keeps only the blocks of
its weights that the masks use, in one flat parameter (:class:`_Layout`), and computes the
chain as one autograd node with a hand-written backward (:class:`_MaskedChain`). State dicts
hold the dense masked weights, so saved files do not depend on how the blocks are cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..core import replay_backward

__all__ = ["MaskedLinear", "SigmoidTanh"]


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
    128 rows on narrow inputs, run at a low rate (``benchmarks/made_blocks.py``).

    This is also the rule of packed layout version 1, in which pushforward 0.1 saved a
    ``packed`` vector; :meth:`_MaskedLayers._load_from_state_dict` reads such files with it.
    Changing the rule for speed needs a frozen copy of this one for those files (the test on
    ``tests/data/made_packed_v1.pt`` fails otherwise)."""
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


def _composed_chain(x: Tensor, layers: Sequence[tuple[Tensor, Tensor]], activation: nn.Module | None) -> Tensor:
    """The chain of :class:`_MaskedChain` by composed operations on the dense masked weights.

    Shapes: x (N, in); layers: (weight (out, in), bias (out,)) each; returns (N, out of the last).
    """
    for k, (weight, bias) in enumerate(layers):
        x = nn.functional.linear(x, weight, bias)
        if k + 1 < len(layers):
            x = activation(x)
    return x


class _MaskedChain(torch.autograd.Function):
    """h_{l+1} = a((W_l * M_l) h_l + b_l) for the layers of a :class:`_Layout` (no ``a`` after the
    last), each run one product of its block, and the gradients of x and of the flat vector.

    The activations are kept feature-major, (features, N), so that each run reads a range of
    rows of its input and writes a range of rows of its output, and the products are
    W h^T instead of h W^T: on the CPU torch's matrix products of these shapes ran about 10 %
    faster that way. Only the output is batch-major (transposed as it is written).

    A backward asked for a graph (``create_graph=True``: double backward, gradient penalties)
    is recomputed by plain autograd on the dense masked weights (:func:`_composed_chain`), so
    that second derivatives are exact.

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
    def backward(ctx, grad: Tensor):
        flat, *saved = ctx.saved_tensors
        layout = ctx.layout
        if torch.is_grad_enabled():  # a gradient with a graph: second derivatives by plain autograd
            return *replay_backward(lambda x, flat: _composed_chain(x, layout.unpack(flat * ctx.free), ctx.activation),
                                    (saved[0], flat), ctx.needs_input_grad, (grad,)), None, None, None
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
    backward (a double backward recomputes it by plain autograd; no ``torch.func`` transforms).

    State dicts hold, per layer, the dense masked weight (out, in) and bias (out,) under the
    keys of the layers before packing (``legacy``), not ``packed``: a saved file does not depend
    on how the layout cuts the blocks. Loading reads that format (a ``mask`` key beside them, as
    the unpacked layers saved, is applied) and the ``packed`` vector of layout version 1.
    """

    def __init__(self, masks: Sequence[Tensor], blocks: int | Sequence[int | None] | None, activation: nn.Module | None,
                 legacy: Sequence[str]):
        super().__init__()
        self._legacy = legacy  # per layer, the key prefix of its weight, bias and mask before packing
        self._masks, self._blocks = [m.bool() for m in masks], blocks  # for files of layout version 1
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

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for layer, (weight, bias) in zip(self._legacy, self.dense()):
            destination[f"{prefix}{layer}weight"] = weight if keep_vars else weight.detach()
            destination[f"{prefix}{layer}bias"] = bias if keep_vars else bias.detach()
        for name, buffer in self._buffers.items():
            if buffer is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = buffer if keep_vars else buffer.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        legacy = [[f"{prefix}{layer}{key}" for key in ("weight", "bias", "mask")] for layer in self._legacy]
        if prefix + "packed" in state_dict:  # layout version 1: unpack with its rule, repack with ours
            v1 = _Layout(self._masks, self._blocks)
            dense = v1.unpack(state_dict.pop(prefix + "packed").to(self.packed.dtype))
            state_dict |= {key: tensor for (w, b, _), pair in zip(legacy, dense) for key, tensor in zip((w, b), pair)}
        if all(w in state_dict for w, _, _ in legacy):  # the dense masked weights (and masks, if saved)
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
