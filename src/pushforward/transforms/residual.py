r"""Residual flows: x = z + g(z) with Lip(g) < 1, a free-form Jacobian and an iterative inverse,
for vectors (:class:`ResidualBlock`, g an MLP) and images (:class:`ConvResidualBlock`, g a CNN).

The map is a bijection because g is a contraction (Behrmann et al. 2019, theorem 1): the
inverse is the fixed point of z <- x - g(z) (Banach). Its log-abs-det-Jacobian
log det(I + J_g) (positive determinant: every eigenvalue of J_g has modulus < 1) is computed
by one of three estimators:

- ``"exact"``: the Jacobian in closed form (chain rule through the network) and ``slogdet``,
  O(D^2 H) per example; for small D, and the default in evaluation mode up to
  :data:`EXACT_FEATURES` features;
- ``"series"``: the power series log det(I + J) = sum_k (-1)^{k+1} tr(J^k) / k truncated after
  n terms, each trace by Hutchinson's estimator v^T J^k v with vector-Jacobian products
  (i-ResNet; biased by the truncation, backpropagated through every term);
- ``"roulette"``: the same series with a random number of terms, reweighted so that the
  estimate is unbiased (Russian roulette), and its gradient by the Neumann series of
  (I + J)^{-1} in memory that does not grow with the number of terms (Residual Flows).

:func:`log_det_estimators` says which estimator a module uses in its current mode, so that a
reported figure can say where it came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..checks import RANGES
from ..core import Transform
from ..nn.convnet import cat_context_channels
from ..nn.lipschitz import LipschitzCNN, LipschitzMLP, LipSwish
from ..nn.mlp import cat_context
from .numerical import ConvergenceError, default_tolerance

__all__ = ["ResidualBlock", "ConvResidualBlock", "ESTIMATORS", "EXACT_FEATURES", "log_det_estimators"]

ESTIMATORS = ("exact", "series", "roulette")
# Up to this many features, evaluation mode uses the exact log-det by default: the Jacobians of
# a batch of 1000 examples then take at most 1000 * 128^2 * 8 bytes = 131 MB per hidden layer.
EXACT_FEATURES = 128


def _check_estimator(name: str, estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown {name} {estimator!r}; choose {', '.join(ESTIMATORS)}")


def _rademacher(like: Tensor) -> Tensor:
    return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1


class _Residual(Transform):
    """What the residual blocks share (:class:`ResidualBlock` for vectors, :class:`ConvResidualBlock`
    for images): x = z + g(z) with the log-det estimators, the fixed-point inverse and its
    adjoint, over the trailing ``event_dims`` dimensions. A block sets ``net`` (a Lipschitz
    network of :mod:`pushforward.nn.lipschitz`) and gives ``join`` (z and the context -> the
    network's input) and ``columns`` (where z lies in that input, along its first event
    dimension)."""

    net: LipschitzMLP | LipschitzCNN

    def __init__(self, elements: int, context_features: int, coefficient: float, estimator: str,
                 eval_estimator: str | None, terms: int, exact_terms: int, stop_probability: float,
                 terms_per_example: bool, tol: float | None, max_iter: int,
                 join: Callable[[Tensor, Tensor | None, int, str], Tensor], columns: slice):
        super().__init__()
        _check_estimator("estimator", estimator)
        if eval_estimator is None:
            eval_estimator = "exact" if elements <= EXACT_FEATURES else estimator
        _check_estimator("eval_estimator", eval_estimator)
        for name, value in (("terms", terms), ("exact_terms", exact_terms), ("stop_probability", stop_probability),
                            ("coefficient", coefficient)):
            RANGES[name].check(name, value)
        self.context_features = context_features
        self.estimator, self.eval_estimator = estimator, eval_estimator
        self.terms, self.exact_terms, self.stop_probability = terms, exact_terms, float(stop_probability)
        self.terms_per_example = terms_per_example
        self.tol, self.max_iter = tol, max_iter
        self._join, self._columns = join, columns

    def _input(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self._join(z, context, self.context_features, type(self).__name__)

    def _dot(self, a: Tensor, b: Tensor) -> Tensor:
        """sum over the event of a * b, shape (*batch,)."""
        return (a * b).flatten(a.dim() - self.event_dims).sum(-1)

    def _batch(self, z: Tensor) -> torch.Size:
        return z.shape[: z.dim() - self.event_dims]

    def estimator_in(self, training: bool) -> str:
        """The log-det estimator of training mode (``estimator``) or evaluation mode (``eval_estimator``)."""
        return self.estimator if training else self.eval_estimator

    @property
    def active_estimator(self) -> str:
        """The log-det estimator of the current mode."""
        return self.estimator_in(self.training)

    def _g(self, weights: Sequence[Tensor], context: Tensor | None) -> Callable[[Tensor], Tensor]:
        return lambda z: self.net.forward_with(weights, self._input(z, context))

    def _forward(self, z: Tensor, context: Tensor | None, weights: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """x = z + g(z) and its ladj by the active estimator."""
        inp = self._input(z, context)
        columns = self._columns
        estimator = self.active_estimator
        if estimator == "exact":
            gz, jac = self.net.jacobian(weights, inp, columns)
            eye = torch.eye(jac.shape[-1], dtype=z.dtype, device=z.device)
            return z + gz, torch.linalg.slogdet(eye + jac)[1]
        gz, slopes = self.net.forward_and_slopes(weights, inp)
        if estimator == "series":
            return z + gz, self._series(weights, slopes, columns, z)
        return z + gz, self._roulette(weights, slopes, columns, z)

    def _series(self, weights: Sequence[Tensor], slopes: list[Tensor], columns: slice, z: Tensor) -> Tensor:
        v = _rademacher(z)
        w, ladj = v, z.new_zeros(self._batch(z))
        for k in range(1, self.terms + 1):
            w = self.net.vjp(weights, slopes, w, columns)  # w = v^T J^k, with a graph
            ladj = ladj + (-1) ** (k + 1) / k * self._dot(w, v)
        return ladj

    def _roulette(self, weights: Sequence[Tensor], slopes: list[Tensor], columns: slice, z: Tensor) -> Tensor:
        v = _rademacher(z)
        batch = self._batch(z)
        # M ~ Geometric(p) on {0, 1, ...} by inversion: P(M >= m) = P(U <= (1 - p)^m) = (1 - p)^m
        log_q = math.log1p(-self.stop_probability)
        draws = batch if self.terms_per_example else ()
        u = torch.rand(draws, dtype=z.dtype, device=z.device).clamp(min=torch.finfo(z.dtype).tiny)
        n = self.exact_terms + torch.floor(torch.log(u) / log_q)
        largest = int(n.max()) if n.numel() and z.numel() else 0
        with torch.no_grad():
            frozen, frozen_slopes = [w.detach() for w in weights], [s.detach() for s in slopes]
            w, value, neumann = v, z.new_zeros(batch), v.clone()
            for k in range(1, largest + 1):
                w = self.net.vjp(frozen, frozen_slopes, w, columns)
                # 1[k <= N] / P(N >= k), eq. (6)
                weight = (k <= n).to(z.dtype) * math.exp(-max(0, k - self.exact_terms) * log_q)
                value = value + (-1) ** (k + 1) / k * weight * self._dot(w, v)
                neumann = neumann + (-1) ** k * weight.reshape(*weight.shape, *[1] * self.event_dims) * w
        if not torch.is_grad_enabled():
            return value
        # eq. (8): the gradient of w^T J v with w fixed is the Neumann estimate of the gradient
        surrogate = self._dot(self.net.vjp(weights, slopes, neumann, columns), v)
        return value + surrogate - surrogate.detach()

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._forward(z, context, self.net.effective_weights())

    def _fixed_point(self, step: Callable[[Tensor], Tensor], start: Tensor, what: str) -> Tensor:
        """The fixed point of ``step`` (a contraction with constant at most the bound L) from ``start``.

        Raises:
            ConvergenceError: naming ``what`` and the iteration count.
        """
        tol = default_tolerance(start.dtype) if self.tol is None else self.tol
        lip = self.net.lipschitz_bound()
        factor = lip / (1 - lip)
        z, best, stalled = start, math.inf, 0
        event = tuple(range(-self.event_dims, 0))
        name = type(self).__name__
        for _ in range(self.max_iter):
            new = step(z)
            change = torch.linalg.vector_norm(new - z, dim=event)
            z = new
            if not bool(torch.isfinite(change).all()):
                raise ConvergenceError(f"{name}: {what} has non-finite iterates")
            # the error bound in units of the tolerance, for the worst example
            worst = float((factor * change / (tol * z.abs().amax(event).clamp(min=1))).max()) if z.numel() else 0.0
            if worst <= 1:
                return z
            # rounding floor: no progress for 10 iterations within sqrt(tol), as in newton()
            best, stalled = (worst, 0) if worst < 0.99 * best else (best, stalled + 1)
            if stalled >= 10 and worst * tol <= math.sqrt(tol):
                return z
        raise ConvergenceError(f"{name}: {what} did not reach tolerance {tol:g} in {self.max_iter} "
                               f"iterations (Lipschitz bound {lip:.4g})")

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weights = self.net.effective_weights()
        with torch.no_grad():
            frozen = [w.detach() for w in weights]
            ctx = None if context is None else context.detach()
            g = self._g(frozen, ctx)
            target = x.detach()
            solution = self._fixed_point(lambda z: target - g(z), target, "the inverse's fixed-point iteration")
        z = x - self._g(weights, context)(solution)
        if z.requires_grad:
            z.register_hook(self._adjoint(solution, frozen, ctx))
        _, ladj = self._forward(z, context, weights)
        return z, -ladj

    def _adjoint(self, solution: Tensor, weights: list[Tensor], context: Tensor | None) -> Callable[[Tensor], Tensor]:
        """The backward hook that turns the gradient u of z = x - g(z*) into (I + J)^{-T} u.

        z = x - g(z*) with z* held fixed passes u to x and -u to g; the implicit function theorem
        asks for lambda = (I + J)^{-T} u in place of u, the fixed point of lambda = u - J^T lambda.
        """

        def hook(u: Tensor | None) -> Tensor | None:
            if u is None:  # an undefined gradient (autograd's "zero") stays undefined
                return None
            if torch.is_grad_enabled():  # create_graph=True: this gradient has no graph to give
                raise RuntimeError(f"{type(self).__name__}: second derivatives are not available through the block's "
                                   "fixed-point inverse; put the blocks the other way round (Inverse) where a "
                                   "gradient penalty or Hessian product is needed")
            with torch.no_grad():
                slopes = self.net.forward_and_slopes(weights, self._input(solution, context))[1]
                return self._fixed_point(lambda lam: u - self.net.vjp(weights, slopes, lam, self._columns), u,
                                         "the inverse's backward pass")

        return hook


class ResidualBlock(_Residual):
    r"""Invertible residual block x = z + g(z, c), g a Lipschitz MLP with Lip(g) <= c^L < 1.

    g is a :class:`~pushforward.nn.lipschitz.LipschitzMLP` of the features with the context
    prepended (the context is not bounded: only z -> g(z, c) needs to be a contraction), whose
    linear layers have spectral norm at most ``coefficient`` c, so Lip(g) <= c^L for L linear
    layers. ladj = log det(I + J_g(z)), by the estimator of the current mode:

    - training mode: ``estimator``;
    - evaluation mode: ``eval_estimator``, by default "exact" when features <= 128
      (:data:`EXACT_FEATURES`), otherwise ``estimator``.

    The estimators (Rademacher probe vectors v, one per example, independent draws):

    - "exact": slogdet(I + J_g) with J_g in closed form;
    - "series": sum_{k=1}^{n} (-1)^{k+1} v^T J^k v / k, n = ``terms`` (Behrmann et al. 2019,
      section 3 and algorithm 2); its expectation is the series truncated after n terms, so it is biased by
      at most sum_{k>n} D Lip(g)^k / k; gradients by backpropagating through all n terms;
    - "roulette": sum_{k=1}^{N} (-1)^{k+1} v^T J^k v / (k P(N >= k)) with N = ``exact_terms`` + M,
      M ~ Geometric(p) on {0, 1, ...}, p = ``stop_probability``, so P(N >= k) =
      (1 - p)^{max(0, k - exact_terms)}; unbiased (Chen et al. 2019, eq. (6)-(7)). N is drawn
      once per call, as in the paper (the examples of a batch share it: each estimate is still
      unbiased, and a call costs N vector-Jacobian products, exact_terms + (1 - p) / p on
      average), or with ``terms_per_example`` for each example (independent estimates, at the
      cost of the batch's largest N). The variance is finite when Lip(g)^2 < 1 - p. The
      gradient is the Neumann-series estimate
      d/dtheta log det(I + J) = E[(sum_{k=0}^{N} (-1)^k v^T J^k / P(N >= k)) dJ/dtheta v]
      (eq. (8)): the power series runs without a graph, then one vector-Jacobian product of the
      accumulated vector w with a graph gives the surrogate w^T J v, whose gradient is the
      estimate; ladj = value + surrogate - surrogate.detach(). Memory does not grow with N.

    The inverse iterates z_{k+1} = x - g(z_k) from z_0 = x without gradients until the bound
    ||z_{k+1} - z*|| <= L / (1 - L) ||z_{k+1} - z_k|| (L = c^L the Lipschitz bound) on the
    Euclidean error is at most tol * max(1, max_i |z_i|) for every example, and the error is
    then at most that (the spectral norms are exact or certified upper bounds, so L is a true bound); where rounding stops
    the progress for 10 iterations with the bound below sqrt(tol) * max(1, max_i |z_i|), that is
    as accurate as the dtype allows and is accepted too (float32, large D). The result is
    differentiable: its gradient is that of the implicit function theorem,
    dz = (I + J)^{-1} (dx - dg), whose adjoint (I + J)^{-T} u is solved by the same kind of
    fixed-point iteration in the backward pass. The inverse's ladj is minus the forward ladj at
    the solution.

    Shapes: z, x (*batch, features); context (*batch, context_features); ladj (*batch,).

    Reference: Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen. Invertible residual networks.
    ICML 2019, theorem 1, algorithm 1 (inverse), section 3 and algorithm 2 (series).
    arXiv:1811.00995.
    Chen, Behrmann, Duvenaud & Jacobsen. Residual flows for invertible generative modeling.
    NeurIPS 2019, eq. (6)-(8), section 3.3 (LipSwish). arXiv:1906.02735.

    Args:
        features: number of features D.
        context_features: size of the context, 0 for none.
        hidden_features: sizes of g's hidden layers.
        coefficient: the spectral-norm bound c of each linear layer, 0 < c < 1.
        estimator: the log-det estimator in training mode: "exact", "series" or "roulette".
        eval_estimator: the estimator in evaluation mode (None: "exact" up to 128 features,
            else ``estimator``).
        activation: LipSwish, ELU or Tanh of :mod:`pushforward.nn.lipschitz`.
        iterations: None for exact spectral norms and gradients, else the power-iteration
            steps per training call that give their gradients, the values rounded up to a grid
            (:class:`~pushforward.nn.lipschitz.SpectralLinear`).
        terms: n of "series".
        exact_terms: terms that "roulette" always computes (they reduce its variance).
        stop_probability: p of "roulette"'s geometric number of further terms, 0 < p < 1.
        terms_per_example: draw "roulette"'s number of terms for each example rather than once
            per call.
        tol: tolerance of the inverse (default 1e-10 in float64, 1e-5 below).
        max_iter: the largest number of fixed-point iterations of the inverse (and of its
            backward pass).

    Raises:
        ValueError: for a coefficient or stop probability outside (0, 1), or an unknown
            estimator name.
        ConvergenceError: in ``inverse`` (or its backward pass), if the tolerance is not met in
            ``max_iter`` iterations or the iterates are not finite.
    """

    def __init__(self, features: int, context_features: int = 0, hidden_features: Sequence[int] = (128, 128),
                 coefficient: float = 0.97, estimator: str = "exact", eval_estimator: str | None = None,
                 activation: type[nn.Module] = LipSwish, iterations: int | None = None, terms: int = 5,
                 exact_terms: int = 2, stop_probability: float = 0.5, terms_per_example: bool = False,
                 tol: float | None = None, max_iter: int = 1000):
        super().__init__(features, context_features, coefficient, estimator, eval_estimator, terms, exact_terms,
                         stop_probability, terms_per_example, tol, max_iter, cat_context,
                         slice(context_features, None))
        self.features = features
        self.net = LipschitzMLP(context_features + features, features, hidden_features, coefficient, activation,
                                iterations)

    def extra_repr(self) -> str:
        return f"features={self.features}, estimator={self.estimator!r}, eval_estimator={self.eval_estimator!r}"


class ConvResidualBlock(_Residual):
    r"""Invertible residual block of images x = z + g(z, c), g a Lipschitz CNN with Lip(g) <= c^L < 1.

    g is a :class:`~pushforward.nn.lipschitz.LipschitzCNN` (by default the papers' 3 x 3, 1 x 1,
    3 x 3 convolutions with ``hidden_channels`` channels) whose convolutions, with periodic
    boundaries, have operator norm at most ``coefficient`` c on (C, H, W) images, computed
    exactly (:class:`~pushforward.nn.lipschitz.SpectralConv2d`), so Lip(g) <= c^L holds on the
    whole image. A context enters as extra channels (a vector context as constant planes,
    :func:`~pushforward.nn.cat_context_channels`). Everything else is :class:`ResidualBlock`'s,
    over the C H W elements of an image: the estimators "exact" (the Jacobian from one
    vector-Jacobian product per element, the default in evaluation mode up to 128 elements),
    "series" and "roulette" (with the Neumann gradient), the fixed-point inverse and its
    implicit gradient.

    Shapes: z, x (*batch, C, H, W); context (*batch, context_features) or
    (*batch, context_features, H, W); ladj (*batch,).

    Reference: Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen. Invertible residual networks.
    ICML 2019, section 5. arXiv:1811.00995. Chen, Behrmann, Duvenaud & Jacobsen. Residual flows
    for invertible generative modeling. NeurIPS 2019, appendix E. arXiv:1906.02735.

    Args:
        shape: the image shape (C, H, W).
        context_features: size of the context, 0 for none.
        hidden_channels: channels of g's hidden layers.
        kernel_sizes: g's odd kernel sizes, one per convolution.
        coefficient, estimator, eval_estimator, activation, iterations, terms, exact_terms,
            stop_probability, terms_per_example, tol, max_iter: as :class:`ResidualBlock`.

    Raises:
        ValueError: as :class:`ResidualBlock`, or for a shape that is not (C, H, W) or an even
            kernel size.
        ConvergenceError: as :class:`ResidualBlock`.
    """

    event_dims = 3

    def __init__(self, shape: Sequence[int], context_features: int = 0, hidden_channels: int = 64,
                 kernel_sizes: Sequence[int] = (3, 1, 3), coefficient: float = 0.97, estimator: str = "exact",
                 eval_estimator: str | None = None, activation: type[nn.Module] = LipSwish,
                 iterations: int | None = None, terms: int = 5, exact_terms: int = 2, stop_probability: float = 0.5,
                 terms_per_example: bool = False, tol: float | None = None, max_iter: int = 1000):
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"ConvResidualBlock needs an image shape (C, H, W), got {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        channels = self.shape[0]
        super().__init__(math.prod(self.shape), context_features, coefficient, estimator, eval_estimator, terms,
                         exact_terms, stop_probability, terms_per_example, tol, max_iter, cat_context_channels,
                         slice(0, channels))
        self.net = LipschitzCNN(channels + context_features, channels, self.shape[1:],
                                [hidden_channels] * (len(kernel_sizes) - 1), kernel_sizes, coefficient, activation,
                                iterations)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, estimator={self.estimator!r}, eval_estimator={self.eval_estimator!r}"


def log_det_estimators(module: nn.Module, training: bool | None = None) -> list[str]:
    """The log-det estimators that the residual blocks of ``module`` use in training mode
    (``training`` True), evaluation mode (False) or each block's current mode (None), sorted and
    without repeats; empty when it has none.

    >>> import pushforward as pf
    >>> log_det_estimators(pf.ResidualFlow(2), training=True), log_det_estimators(pf.ResidualFlow(2), training=False)
    (['roulette'], ['exact'])
    """
    return sorted({m.active_estimator if training is None else m.estimator_in(training)
                   for m in module.modules() if isinstance(m, _Residual)})
