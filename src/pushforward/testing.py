r"""The transform registry and the checks every transform of pushforward passes.

:func:`transform_examples` lists every transform of the library under a name that says its
family (``coupling-rq-spline``, ``autoregressive-affine``, ...), built with non-trivial
parameters; the contract test of the project runs each ``check_*`` function below over it.
Users can run the same checks on their own transforms:

    >>> import torch, pushforward as pf
    >>> from pushforward import testing
    >>> t = pf.transforms.Elementwise(pf.transforms.AffineMap(), 3).double()
    >>> _ = testing.perturb(t)
    >>> z = torch.randn(4, 3, dtype=torch.float64)
    >>> testing.check_round_trip(t, z)
    >>> testing.check_ladj(t, z)

:func:`elementwise_map_examples` lists every element-wise map (``ElementwiseMap``: splines,
polynomials, affine, neural) with the properties it has (a bound with identity or linear tails,
the identity at zero parameters, a numerical direction); the map contract runs the
``check_*`` functions of maps over it, in float32 and float64, in both directions. On a map of
your own, with raw parameters h (params,):

    >>> m, h = pf.transforms.RQSpline(5, 2.0), torch.randn(14, dtype=torch.float64)
    >>> testing.check_identity_tails(m, h, bound=2.0)
    >>> testing.check_monotone(m, h, bound=2.0, inverse=True)
    >>> testing.check_continuous_at_bound(m, h, bound=2.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .core import Chain, Inverse, Transform
from .transforms.autoregressive import MaskedAutoregressive
from .transforms.continuous import ContinuousFlow
from .transforms.convolution import Conv1x1, Conv1x1LU, EmergingConv, PeriodicConv
from .transforms.coupling import Coupling, ImageCoupling, alternating_mask
from .transforms.multiscale import ChannelGaussianPrior, MultiScale
from .transforms.reshape import Squeeze
from .transforms.elementwise import AdditiveMap, Affine, AffineMap, Elementwise, SigmoidAffineMap, Sigmoid, logit_preprocessing
from .transforms.linear import LowerTriangular, Permutation
from .transforms.linear import ConvexCombinationTriangular, Dense, Householder, LU, QR, UpperTriangular
from .transforms.planar_radial import Planar, Radial
from .transforms.residual import ConvResidualBlock, ResidualBlock
from .nn.lipschitz import ELU as LipschitzELU, Tanh as LipschitzTanh
from .transforms.sylvester import HouseholderBasis, OrthogonalBasis, PermutationBasis, Sylvester
from .transforms.neural import BlockNeuralAutoregressive, DeepSigmoidMap, UMNNMap
from .transforms.normalization import ActNorm, BatchNorm
from .transforms.splines import RQSpline
from .transforms.elementwise import ElementwiseMap, InverseMap, LeakyReLU, Softplus, Tanh
from .transforms.polynomials import BernsteinPolynomial, SOSPolynomial
from .transforms.splines import CubicSpline, LinearRationalSpline, PiecewiseLinear, PiecewiseQuadratic

__all__ = [
    "transform_examples", "perturb", "autograd_ladj", "check_round_trip", "check_ladj",
    "check_ladj_symmetry", "check_derivatives", "MapExample", "elementwise_map_examples", "apply_map",
    "check_map_finite", "check_identity_tails", "check_linear_tails", "check_identity_at_zero", "check_monotone",
    "check_continuous_at_bound", "check_slope_continuous_at_bound", "map_ends", "edge_points",
]

FEATURES = 5
CONTEXT = 3
IMAGE = (2, 4, 4)


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Move every floating-point parameter of ``module`` away from its initial value, in place.

    Adds N(0, scale^2) noise (seeded), so that transforms that start at the identity are
    tested at a generic point; marks data-dependent initialisations as done and gives batch
    normalisation non-trivial running statistics. Returns the module.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(True)
            if isinstance(m, BatchNorm):
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype))
                m.running_var.mul_(torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) + 0.5)
    return module


def _vector_examples() -> Iterator[tuple[str, Callable[[int], Transform], bool]]:
    """(name, builder(context_features) -> transform, supports context) for vector transforms."""
    d, half = FEATURES, alternating_mask(FEATURES, 1)
    yield "elementwise-affine", lambda c: Elementwise(AffineMap(), d, c), True
    yield "elementwise-sigmoid-affine", lambda c: Elementwise(SigmoidAffineMap(), d, c), True
    yield "elementwise-rq-spline", lambda c: Elementwise(RQSpline(bins=4, bound=2.0), d, c), True
    yield "elementwise-affine-fixed", lambda c: Affine(torch.linspace(-1, 1, d), torch.linspace(0.5, 2, d)), False
    yield "elementwise-sigmoid", lambda c: Sigmoid(), False
    yield "elementwise-logit-preprocessing", lambda c: logit_preprocessing(levels=1), False
    yield "elementwise-leaky-relu", lambda c: LeakyReLU(0.3), False
    yield "elementwise-leaky-relu-learnable", lambda c: LeakyReLU(0.3, learnable=True), False
    yield "elementwise-softplus", lambda c: Softplus(), False
    yield "elementwise-tanh", lambda c: Tanh(), False
    yield "elementwise-piecewise-linear", lambda c: Elementwise(PiecewiseLinear(4, 2.0), d, c), True
    yield "elementwise-piecewise-quadratic", lambda c: Elementwise(PiecewiseQuadratic(4, 2.0), d, c), True
    yield "elementwise-cubic-spline", lambda c: Elementwise(CubicSpline(4, 2.0), d, c), True
    yield "elementwise-linear-rational-spline", lambda c: Elementwise(LinearRationalSpline(4, 2.0), d, c), True
    yield "elementwise-sos", lambda c: Elementwise(SOSPolynomial(2, 2, 2.0), d, c), True
    yield "elementwise-bernstein", lambda c: Elementwise(BernsteinPolynomial(5, 2.0), d, c), True
    yield "linear-permutation", lambda c: Permutation.random(d, seed=1), False
    yield "linear-lower-triangular", lambda c: LowerTriangular(d), False
    yield "linear-upper-triangular", lambda c: UpperTriangular(d), False
    yield "linear-convex-triangular", lambda c: ConvexCombinationTriangular(d, 3, c), True
    yield "linear-householder", lambda c: Householder(d, 3, c), True
    yield "linear-lu", lambda c: LU(d), False
    yield "linear-qr", lambda c: QR(d), False
    yield "linear-dense", lambda c: Dense(d), False
    yield "planar-tanh", lambda c: Planar(d, c), True
    yield "radial-standard", lambda c: Radial(d, c), True
    yield "sylvester-orthogonal", lambda c: Sylvester(d, c, OrthogonalBasis(3)), True
    yield "sylvester-householder", lambda c: Sylvester(d, c, HouseholderBasis(2)), True
    yield "sylvester-triangular", lambda c: Sylvester(d, c, PermutationBasis(reverse=True)), True
    # exact log-det and exact spectral norms in both modes, so that training and evaluation agree
    yield "residual-lipswish", lambda c: ResidualBlock(d, c, (8, 8), 0.9, iterations=None), True
    yield "residual-elu", lambda c: ResidualBlock(d, c, (8,), 0.97, activation=LipschitzELU, iterations=None), True
    yield "residual-tanh-data-to-base", lambda c: Inverse(ResidualBlock(d, c, (8,), 0.8, activation=LipschitzTanh,
                                                                        iterations=None)), True
    yield "normalization-actnorm", lambda c: ActNorm(d), False
    yield "normalization-batchnorm", lambda c: BatchNorm(d), False
    yield "coupling-affine", lambda c: Coupling(half, AffineMap(), c, (8,)), True
    yield "coupling-additive", lambda c: Coupling(half, AdditiveMap(), c, (8,)), True
    # a mask whose parts are no strided slices: the layer gathers and scatters by index
    irregular = torch.arange(d) % 3 != 1
    yield "coupling-affine-irregular-mask", lambda c: Coupling(irregular, AffineMap(), c, (8,)), True
    yield "coupling-rq-spline", lambda c: Coupling(half, RQSpline(bins=4, bound=2.0), c, (8,)), True
    yield "autoregressive-affine", lambda c: MaskedAutoregressive(d, AffineMap(), c, (8, 8), order=[2, 0, 4, 1, 3]), True
    yield "autoregressive-affine-inverse", lambda c: Inverse(MaskedAutoregressive(d, AffineMap(), c, (8,))), True
    yield "autoregressive-rq-spline", lambda c: MaskedAutoregressive(d, RQSpline(bins=4, bound=2.0), c, (8,)), True
    # the spline applied data -> base, as the NSF preset uses it
    yield "coupling-rq-spline-data-to-base", lambda c: Coupling(half, InverseMap(RQSpline(4, 2.0)), c, (8,)), True
    yield "autoregressive-rq-spline-data-to-base", lambda c: MaskedAutoregressive(
        d, InverseMap(RQSpline(4, 2.0)), c, (8,)), True
    yield "coupling-piecewise-linear", lambda c: Coupling(half, PiecewiseLinear(4, 2.0), c, (8,)), True
    yield "coupling-piecewise-quadratic", lambda c: Coupling(half, PiecewiseQuadratic(4, 2.0), c, (8,)), True
    yield "coupling-cubic-spline", lambda c: Coupling(half, CubicSpline(4, 2.0), c, (8,)), True
    yield "coupling-linear-rational-spline", lambda c: Coupling(half, LinearRationalSpline(4, 2.0), c, (8,)), True
    yield "autoregressive-sos", lambda c: MaskedAutoregressive(d, InverseMap(SOSPolynomial(2, 2, 2.0)), c, (8,)), True
    yield "autoregressive-bernstein", lambda c: MaskedAutoregressive(d, InverseMap(BernsteinPolynomial(5, 2.0)), c,
                                                                     (8,)), True
    yield "chain-maf-batchnorm", lambda c: Chain(MaskedAutoregressive(d, AffineMap(), c, (8,)), BatchNorm(d),
                                                 Permutation.reverse(d), Coupling(half, AffineMap(), c, (8,))), True
    yield "neural-dsf", lambda c: MaskedAutoregressive(d, DeepSigmoidMap(units=4, layers=2), c, (16,)), True
    yield "neural-umnn", lambda c: MaskedAutoregressive(d, UMNNMap(embedding=4, hidden_features=(8, 8)), c, (8,)), True
    yield "neural-bnaf", lambda c: BlockNeuralAutoregressive(d, c, hidden_features=(3, 3)), True
    # tolerances far below the contract's, so that the solver's error does not count
    yield "continuous-exact", lambda c: ContinuousFlow(d, c, (8, 8), rtol=1e-9, atol=1e-9), True
    yield "continuous-adjoint-softplus", lambda c: ContinuousFlow(d, c, (8,), activation=nn.Softplus, rtol=1e-9,
                                                                  atol=1e-9, adjoint=True), True


def _image_examples() -> Iterator[tuple[str, Callable[[int], Transform], bool]]:
    """(name, builder(context_features) -> transform, supports context) for transforms of
    images, whose base-side event shape is :data:`IMAGE` (C, H, W)."""
    c0 = IMAGE[0]
    yield "reshape-squeeze", lambda c: Squeeze(), False
    yield "normalization-actnorm-image", lambda c: ActNorm(c0, event_dims=3), False
    yield "coupling-affine-channel", lambda c: ImageCoupling(c0, AffineMap(), "channel", 0, c, 4), True
    yield "coupling-additive-channel-odd", lambda c: ImageCoupling(c0, AdditiveMap(), "channel", 1, c, 4, blocks=1), True
    yield "coupling-affine-checkerboard", lambda c: ImageCoupling(c0, AffineMap(), "checkerboard", 1, c, 4), True
    yield "coupling-sigmoid-affine-channel", lambda c: ImageCoupling(c0, SigmoidAffineMap(), "channel", 0, c, 4), True

    def inner(c: int) -> Transform:  # on the channels that go on: (1, 4, 4)
        return Chain(ImageCoupling(1, AffineMap(), "checkerboard", 0, c, 4), ActNorm(1, event_dims=3))

    yield "multiscale-learned-prior", lambda c: MultiScale(
        inner(c), c0 // 2, ImageCoupling(c0, AffineMap(), "channel", 0, c, hidden_channels=0)), True
    yield "multiscale-standard-prior", lambda c: MultiScale(inner(c), c0 // 2), True
    yield "multiscale-channel-prior", lambda c: MultiScale(inner(c), c0 // 2, ChannelGaussianPrior(c0, c0 // 2)), True
    yield "multiscale-channel-gaussian", lambda c: ChannelGaussianPrior(c0, c0 // 2), False
    yield "convolution-1x1", lambda c: Conv1x1(IMAGE[0]), False
    yield "convolution-1x1-lu", lambda c: Conv1x1LU(IMAGE[0]), False
    yield "convolution-emerging", lambda c: EmergingConv(IMAGE[0]), False
    yield "convolution-periodic", lambda c: PeriodicConv(IMAGE[0]), False
    yield "residual-conv", lambda c: ConvResidualBlock(IMAGE, c, 4, coefficient=0.9), True


def transform_examples(seed: int = 0) -> Iterator[tuple[str, Transform, tuple[int, ...], int]]:
    """Every transform of the library, with perturbed parameters, in float64 and eval mode.

    Yields ``(name, transform, event_shape, context_features)``, ``event_shape`` on the base
    side (the input of ``forward``): (5,) for vectors, (2, 4, 4) for images. A transform that
    accepts a context appears twice, without (``name``) and with a context (``name-context``).
    """
    examples = [(*e, (FEATURES,)) for e in _vector_examples()] + [(*e, IMAGE) for e in _image_examples()]
    for name, build, conditional, event_shape in examples:
        for c in (0, CONTEXT) if conditional else (0,):
            # seeded here: the initial weights must not depend on what used the global RNG before
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                t = perturb(build(c).double(), seed=seed)
            yield (f"{name}-context" if c else name), t.eval(), event_shape, c


def autograd_ladj(t: Transform, u: Tensor, context: Tensor | None = None, inverse: bool = False) -> Tensor:
    """log|det J| of ``t`` (or ``t.inverse``) at ``u``, by brute force with autograd.

    The Jacobian of the map with its input and output events flattened, so that transforms that
    change the event shape (a squeeze) are covered: it is square because no transform changes
    the number of elements.

    Shapes: u (*batch, *event); context (*batch, context_features) or an image context
    (*batch, context_features, H, W); returns (*batch,).
    """
    f = t.inverse if inverse else t
    dims = t.data_event_dims if inverse else t.event_dims
    event = u.shape[u.dim() - dims :]
    batch = u.shape[: u.dim() - dims]
    flat = u.reshape(-1, *event)
    ctx = None if context is None else context.reshape(-1, *context.shape[len(batch) :])
    out = []
    for i in range(flat.shape[0]):
        c = None if ctx is None else ctx[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0), c)[0].squeeze(0), flat[i])
        n = event.numel()
        out.append(torch.linalg.slogdet(jac.reshape(n, n))[1])
    return torch.stack(out).reshape(batch)


def check_round_trip(t: Transform, z: Tensor, context: Tensor | None = None, atol: float = 1e-6) -> None:
    """Assert inverse(forward(z)) ≈ z and forward(inverse(x)) ≈ x at x = forward(z)."""
    x, _ = t(z, context)
    z2, _ = t.inverse(x, context)
    torch.testing.assert_close(z2, z, atol=atol, rtol=atol, msg=lambda m: f"inverse(forward(z)) != z\n{m}")
    x2, _ = t(t.inverse(x, context)[0], context)
    torch.testing.assert_close(x2, x, atol=atol, rtol=atol, msg=lambda m: f"forward(inverse(x)) != x\n{m}")


def check_ladj(t: Transform, z: Tensor, context: Tensor | None = None, atol: float = 1e-6) -> None:
    """Assert the ladj of both directions equals log|det| of the autograd Jacobian."""
    x, ladj = t(z, context)
    torch.testing.assert_close(ladj, autograd_ladj(t, z, context), atol=atol, rtol=atol,
                               msg=lambda m: f"forward ladj != autograd\n{m}")
    _, ladj_inv = t.inverse(x, context)
    torch.testing.assert_close(ladj_inv, autograd_ladj(t, x, context, inverse=True), atol=atol, rtol=atol,
                               msg=lambda m: f"inverse ladj != autograd\n{m}")


def check_ladj_symmetry(t: Transform, z: Tensor, context: Tensor | None = None, atol: float = 1e-6) -> None:
    """Assert that the forward ladj at z is minus the inverse ladj at x = forward(z)."""
    x, ladj = t(z, context)
    _, ladj_inv = t.inverse(x, context)
    torch.testing.assert_close(ladj, -ladj_inv, atol=atol, rtol=atol)


class _Direction(nn.Module):
    """One direction of a transform as a module's ``forward``, for ``torch.func.functional_call``."""

    def __init__(self, t: Transform, inverse: bool):
        super().__init__()
        self.t, self.inverse = t, inverse

    def forward(self, u: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return (self.t.inverse if self.inverse else self.t)(u, context)


def check_derivatives(t: Transform, u: Tensor, context: Tensor | None = None, inverse: bool = True,
                      seed: int = 0) -> None:
    r"""Assert the first and second derivatives of a direction of ``t`` against finite differences.

    The function checked is s(u, a) = <w, y> + <v, ladj>, with (y, ladj) the transform
    (``inverse``: data -> base) at ``u`` with its parameters theta + a d, for fixed random
    w, v, d: ``torch.autograd.gradcheck`` and ``gradgradcheck`` over (u, a) then cover the
    derivatives in the input, along a direction of the parameters, and the mixed ones that
    gradient penalties, score matching and Hessian-vector products use. A hand-written
    autograd node without a double backward fails here (its second-order terms would be
    zeros or an error).

    Shapes: u (*batch, *event) on the side the direction reads, float64; context
    (*batch, context_features).
    """
    g = torch.Generator().manual_seed(seed)
    module = _Direction(t, inverse)
    params = {name: p.detach() for name, p in module.named_parameters()}
    d = {name: torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for name, p in params.items()}
    y, ladj = module(u, context)
    w = torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)
    v = torch.randn(ladj.shape, generator=g, dtype=ladj.dtype).to(ladj.device)

    def score(u: Tensor, a: Tensor) -> Tensor:
        moved = {name: p + a * d[name] for name, p in params.items()}
        y, ladj = torch.func.functional_call(module, moved, (u, context))
        return (w * y).sum() + (v * ladj).sum()

    inputs = (u.detach().clone().requires_grad_(), torch.zeros((), dtype=u.dtype, device=u.device, requires_grad=True))
    # fast mode: the derivatives along random directions of the inputs, a few evaluations each
    torch.autograd.gradcheck(score, inputs, fast_mode=True)
    torch.autograd.gradgradcheck(score, inputs, fast_mode=True)


