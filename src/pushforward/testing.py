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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .core import Chain, Inverse, Transform
from .transforms.autoregressive import MaskedAutoregressive
from .transforms.continuous import ContinuousFlow
from .transforms.convolution import Conv1x1, Conv1x1LU, EmergingConv, PeriodicConv
from .transforms.coupling import Coupling, ImageCoupling, alternating_mask
from .transforms.multiscale import MultiScale
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
from .transforms.elementwise import InverseMap, LeakyReLU, Softplus, Tanh
from .transforms.polynomials import BernsteinPolynomial, SOSPolynomial
from .transforms.splines import CubicSpline, LinearRationalSpline, PiecewiseLinear, PiecewiseQuadratic

__all__ = [
    "transform_examples", "perturb", "autograd_ladj", "check_round_trip", "check_ladj",
    "check_ladj_symmetry", "check_derivatives",
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
