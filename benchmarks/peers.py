r"""The same flow built by each library: pushforward, zuko, nflows, normflows and torchflows.

Every builder takes a :class:`Spec` (architecture, features, layers, hidden sizes, bins, bound)
and returns a :class:`Model`: the ``nn.Module`` that holds the parameters, and two functions in
*one* convention, whatever the library's own:

- ``log_prob(x)``: log-density of data ``x`` (N, D) in nats, shape (N,), in the space of ``x``
  (the standardised data the benchmark feeds every library);
- ``sample(n)``: ``n`` draws, shape (n, D), in that same space.

Direction conventions differ: pushforward's forward is base -> data (as torch.distributions);
zuko, nflows and torchflows transform data -> base; normflows' flows run base -> data but its
nflows-derived autoregressive and spline layers compute data -> base in ``forward``, so they are
wrapped in an inverting adapter (as normflows' own spline wrappers do). The 2-D density check
of ``compare.py`` (mass of exp(log_prob) on a grid) confirms that each ``log_prob`` is a
normalised density in the data space.

Architectures (:data:`ARCHITECTURES`): "maf" (affine MADE layers, orders alternating natural /
reversed), "realnvp" (affine coupling, alternating halves), "nsf-coupling" and "nsf-ar"
(rational-quadratic splines with K bins on [-B, B] and identity tails, coupling or MADE). Where a
library cannot express exactly the same model, the difference is listed in ``Model.notes`` and
printed by the benchmark: parametrisation of the scale, a permutation layer instead of a MADE
order, half-split instead of even/odd masks, or a fixed activation.

Peers' code is imported and run, never copied: the few classes below are adapters between
interfaces (argument order, direction, a conditioner that ignores a context argument).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import Tensor, nn

__all__ = ["Spec", "Model", "Unsupported", "ARCHITECTURES", "LIBRARIES", "PEERS", "available", "build",
           "parameter_count"]

ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "maf": (512, 512),
    "realnvp": (256, 256),
    "nsf-coupling": (256, 256),
    "nsf-ar": (256, 256),
}
"""Architecture name -> default hidden sizes (the issue's MADE 2x512 for MAF, 2x256 otherwise)."""

PEERS: tuple[str, ...] = ("zuko", "nflows", "normflows", "torchflows")
LIBRARIES: tuple[str, ...] = ("pushforward", *PEERS)


class Unsupported(Exception):
    """A library cannot build the requested architecture (the message says why)."""


@dataclass(frozen=True)
class Spec:
    """One architecture at one size.

    Args:
        arch: a key of :data:`ARCHITECTURES`.
        features: data dimension D.
        transforms: number of coupling / autoregressive layers.
        hidden: hidden layer sizes of each conditioner (None: the architecture's default).
        bins: spline bins K (NSF only).
        bound: spline bound B (NSF only); identity outside [-B, B].
        activation: "tanh" or "relu", the MADE's non-linearity (autoregressive architectures;
            coupling conditioners keep ReLU). tanh by default: the one every library can use
            (torchflows' MADE is tanh only), so that the models are the same.
    """

    arch: str
    features: int
    transforms: int = 5
    hidden: tuple[int, ...] | None = None
    bins: int = 8
    bound: float = 5.0
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"unknown activation {self.activation!r}; choose relu or tanh")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose from {', '.join(ARCHITECTURES)}")
        if self.hidden is None:
            object.__setattr__(self, "hidden", ARCHITECTURES[self.arch])

    @property
    def autoregressive(self) -> bool:
        """Whether sampling takes D passes per layer (MADE layers)."""
        return self.arch in ("maf", "nsf-ar")

    @property
    def spline(self) -> bool:
        return self.arch.startswith("nsf")


@dataclass
class Model:
    """A built flow with ``log_prob`` and ``sample`` in pushforward's convention (see the module)."""

    library: str
    spec: Spec
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    notes: list[str] = field(default_factory=list)


# (parameter, mask) attribute pairs of masked layers: the peers' MaskedLinear (nn.Linear with a
# ``mask`` buffer) and pushforward's packed MADE storage (``packed`` with ``free``)
_MASKED = (("weight", "mask"), ("packed", "free"))