# --- element-wise maps -------------------------------------------------------------------------

MAP_BINS, MAP_BOUND = 5, 2.0
# where a map without tails is looked at: its grid spans [-_WINDOW, _WINDOW] and a quarter more
_WINDOW = 2.0
_FAR = (1e3, 1e30)
# raw parameters N(0, scale^2) of every map
_SCALES = {"zero": 0.0, "random": 1.5, "large": 4.0}


def _rq_spline_stress(kind: str, bins: int, g: torch.Generator) -> Tensor:
    """Raw RQSpline parameters (3 bins - 1,) of an extreme shape: bins of the floor size, knot
    derivatives at their floor or huge, where peer libraries return NaN or inf."""
    widths, heights, derivatives = (torch.randn(n, generator=g, dtype=torch.float64) for n in (bins, bins, bins - 1))
    alternating = torch.tensor([30.0, -30.0] * bins, dtype=torch.float64)[:bins]
    one_wide = torch.full((bins,), -30.0, dtype=torch.float64)
    one_wide[bins // 2] = 30.0
    if kind == "gentle":
        widths, heights, derivatives = 0.5 * widths, 0.5 * heights, 0.5 * derivatives
    elif kind == "one-wide-bin":  # one bin takes almost all the width, the others sit at the floor
        widths, heights = one_wide, one_wide.flip(0)
        heights[0] = 30.0
    elif kind == "alternating-bins":
        widths, heights = alternating, -alternating
    elif kind == "steep-knots":
        derivatives = torch.full_like(derivatives, 1e3)
    elif kind == "flat-knots":
        derivatives = torch.full_like(derivatives, -1e3)
    elif kind == "mixed-knots":
        derivatives = torch.tensor([1e3, -1e3] * bins, dtype=torch.float64)[: bins - 1]
    elif kind == "all-extreme":
        widths, heights = alternating, -alternating
        derivatives = torch.tensor([-1e3, 1e3] * bins, dtype=torch.float64)[: bins - 1]
    else:
        raise ValueError(f"unknown kind of RQSpline parameters {kind!r}")
    return torch.cat([widths, heights, derivatives])


RQ_SPLINE_STRESS = ("one-wide-bin", "alternating-bins", "steep-knots", "flat-knots", "mixed-knots", "all-extreme")


@dataclass(frozen=True)
class MapExample:
    r"""An element-wise map of the library and the properties its checks rely on.

    Attributes:
        build: makes the map (a fresh one each call; a map with weights of its own comes
            seeded and perturbed, in float64).
        bound: the map is a tail outside [-bound, bound] (of z; of its image for x), or None.
        tails: ``"identity"`` or ``"linear"`` (straight lines continuing value and slope), or
            None for a map without tails.
        identity_at_zero: all-zero parameters give the identity.
        smooth_at_bound: the slope is continuous at the bound, as well as the value.
        numerical: the direction solved by bisection (``"forward"`` or ``"inverse"``), or None.
        knots: the map has ``_spline(h)`` whose first two results are its knots in z and x.
        stress: names of extra kinds of raw parameters (``parameters(kind)``): for the RQ spline
            gentle ones (N(0, 0.5^2)) and bins or knot derivatives of an extreme shape.
        rough_at_bound: kinds whose bins next to the bound are so narrow or steep that the
            log-slope changes by more than the slope check's tolerance within one ulp there.
    """

    build: Callable[[], ElementwiseMap]
    bound: float | None = None
    tails: str | None = None
    identity_at_zero: bool = True
    smooth_at_bound: bool = False
    numerical: str | None = None
    knots: bool = False
    stress: tuple[str, ...] = ()
    rough_at_bound: tuple[str, ...] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        """Names of the raw parameters the checks run on: scaled N(0, 1) draws, then ``stress``."""
        return (*_SCALES, *self.stress)

    def make(self, dtype: torch.dtype) -> ElementwiseMap:
        """The map, with weights of its own (if any) in ``dtype``; seeded, so the same in every dtype."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            m = self.build()
            if isinstance(m, nn.Module):
                m = perturb(m.double()).to(dtype)
        return m

    def parameters(self, m: ElementwiseMap, kind: str, dtype: torch.dtype) -> Tensor:
        """Raw parameters (m.params,) of the given kind in ``dtype``, seeded by the kind's name."""
        g = torch.Generator().manual_seed(sum(map(ord, kind)))
        if kind in _SCALES:
            return (_SCALES[kind] * torch.randn(m.params, generator=g, dtype=torch.float64)).to(dtype)
        return _rq_spline_stress(kind, m.bins, g).to(dtype)

    def knot_points(self, m: ElementwiseMap, h: Tensor, inverse: bool = False) -> Tensor | None:
        """The knots on the side ``inverse`` reads (x if True, z otherwise), or None."""
        return m._spline(h)[1 if inverse else 0].detach() if self.knots else None


def elementwise_map_examples() -> dict[str, MapExample]:
    """Every element-wise map of the library (:class:`~pushforward.transforms.ElementwiseMap`),
    by name, with the properties the ``check_*map*`` functions below test.

    The splines and polynomials have 5 bins (degree 3 with 3 squares, degree 8) on
    [-2, 2]; the maps onto R have no bound.
    """
    b, k = MAP_BOUND, MAP_BINS
    spline = {"bound": b, "tails": "identity", "knots": True}
    polynomial = {"bound": b, "tails": "linear", "smooth_at_bound": True, "numerical": "inverse"}
    return {
        "rq-spline": MapExample(lambda: RQSpline(k, b), smooth_at_bound=True, stress=("gentle", *RQ_SPLINE_STRESS),
                                rough_at_bound=tuple(s for s in ("large", *RQ_SPLINE_STRESS) if s != "flat-knots"),
                                **spline),
        "piecewise-linear": MapExample(lambda: PiecewiseLinear(k, b), **spline),
        "piecewise-quadratic": MapExample(lambda: PiecewiseQuadratic(k, b), **spline),
        "cubic-spline": MapExample(lambda: CubicSpline(k, b), numerical="inverse", **spline),
        "linear-rational-spline": MapExample(lambda: LinearRationalSpline(k, b), smooth_at_bound=True, **spline),
        "sos": MapExample(lambda: SOSPolynomial(3, 3, b), **polynomial),
        "bernstein": MapExample(lambda: BernsteinPolynomial(8, b), **polynomial),
        "affine": MapExample(AffineMap),
        "sigmoid-affine": MapExample(SigmoidAffineMap, identity_at_zero=False),
        "additive": MapExample(AdditiveMap),
        "deep-sigmoid": MapExample(lambda: DeepSigmoidMap(units=4, layers=2), identity_at_zero=False,
                                   numerical="forward"),
        # perturbed, so that the integrand is not constant: zero parameters no longer give the identity
        "umnn": MapExample(lambda: UMNNMap(embedding=4, hidden_features=(8, 8), nodes=17), identity_at_zero=False,
                           numerical="forward"),
    }


def apply_map(m: ElementwiseMap, u: Tensor, h: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """The map (or its inverse) at every point of ``u``, with the same parameters h (params,) at each.

    Shapes: u (*shape); h (params,); returns out, ladj (*shape).
    """
    return (m.inverse if inverse else m.forward)(u, h.expand(*u.shape, m.params))


def map_ends(m: ElementwiseMap, h: Tensor, bound: float | None, inverse: bool = False) -> Tensor:
    """(2,): the ends of the interval where the map is not a tail, on the side ``inverse`` reads:
    ±bound, or their images (a window of ±2 for a map without tails)."""
    ends = torch.tensor([-1.0, 1.0], dtype=h.dtype, device=h.device) * (bound or _WINDOW)
    return apply_map(m, ends, h)[0].detach() if inverse else ends


def _ulp(u: Tensor, direction: float) -> Tensor:
    """The next floating-point number after each of ``u`` towards ``direction`` (±inf)."""
    return torch.nextafter(u, torch.full_like(u, direction))


def edge_points(ends: Tensor) -> Tensor:
    """(6,): each end exactly, one ulp inside and one ulp outside it."""
    lo, hi = ends[:1], ends[1:]
    return torch.cat([lo, _ulp(lo, math.inf), _ulp(lo, -math.inf), hi, _ulp(hi, -math.inf), _ulp(hi, math.inf)])


def _with_neighbours(points: Tensor | None, like: Tensor) -> Tensor:
    """``points`` and the floating-point numbers either side of each (none if None)."""
    if points is None:
        return like.new_zeros(0)
    p = points.to(like)
    return torch.cat([p, _ulp(p, math.inf), _ulp(p, -math.inf)])


def check_map_finite(m: ElementwiseMap, h: Tensor, bound: float | None = None, inverse: bool = False,
                     points: Tensor | None = None, far: tuple[float, ...] = _FAR) -> None:
    r"""Assert that values, ladj and the gradients in the input and in h are finite everywhere.

    At the ends of [-bound, bound] (of its image for ``inverse``) exactly and one ulp either
    side, at ±``far`` (1e3 and 1e30; a direction solved by bisection without tails reaches only
    the image of ±1e8, the bisection's bracket, which may not hold 1e3), on a grid inside, and
    at ``points`` (e.g.
    knots) and their ulp neighbours; the gradients of sum w (out + ladj) with weights w that
    differ per point, so that no error hides in a cancellation. Asserts the output keeps the
    dtype of ``h``.
    """
    ends = map_ends(m, h, bound, inverse)
    far = torch.tensor(far, dtype=h.dtype, device=h.device)
    inside = torch.linspace(0, 1, 101, dtype=h.dtype, device=h.device) * (ends[1] - ends[0]) + ends[0]
    u = torch.cat([edge_points(ends), far, -far, inside, _with_neighbours(points, ends)]).requires_grad_()
    hh = h.expand(*u.shape, m.params).clone().requires_grad_()
    out, ladj = (m.inverse if inverse else m.forward)(u, hh)
    assert out.dtype == ladj.dtype == h.dtype, (out.dtype, ladj.dtype)
    assert torch.isfinite(out).all(), f"non-finite output at {u[~torch.isfinite(out)]}"
    assert torch.isfinite(ladj).all(), f"non-finite ladj at {u[~torch.isfinite(ladj)]}"
    w = torch.linspace(0.5, 1.5, len(u), dtype=h.dtype, device=h.device)
    gu, gh = torch.autograd.grad((w * out).sum() + (w * ladj).sum(), (u, hh))
    assert torch.isfinite(gu).all(), f"non-finite d/du at {u[~torch.isfinite(gu)]}"
    assert torch.isfinite(gh).all(), f"non-finite d/dh at {u[~torch.isfinite(gh).all(-1)]}"


def _beyond(ends: Tensor) -> Tensor:
    """Points beyond the ends: one ulp, 1e-3, 3, 1e3 and 1e30 outside each."""
    offsets = torch.tensor([1e-3, 3.0, *_FAR], dtype=ends.dtype, device=ends.device)
    return torch.cat([_ulp(ends[:1], -math.inf), ends[0] - offsets, _ulp(ends[1:], math.inf), ends[1] + offsets])


def check_identity_tails(m: ElementwiseMap, h: Tensor, bound: float, inverse: bool = False) -> None:
    r"""Assert that the map is exactly the identity beyond ±bound, gradients included.

    At one ulp, 1e-3, 3, 1e3 and 1e30 beyond ±bound (in both directions, the image of ±bound
    being ±bound up to rounding): out == u and ladj == 0 bit for bit, d(out + ladj)/du == 1
    and d(out + ladj)/dh == 0 exactly (no NaN leaks in from the spline's branch that is not
    taken).
    """
    u = _beyond(map_ends(m, h, bound, False))
    assert (u.abs() > bound).all()
    u.requires_grad_()
    hh = h.expand(*u.shape, m.params).clone().requires_grad_()
    out, ladj = (m.inverse if inverse else m.forward)(u, hh)
    assert torch.equal(out, u.detach()), f"not the identity beyond the bound: {out} at {u.detach()}"
    assert torch.equal(ladj, torch.zeros_like(ladj)), f"ladj {ladj} beyond the bound"
    gu, gh = torch.autograd.grad(out.sum() + ladj.sum(), (u, hh))
    assert torch.equal(gu, torch.ones_like(gu)), gu
    assert torch.equal(gh, torch.zeros_like(gh)), gh


@torch.no_grad()
def check_linear_tails(m: ElementwiseMap, h: Tensor, bound: float, inverse: bool = False) -> None:
    r"""Assert that beyond the ends the map is the straight line through its end value with its end slope.

    With e the ends (±bound, or their images for ``inverse``): out = f(e) + f'(e) (u - e) and
    ladj = log f'(e) at 1e-3, 3 and 1e3 beyond each end, to about 4000 ulps relative (1e-12 in
    float64) and 4e6 ulps absolute (1e-9).
    """
    ends = map_ends(m, h, bound, inverse)
    offsets = torch.tensor([1e3, 3.0, 1e-3], dtype=h.dtype, device=h.device)
    u = torch.cat([ends[0] - offsets, ends[1] + offsets.flip(0)])
    out, ladj = apply_map(m, u, h, inverse)
    at_ends, ladj_ends = apply_map(m, ends, h, inverse)
    side = (torch.arange(6, device=u.device) >= 3).long()
    eps = torch.finfo(h.dtype).eps
    expected = at_ends[side] + ladj_ends.exp()[side] * (u - ends[side])
    torch.testing.assert_close(out, expected, rtol=4e3 * eps, atol=4e6 * eps)
    torch.testing.assert_close(ladj, ladj_ends[side], rtol=0, atol=4e6 * eps)


@torch.no_grad()
def check_identity_at_zero(m: ElementwiseMap, dtype: torch.dtype, bound: float | None = None,
                           inverse: bool = False) -> None:
    r"""Assert that all-zero parameters give the identity, out = u and ladj = 0.

    On a grid over ±3 bound and at ±bound and their ulp neighbours, to 1e-12 in float64 and
    2e-6 in float32 (the quadrature or bisection of a numerical direction included).
    """
    b = bound or _WINDOW
    h = torch.zeros(m.params, dtype=dtype)
    u = torch.cat([torch.linspace(-3 * b, 3 * b, 601, dtype=dtype), edge_points(map_ends(m, h, b, False))])
    out, ladj = apply_map(m, u, h, inverse)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out, u, atol=tol, rtol=0)
    torch.testing.assert_close(ladj, torch.zeros_like(ladj), atol=tol, rtol=0)


@torch.no_grad()
def check_monotone(m: ElementwiseMap, h: Tensor, bound: float | None = None, inverse: bool = False,
                   points: Tensor | None = None, tol: float = 0.0, ulps: int = 2, grid: int = 4001) -> None:
    r"""Assert that the map is non-decreasing on sorted inputs.

    On ``grid`` points over the interval [e_0, e_1] of the ends widened by a quarter of its width
    on each side, the edge points and ``points``: each step out_{i+1} - out_i >= -slack with
    slack ``ulps`` ulps of the largest |out| (a rounding of y_k + h r in a bin, not a fold of
    the map), or ``tol`` for a direction solved to that tolerance.
    """
    ends = map_ends(m, h, bound, inverse)
    width = ends[1] - ends[0]
    spread = torch.linspace(0, 1, grid, dtype=h.dtype, device=h.device) * 1.5 * width + ends[0] - 0.25 * width
    u = torch.cat([spread, edge_points(ends), _with_neighbours(points, ends)]).sort().values
    out, _ = apply_map(m, u, h, inverse)
    step, big = out.diff(), out.abs().max()
    slack = max(ulps * float(_ulp(big, math.inf) - big), tol)
    assert (step >= -slack).all(), (f"{int((step < -slack).sum())} decreasing steps, worst {step.min().item():.3g} "
                                    f"at {u[1:][step.argmin()].item()}")


@torch.no_grad()
def check_continuous_at_bound(m: ElementwiseMap, h: Tensor, bound: float, inverse: bool = False) -> None:
    r"""Assert that the map is continuous where its tails begin.

    At each end e (±bound, or its image for ``inverse``): |f(e^-) - f(e^+)| and |f(e) - f(e^+)|
    within 8 ulps of max(|out|, |e| f'(e)) (the rounding of the output, and of the input
    magnified by the slope at the ends), e^± one ulp inside and outside.
    """
    e = edge_points(map_ends(m, h, bound, inverse))
    out, ladj = apply_map(m, e, h, inverse)
    slope = float(ladj[[0, 3]].exp().max())
    tol = 8 * torch.finfo(h.dtype).eps * max(float(out.abs().max()), float(e.abs().max()) * slope)
    for i in (0, 3):  # exactly at, one ulp inside, one ulp outside
        assert abs(out[i + 1] - out[i + 2]) <= tol and abs(out[i] - out[i + 2]) <= tol, (out, tol)


@torch.no_grad()
def check_slope_continuous_at_bound(m: ElementwiseMap, h: Tensor, bound: float, inverse: bool = False,
                                    delta: float = 1e-10, atol: float = 1e-6) -> None:
    r"""Assert that the slope of the map is continuous where its tails begin (a C^1 map).

    The ladj one ulp inside and one ulp outside each end agree to 1000 ulps, and (where
    ``delta`` is more than an ulp: in float64) at ``delta`` inside and outside to ``atol``.
    """
    ends = map_ends(m, h, bound, inverse)
    _, ladj = apply_map(m, edge_points(ends), h, inverse)
    tol = 1e3 * torch.finfo(h.dtype).eps
    for i in (0, 3):
        assert abs(ladj[i + 1] - ladj[i + 2]) <= tol, (ladj, tol)
    if delta > 2 * torch.finfo(h.dtype).eps * float(ends.abs().max()):
        _, inside = apply_map(m, ends + torch.tensor([delta, -delta], dtype=h.dtype, device=h.device), h, inverse)
        _, outside = apply_map(m, ends + torch.tensor([-delta, delta], dtype=h.dtype, device=h.device), h, inverse)
        torch.testing.assert_close(inside, outside, atol=atol, rtol=0)