def parameter_count(module: nn.Module, stored: bool = False) -> int:
    """Number of free trainable scalars: MADE weights that a mask fixes at zero are not counted,
    whether a library stores them (every peer: dense masked matrices) or not (pushforward
    stores only the blocks a mask uses). ``stored=True``: every stored scalar instead."""
    total = sum(p.numel() for p in module.parameters() if p.requires_grad)
    if stored:
        return total
    for m in module.modules():
        for weight, mask in _MASKED:
            w, fixed = getattr(m, weight, None), getattr(m, mask, None)
            if isinstance(w, nn.Parameter) and isinstance(fixed, torch.Tensor) and fixed.shape == w.shape:
                total -= int((fixed == 0).sum())
    return total


def available(library: str) -> str | None:
    """None if ``library`` can be imported, else the reason it cannot."""
    if library not in LIBRARIES:
        return f"unknown library {library!r}"
    if importlib.util.find_spec(library) is None:
        return f"{library} is not installed (pip install -e '.[bench]')"
    try:
        importlib.import_module(library)
    except Exception as error:  # a broken install: report it, benchmark the others
        return f"{library} fails to import: {type(error).__name__}: {error}"
    return None


def usable(libraries: Sequence[str], log: Callable[[str], None] = print) -> list[str]:
    """The libraries of ``libraries`` that import (pushforward always), saying why the others are skipped."""
    kept = []
    for name in libraries:
        reason = None if name == "pushforward" else available(name)
        if reason is None:
            kept.append(name)
        else:
            log(f"{reason}: skipped")
    return kept


def build(library: str, spec: Spec) -> Model:
    """Build ``spec`` with ``library``'s own classes.

    Raises:
        Unsupported: if the library cannot express the architecture (e.g. unequal hidden sizes
            where it takes one width).
        ImportError: if the library is not installed.
    """
    builders: dict[str, Callable[[Spec], Model]] = {
        "pushforward": _pushforward, "zuko": _zuko, "nflows": _nflows, "normflows": _normflows,
        "torchflows": _torchflows,
    }
    if library not in builders:
        raise ValueError(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)}")
    return builders[library](spec)


def _one_width(library: str, spec: Spec) -> tuple[int, int]:
    """(width, number of hidden layers) for libraries whose conditioners take a single width."""
    if len(set(spec.hidden)) != 1:
        raise Unsupported(f"{library} conditioners take one hidden width, got {spec.hidden}")
    return spec.hidden[0], len(spec.hidden)


# --- pushforward -----------------------------------------------------------------------------

def _pushforward(spec: Spec) -> Model:
    import pushforward as pf

    d, t, h = spec.features, spec.transforms, spec.hidden
    act = {"activation": nn.Tanh} if spec.activation == "tanh" and spec.autoregressive else {}
    if spec.arch == "maf":
        flow = pf.MAF(d, transforms=t, hidden_features=h, **act)
    elif spec.arch == "realnvp":
        flow = pf.RealNVP(d, transforms=t, hidden_features=h)
    else:
        flow = pf.NSF(d, transforms=t, hidden_features=h, bins=spec.bins, bound=spec.bound,
                      autoregressive=spec.arch == "nsf-ar", **act)
    return Model("pushforward", spec, flow, flow.log_prob, lambda n: flow.sample((n,)))


# --- zuko ------------------------------------------------------------------------------------

def _zuko(spec: Spec) -> Model:
    from functools import partial

    import zuko
    from zuko.transforms import MonotonicRQSTransform

    d, t, h = spec.features, spec.transforms, spec.hidden
    notes = []
    if spec.spline:
        spline = dict(univariate=partial(MonotonicRQSTransform, bound=spec.bound),
                      shapes=[(spec.bins,), (spec.bins,), (spec.bins - 1,)])
        notes.append("spline derivatives: zuko's softplus parametrisation with minimum slope 1e-3")
    else:
        spline = {}
        notes.append("affine log-scale soft clamp a / (1 + |a| / 6.9) (pushforward: 5 tanh(a / 5))")
    if spec.arch in ("maf", "nsf-ar"):
        act = {"activation": nn.Tanh} if spec.activation == "tanh" else {}
        flow = zuko.flows.MAF(d, transforms=t, hidden_features=h, **spline, **act)
    else:
        flow = zuko.flows.RealNVP(d, transforms=t, hidden_features=h, **spline)
    # zuko builds a torch.distributions object per call: that cost is part of its API.
    return Model("zuko", spec, flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)), notes)


# --- nflows ----------------------------------------------------------------------------------

class _IgnoreContext(nn.Module):
    """Adapter: a conditioner called as net(x, context) by a peer's coupling layer, with no context."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def _nflows(spec: Spec) -> Model:
    from nflows import distributions, flows, transforms
    from nflows.nn.nets import MLP
    from nflows.utils.torchutils import create_alternating_binary_mask

    d, t = spec.features, spec.transforms
    width, depth = _one_width("nflows", spec)
    notes: list[str] = []
    act = torch.tanh if spec.activation == "tanh" else torch.relu

    def net(i: int, o: int) -> nn.Module:
        return _IgnoreContext(MLP((i,), (o,), list(spec.hidden)))

    layers: list[nn.Module] = []
    for i in range(t):
        mask = create_alternating_binary_mask(d, even=i % 2 == 0)
        if spec.arch == "maf":
            layer = transforms.MaskedAffineAutoregressiveTransform(
                d, width, num_blocks=depth - 1, use_residual_blocks=False, activation=act)
        elif spec.arch == "nsf-ar":
            layer = transforms.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                d, width, num_bins=spec.bins, tails="linear", tail_bound=spec.bound, num_blocks=depth - 1,
                use_residual_blocks=False, activation=act)
        elif spec.arch == "realnvp":
            layer = transforms.AffineCouplingTransform(mask, net)
        else:
            layer = transforms.PiecewiseRationalQuadraticCouplingTransform(
                mask, net, num_bins=spec.bins, tails="linear", tail_bound=spec.bound)
        if spec.autoregressive and i > 0:
            layers.append(transforms.ReversePermutation(d))
        layers.append(layer)
    if spec.autoregressive:
        notes.append(f"{t - 1} ReversePermutation layers instead of alternating MADE orders")
    if not spec.spline:
        notes.append("affine scale sigmoid(a + 2) + 1e-3 (pushforward: exp(5 tanh(a / 5)))")
    flow = flows.Flow(transforms.CompositeTransform(layers), distributions.StandardNormal([d]))
    return Model("nflows", spec, flow, flow.log_prob, flow.sample, notes)


# --- normflows -------------------------------------------------------------------------------

@cache
def _normflows_inverted() -> type:
    """An ``nf.flows.Flow`` that runs a data -> base layer the other way round (normflows'
    ``forward`` is base -> data), the adapter normflows' own spline wrappers use."""
    import normflows as nf

    class Inverted(nf.flows.Flow):
        def __init__(self, layer: nn.Module):
            super().__init__()
            self.layer = layer

        def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
            out, ladj = self.layer.inverse(z, context)
            return out, ladj.view(-1)

        def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
            out, ladj = self.layer(x, context)
            return out, ladj.view(-1)

    return Inverted


def _normflows_reverse(d: int) -> nn.Module:
    """normflows' ``Permute`` set to the reversal (its modes are random shuffle or half swap)."""
    import normflows as nf

    permute = nf.flows.Permute(d, mode="shuffle")
    permute.perm = torch.arange(d - 1, -1, -1)
    permute.inv_perm = torch.arange(d - 1, -1, -1)
    return permute


def _normflows(spec: Spec) -> Model:
    import normflows as nf
    from normflows.flows.neural_spline.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressive
    from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling
    from normflows.utils.masks import create_alternating_binary_mask

    d, t = spec.features, spec.transforms
    width, depth = _one_width("normflows", spec)
    inverted = _normflows_inverted()
    notes: list[str] = []
    act = torch.tanh if spec.activation == "tanh" else torch.relu
    layers: list[nn.Module] = []
    for i in range(t):
        if spec.arch == "maf":
            layer = inverted(nf.flows.MaskedAffineAutoregressive(d, width, num_blocks=depth - 1,
                                                                 use_residual_blocks=False, activation=act))
        elif spec.arch == "nsf-ar":
            layer = inverted(MaskedPiecewiseRationalQuadraticAutoregressive(
                d, width, num_bins=spec.bins, tails="linear", tail_bound=spec.bound, num_blocks=depth - 1,
                use_residual_blocks=False, activation=act))
        elif spec.arch == "realnvp":
            a = (d + 1) // 2 if i % 2 == 0 else d // 2  # the conditioning half of chunk(2)
            param_map = nf.nets.MLP([a, *spec.hidden, 2 * (d - a)], init_zeros=True)
            layer = nf.flows.AffineCouplingBlock(param_map, split_mode="channel" if i % 2 == 0 else "channel_inv")
        else:
            def net(i_: int, o: int) -> nn.Module:
                return _IgnoreContext(nf.nets.MLP([i_, *spec.hidden, o], init_zeros=True))

            layer = inverted(PiecewiseRationalQuadraticCoupling(
                create_alternating_binary_mask(d, even=i % 2 == 0), net, num_bins=spec.bins, tails="linear",
                tail_bound=spec.bound))
        if spec.autoregressive and i > 0:
            layers.append(_normflows_reverse(d))
        layers.append(layer)
    if spec.autoregressive:
        notes.append(f"{t - 1} Permute layers (set to reversal) instead of alternating MADE orders; "
                     "MADE layers wrapped to run data -> base in log_prob (else log_prob takes D passes)")
    if spec.arch == "realnvp":
        notes.append("AffineCouplingBlock: halves (channel / channel_inv) instead of even/odd masks; "
                     "unbounded exp scale")
    if spec.arch == "maf":
        notes.append("affine scale sigmoid(a + 2) + 1e-3 (pushforward: exp(5 tanh(a / 5)))")
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), layers)
    return Model("normflows", spec, flow, flow.log_prob, lambda n: flow.sample(n)[0], notes)


# --- torchflows ------------------------------------------------------------------------------

def _torchflows(spec: Spec) -> Model:
    from torchflows.bijections.base import BijectiveComposition
    from torchflows.bijections.finite.autoregressive import layers as tl
    from torchflows.bijections.finite.matrix.permutation import ReversePermutationMatrix
    from torchflows.flows import Flow

    d, t = spec.features, spec.transforms
    width, depth = _one_width("torchflows", spec)
    shape = (d,)
    conditioner = dict(n_hidden=width, n_layers=depth + 1)
    spline = dict(n_bins=spec.bins, boundary=spec.bound)
    notes = ["a ReversePermutationMatrix layer between layers (torchflows' own architectures also add "
             "ElementwiseAffine and ActNorm layers; left out here)"]
    if spec.autoregressive:
        if spec.activation != "tanh":
            notes.append("torchflows' MADE has a fixed tanh activation (the others: ReLU)")
        kind = tl.AffineForwardMaskedAutoregressive if spec.arch == "maf" else tl.RQSForwardMaskedAutoregressive
    else:
        conditioner["nonlinearity"] = nn.ReLU
        notes.append("coupling on halves (half_split) instead of even/odd masks")
        kind = tl.AffineCoupling if spec.arch == "realnvp" else tl.RQSCoupling
    if not spec.spline:
        notes.append("affine scale exp(log(1 - 1e-10) + a / 2) + 1e-10 (unbounded)")
    layers: list[nn.Module] = []
    for i in range(t):
        if i > 0:
            layers.append(ReversePermutationMatrix(event_shape=shape))
        options = dict(conditioner_kwargs=conditioner)
        if spec.spline:
            options["transformer_kwargs"] = spline
        layers.append(kind(event_shape=shape, **options))
    flow = Flow(BijectiveComposition(layers))
    return Model("torchflows", spec, flow, flow.log_prob, lambda n: flow.sample(n, no_grad=True), notes)
