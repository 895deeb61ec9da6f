r"""Lipschitz-constrained networks: spectrally normalised linear and convolutional layers and
1-Lipschitz activations.

The residual map g of a residual flow must be a contraction, Lip(g) < 1. An MLP whose linear
layers have spectral norm at most c and whose activations are 1-Lipschitz has Lip(g) <= c^L for L
linear layers. Each layer here is evaluated from *effective* weights computed once per call
(:meth:`LipschitzMLP.effective_weights`), so that a numerical inverse that evaluates g hundreds
of times normalises the weights once, and the Jacobian of g is available in closed form
(:meth:`LipschitzMLP.jacobian`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import RANGES

__all__ = ["SpectralLinear", "SpectralConv2d", "LipschitzMLP", "LipschitzCNN", "LipSwish", "ELU", "Tanh",
           "circular_conv2d", "grid_ceiling", "GRID"]


class LipSwish(nn.Module):
    r"""LipSwish(h) = h sigmoid(beta h) / 1.1, 1-Lipschitz for every beta.

    The derivative of h sigmoid(beta h) is s(t) = sigmoid(t) + t sigmoid(t)(1 - sigmoid(t)) at
    t = beta h, whose absolute value is at most 1.0998 for all t, so dividing by 1.1 makes the
    map 1-Lipschitz. beta = softplus(beta') > 0 is learned per unit, starting at ``beta``.

    The start beta = 5 makes the map close to ReLU / 1.1 (slope 0.91 for h > 0): at beta = 1 it
    is close to h / 2.2 around 0, and a residual flow of 8 blocks (2 x 32 units) gained 0.19 nats
    over the standard normal on standardised moons in 10 epochs, against 1.0 at beta = 5.

    Shapes: h (*batch, features) -> (*batch, features), or (*batch, C, H, W) with beta of shape
    (C, 1, 1), one per channel.

    Reference: Chen, Behrmann, Duvenaud & Jacobsen. Residual flows for invertible generative
    modeling. NeurIPS 2019, section 3.3 (after Ramachandran et al. 2017, Swish).

    Args:
        features: number of units, or the shape of beta ((C, 1, 1) for images).
        beta: the initial beta, > 0.
    """

    def __init__(self, features: int | tuple[int, ...], beta: float = 5.0):
        super().__init__()
        start = beta + math.log(-math.expm1(-beta))  # softplus^{-1}(beta)
        self.beta = nn.Parameter(torch.full((features,) if isinstance(features, int) else features, start))

    def forward(self, h: Tensor) -> Tensor:
        return h * torch.sigmoid(F.softplus(self.beta) * h) / 1.1

    def derivative(self, h: Tensor) -> Tensor:
        """d LipSwish / dh element-wise, shape of h."""
        return self.value_and_derivative(h)[1]

    def value_and_derivative(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """LipSwish(h) and its derivative, from one sigmoid."""
        t = F.softplus(self.beta) * h
        s = torch.sigmoid(t)
        return h * s / 1.1, (s + t * s * (1 - s)) / 1.1


class ELU(nn.Module):
    r"""ELU(h) = h for h > 0, exp(h) - 1 otherwise; 1-Lipschitz (derivative 1 or exp(h) <= 1).

    Reference: Behrmann et al. Invertible residual networks. ICML 2019 (ELU in its
    density-estimation experiments).
    """

    def __init__(self, features: int | tuple[int, ...]):
        super().__init__()

    def forward(self, h: Tensor) -> Tensor:
        return F.elu(h)

    def derivative(self, h: Tensor) -> Tensor:
        return torch.where(h > 0, torch.ones_like(h), torch.exp(torch.clamp(h, max=0)))

    def value_and_derivative(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return F.elu(h), self.derivative(h)


class Tanh(nn.Module):
    r"""tanh(h), 1-Lipschitz (derivative 1 - tanh^2 in (0, 1])."""

    def __init__(self, features: int | tuple[int, ...]):
        super().__init__()

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(h)

    def derivative(self, h: Tensor) -> Tensor:
        return 1 - torch.tanh(h).square()

    def value_and_derivative(self, h: Tensor) -> tuple[Tensor, Tensor]:
        y = torch.tanh(h)
        return y, 1 - y.square()


def _unit(x: Tensor, previous: Tensor | None = None) -> Tensor:
    """x / |x|; ``previous`` where x is 0 (a zero weight would otherwise zero the power
    iteration's vectors for good)."""
    norm = torch.linalg.vector_norm(x)
    unit = x / norm.clamp(min=1e-12)
    return unit if previous is None else torch.where(norm > 0, unit, previous)  # no host sync


# The grid that a spectral norm is rounded up to when ``iterations`` is set: sigma_hat =
# (1 + GRID)^j, the smallest such value >= sigma, so sigma <= sigma_hat < sigma (1 + GRID).
GRID = 2.0**-11
# Gram matrices of this size or more have their rounded norm certified by Cholesky factorisations
# (SpectralLinear.rounded_sigma), from a Rayleigh-Ritz estimate on this many vectors.
CERTIFY_FROM = 128
RITZ_VECTORS = 16


def grid_ceiling(sigma: Tensor) -> Tensor:
    """The smallest (1 + :data:`GRID`)^j (j an integer) at or above ``sigma`` >= 0 (0 stays 0);
    a tensor of ``sigma``'s shape and dtype."""
    return _grid_point(_grid_index(sigma), sigma)


def _grid_index(sigma: Tensor) -> Tensor:
    """j = ceil(log(sigma) / log(1 + GRID)) in double (-inf for 0)."""
    return torch.ceil(torch.log(sigma.double()) / math.log1p(GRID))


def _grid_point(j: Tensor, like: Tensor) -> Tensor:
    """(1 + GRID)^j in the dtype of ``like`` (0 for j = -inf)."""
    return torch.exp(j * math.log1p(GRID)).to(like.dtype)


def _gram(w: Tensor) -> Tensor:
    """The smaller of W W^T and W^T W (the same nonzero eigenvalues, sigma_i^2)."""
    return w @ w.mT if w.shape[-1] > w.shape[-2] else w.mT @ w


class _SpectralNorm(nn.Module):
    """What a spectrally normalised layer shares: W_eff = W / max(1, sigma / c) with sigma the
    operator norm of the layer's linear map A, exact, or with ``iterations`` rounded up to the
    grid (1 + GRID)^j (:func:`grid_ceiling`), its gradient in training mode from the power
    iteration v <- A^T u / |.|, u <- A v / |.|, warm-started from the previous call's u and v
    (buffers). A subclass gives the exact norm (``exact_sigma``), A and A^T as functions of W,
    and may give a faster way to the rounded norm (``rounded_sigma``)."""

    def _setup(self, weight: Tensor, u: Tensor, v: Tensor, coefficient: float, iterations: int | None) -> None:
        RANGES["coefficient"].check("coefficient", coefficient)
        if iterations is not None:
            RANGES["iterations"].check("iterations", iterations)
        self.coefficient, self.iterations = float(coefficient), iterations
        self.weight = nn.Parameter(weight)
        self.register_buffer("u", _unit(u))
        self.register_buffer("v", _unit(v))

    def rounded_sigma(self, w: Tensor) -> Tensor:
        """:func:`grid_ceiling` of the exact norm, without a gradient."""
        return grid_ceiling(self.exact_sigma(w.detach()))

    def sigma(self) -> Tensor:
        """The operator norm of the layer: exact without ``iterations``; with them, rounded up to
        the grid, its gradient that of u^T A v in training mode (advancing the power iteration)
        and the exact one in evaluation mode."""
        w = self.weight
        if self.iterations is None:
            return self.exact_sigma(w)
        if not self.training:
            exact = self.exact_sigma(w)
            return exact + (grid_ceiling(exact.detach()) - exact.detach())
        with torch.no_grad():
            value = self.rounded_sigma(w)
            u, v = self.u, self.v
            for _ in range(self.iterations):
                v = _unit(self.adjoint(w, u), v)
                u = _unit(self.apply(w, v), u)
            self.u.copy_(u)
            self.v.copy_(v)
        estimate = (u * self.apply(w, v)).sum()
        return value + (estimate - estimate.detach())

    def effective_weight(self) -> Tensor:
        """W / max(1, sigma / c), the shape of W."""
        return self.weight / torch.clamp(self.sigma() / self.coefficient, min=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.call(self.effective_weight(), x)


class SpectralLinear(_SpectralNorm):
    r"""Linear layer whose effective weight has spectral norm at most ``coefficient`` c.

    W_eff = W / max(1, sigma / c), with sigma the largest singular value of W: W is kept where
    its norm is at most c and scaled down to norm c otherwise (Behrmann et al. 2019, section 2,
    rather than always dividing by sigma as Miyato et al. 2018 do).

    sigma is never a power-iteration estimate: the papers' estimate is a *lower* bound (with one
    warm-started iteration per step, the effective weights of a residual flow trained by Adam
    here reached 1.12 c at lr 1e-3 and 1.27 c at lr 3e-2, and c^L < 1 no longer guaranteed a
    contraction; on digits with 2 x 256 hidden units it stayed 10-20 % below sigma for hundreds
    of steps). ``iterations`` chooses between two certified values:

    - None: sigma exact, sigma^2 the largest eigenvalue of the smaller of W^T W and W W^T
      (``eigvalsh``), with the exact gradient through the eigendecomposition;
    - k: sigma rounded up to the grid, sigma_hat = (1 + GRID)^j >= sigma > (1 + GRID)^{j-1}
      (:func:`grid_ceiling`, GRID = 2^-11: the effective norm lies in [c / (1 + GRID), c]),
      with dsigma = u^T dW v in training mode, u, v the singular vectors from k steps per call of
      the power iteration warm-started from the previous call's (buffers; Miyato et al. 2018,
      algorithm 1), exact once u, v have converged. Rounding makes sigma_hat cheap to
      certify for Gram matrices of size n >= :data:`CERTIFY_FROM`: a Rayleigh-Ritz estimate
      theta <= sigma^2 from a subspace of :data:`RITZ_VECTORS` vectors, kept from call to call
      (a non-persistent buffer) and advanced by one block power step, gives the grid point j
      just above sqrt(theta), so (1 + GRID)^{j-1} < sigma; a Cholesky factorisation of
      (1 + GRID)^{2j} I - W^T W that succeeds proves sigma <= (1 + GRID)^j. Where it fails, the
      next grid point is tried and then ``eigvalsh`` decides, so the value is a function of W
      alone (to rounding), whatever the subspace held; a Cholesky factorisation costs about a
      sixth of ``eigvalsh`` for 256 x 256 on a CPU.

    Shapes: input (*batch, in_features); output (*batch, out_features).

    Reference: Miyato, Kataoka, Koyama & Yoshida. Spectral normalization for generative
    adversarial networks. ICLR 2018, algorithm 1; Behrmann, Grathwohl, Chen, Duvenaud &
    Jacobsen. Invertible residual networks. ICML 2019, section 2 and algorithm 2 (the bound c).

    Args:
        in_features, out_features: the layer's sizes.
        coefficient: the bound c, 0 < c < 1.
        iterations: None for the exact value and gradient of sigma, else the power-iteration
            steps per call in training mode that give its gradient (the value then rounded up
            to the grid).

    Raises:
        ValueError: for a coefficient outside (0, 1) or ``iterations`` below 1.
    """

    def __init__(self, in_features: int, out_features: int, coefficient: float = 0.97,
                 iterations: int | None = None):
        super().__init__()
        weight = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # as nn.Linear
        self._setup(weight, torch.randn(out_features), torch.randn(in_features), coefficient, iterations)
        bound = 1 / math.sqrt(in_features)
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        n = min(in_features, out_features)
        if iterations is not None and n >= CERTIFY_FROM:
            basis = torch.linalg.qr(torch.randn(n, RITZ_VECTORS))[0]
            self.register_buffer("ritz_basis", basis, persistent=False)

    @staticmethod
    def exact_sigma(w: Tensor) -> Tensor:
        """The largest singular value of ``w``, by ``eigvalsh`` of the smaller Gram matrix."""
        return torch.linalg.eigvalsh(_gram(w))[-1].clamp(min=0).sqrt()

    def rounded_sigma(self, w: Tensor) -> Tensor:
        """:func:`grid_ceiling` of sigma, certified by Cholesky factorisations from a Rayleigh-Ritz
        estimate where the layer keeps a subspace (see the class), without a gradient."""
        if not hasattr(self, "ritz_basis"):
            return super().rounded_sigma(w)
        with torch.no_grad():
            gram = _gram(w)
            basis = torch.linalg.qr(gram @ self.ritz_basis)[0]
            theta = torch.linalg.eigvalsh(basis.mT @ gram @ basis)[-1]
            if theta > 0:
                j = _grid_index(theta.sqrt())
                for step in range(2):  # the grid point just above sqrt(theta), then the next
                    candidate = _grid_point(j + step, gram)
                    shifted = torch.neg(gram)
                    shifted.diagonal().add_(candidate.square())
                    if int(torch.linalg.cholesky_ex(shifted).info) == 0:
                        self.ritz_basis.copy_(basis)
                        return candidate
            values, vectors = torch.linalg.eigh(gram)
            self.ritz_basis.copy_(vectors[:, -RITZ_VECTORS:])
            return grid_ceiling(values[-1].clamp(min=0).sqrt())

    @staticmethod
    def apply(w: Tensor, v: Tensor) -> Tensor:
        """W v for v (*batch, in_features)."""
        return F.linear(v, w)

    @staticmethod
    def adjoint(w: Tensor, u: Tensor) -> Tensor:
        """W^T u for u (*batch, out_features)."""
        return u @ w

    def call(self, w: Tensor, x: Tensor) -> Tensor:
        """The layer with effective weight ``w``: W x + b."""
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, "
                f"coefficient={self.coefficient}, iterations={self.iterations}")


def circular_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""Convolution (cross-correlation) of images with periodic boundaries: odd kernels k x k,
    the output of the input's height and width.

    y[o, i, j] = sum_{c, a, b} W[o, c, a, b] x[c, (i + a - p) mod H, (j + b - p) mod W] + bias[o],
    p = (k - 1) / 2. Its adjoint is the same convolution of W transposed (in and out channels)
    and flipped (:func:`circular_conv2d_adjoint`).

    Shapes: x (*batch, C_in, H, W); weight (C_out, C_in, k, k); returns (*batch, C_out, H, W).
    """
    p = weight.shape[-1] // 2
    batch = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    if p:
        flat = _wrap(flat, p)
    y = F.conv2d(flat, weight, bias)
    return y.reshape(*batch, *y.shape[-3:])


def _wrap(x: Tensor, p: int) -> Tensor:
    """x padded by p on each side periodically, also where p exceeds the size (the padding
    repeats the image as often as needed, which F.pad's circular mode refuses; it is faster
    where it applies)."""
    h, w = x.shape[-2:]
    if p <= min(h, w):
        return F.pad(x, (p, p, p, p), mode="circular")
    rows = torch.arange(-p, h + p, device=x.device) % h
    cols = torch.arange(-p, w + p, device=x.device) % w
    return x[..., rows[:, None], cols]


def circular_conv2d_adjoint(y: Tensor, weight: Tensor) -> Tensor:
    """The adjoint of x -> :func:`circular_conv2d` (x, weight) (no bias), applied to ``y``.

    Shapes: y (*batch, C_out, H, W); weight (C_out, C_in, k, k); returns (*batch, C_in, H, W).
    """
    return circular_conv2d(y, weight.transpose(0, 1).flip(-1, -2))


class SpectralConv2d(_SpectralNorm):
    r"""Periodic convolution whose effective kernel has operator norm at most ``coefficient`` c
    on images of size ``size``.

    W_eff = W / max(1, sigma / c) as :class:`SpectralLinear`, with sigma the exact operator norm
    of the convolution x -> :func:`circular_conv2d` (x, W) on (C_in, H, W) images. With periodic
    boundaries the operator is block-circulant: the 2-D discrete Fourier transform diagonalises
    it into the C_out x C_in matrices K(u, v) = sum_{a, b} W[:, :, a, b] exp(-2 pi i (u a / H +
    v b / W)), one per frequency (u, v), and sigma is the largest singular value of any of them
    (Sedghi et al. 2019, theorem 6; taps beyond the image size wrap around, as the convolution
    does). So the bound holds to rounding at every step, in training and evaluation, where the
    power iteration of the papers (Behrmann et al. 2019; Gouk et al. 2018) gives only a lower
    bound of sigma. ``iterations`` chooses as in :class:`SpectralLinear`: None, sigma exact
    with its gradient through the eigendecomposition; k, sigma rounded up to the grid
    (:func:`grid_ceiling`, from the exact value) with its gradient from k warm-started steps of
    the power iteration on the convolution operator itself (the convolution and its adjoint on
    (C, H, W) vectors).

    Zero padding, the papers' choice, has no such closed form: its operator norm is only
    bounded by the periodic one on a larger grid, which is why the boundaries here are periodic.

    Shapes: input (*batch, in_channels, H, W); output (*batch, out_channels, H, W).

    Reference: Sedghi, Gupta & Long. The singular values of convolutional layers. ICLR 2019.
    arXiv:1805.10408. Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen. Invertible residual
    networks. ICML 2019, section 2 (spectral normalisation of convolutions by power iteration).

    Args:
        in_channels, out_channels: the layer's channels.
        kernel_size: k, odd.
        size: the image size (H, W) the bound holds for.
        coefficient: the bound c, 0 < c < 1.
        iterations: None for the exact gradient of sigma, else the power-iteration steps per call
            in training mode that give it (the value then rounded up to the grid, :func:`grid_ceiling`).

    Raises:
        ValueError: for a coefficient outside (0, 1), ``iterations`` below 1 or an even kernel size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, size: tuple[int, int],
                 coefficient: float = 0.97, iterations: int | None = None):
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"SpectralConv2d needs an odd kernel size, got {kernel_size}")
        weight = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # as nn.Conv2d
        self.size = (int(size[0]), int(size[1]))
        self._setup(weight, torch.randn(out_channels, *self.size), torch.randn(in_channels, *self.size),
                    coefficient, iterations)
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))

    def exact_sigma(self, w: Tensor) -> Tensor:
        """The operator norm of the periodic convolution by ``w`` on images of ``size``: the
        largest singular value of the Fourier matrices K(u, v)."""
        k = w.shape[-1]
        if k == 1:  # every K(u, v) is the channel matrix itself
            return SpectralLinear.exact_sigma(w[:, :, 0, 0])
        h, wd = self.size
        taps = torch.arange(k, dtype=w.dtype, device=w.device)
        rows = torch.polar(torch.ones(h, k, dtype=w.dtype, device=w.device),
                           -2 * math.pi * torch.arange(h, dtype=w.dtype, device=w.device)[:, None] * taps / h)
        cols = torch.polar(torch.ones(wd, k, dtype=w.dtype, device=w.device),
                           -2 * math.pi * torch.arange(wd, dtype=w.dtype, device=w.device)[:, None] * taps / wd)
        m = torch.einsum("ua,vb,oiab->uvoi", rows, cols, w.to(rows.dtype))
        gram = m @ m.mH if w.shape[1] > w.shape[0] else m.mH @ m
        return torch.linalg.eigvalsh(gram)[..., -1].max().clamp(min=0).sqrt()

    @staticmethod
    def apply(w: Tensor, v: Tensor) -> Tensor:
        """The convolution of v (*batch, in_channels, H, W) by ``w``."""
        return circular_conv2d(v, w)

    @staticmethod
    def adjoint(w: Tensor, u: Tensor) -> Tensor:
        """The adjoint convolution of u (*batch, out_channels, H, W)."""
        return circular_conv2d_adjoint(u, w)

    def call(self, w: Tensor, x: Tensor) -> Tensor:
        """The layer with effective kernel ``w``, bias included."""
        return circular_conv2d(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_channels={self.weight.shape[1]}, out_channels={self.weight.shape[0]}, "
                f"kernel_size={self.weight.shape[-1]}, size={self.size}, coefficient={self.coefficient}, "
                f"iterations={self.iterations}")


class _LipschitzNet(nn.Module):
    """What the Lipschitz networks share: spectrally normalised layers (``layers``, each with
    ``call``, ``adjoint`` and ``effective_weight``) alternating with 1-Lipschitz activations,
    evaluated from effective weights computed once, with vector-Jacobian products in closed form."""

    activations: nn.ModuleList
    coefficient: float

    def lipschitz_bound(self) -> float:
        """c^L, a bound of the network's Lipschitz constant."""
        return self.coefficient ** len(self.layers)

    def effective_weights(self) -> list[Tensor]:
        """Every layer's normalised weight, computed once for the calls that follow."""
        return [layer.effective_weight() for layer in self.layers]

    def forward_with(self, weights: Sequence[Tensor], x: Tensor) -> Tensor:
        """The network at ``x`` with the given effective ``weights``."""
        for i, (layer, w) in enumerate(zip(self.layers, weights)):
            x = layer.call(w, x)
            if i < len(self.activations):
                x = self.activations[i](x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with(self.effective_weights(), x)

    def forward_and_slopes(self, weights: Sequence[Tensor], x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The output at ``x`` and the activations' derivatives phi'(h_i) at each hidden layer,
        which :meth:`vjp` takes (each the shape of its hidden layer's output)."""
        slopes = []
        for i, (layer, w) in enumerate(zip(self.layers, weights)):
            x = layer.call(w, x)
            if i < len(self.activations):
                x, slope = self.activations[i].value_and_derivative(x)
                slopes.append(slope)
        return x, slopes

    def vjp(self, weights: Sequence[Tensor], slopes: Sequence[Tensor], w: Tensor, columns: slice) -> Tensor:
        r"""w^T J, J the Jacobian with respect to the input features (or channels) ``columns`` at
        the point where ``slopes`` were taken: w^T A_L diag(phi'(h_{L-1})) A_{L-1} ...
        diag(phi'(h_1)) A_1[:, columns], A_i the layers' linear maps, by their adjoints without
        autograd (differentiable in the weights and slopes).

        Shapes: w the output's shape; returns the input's shape restricted to ``columns``.
        """
        for i in range(len(weights) - 1, 0, -1):
            w = self.layers[i].adjoint(weights[i], w) * slopes[i - 1]
        return self.layers[0].adjoint(weights[0][:, columns], w)


class LipschitzMLP(_LipschitzNet):
    r"""MLP in_features -> hidden_features... -> out_features with Lip <= c^L.

    Every linear layer is a :class:`SpectralLinear` with bound c and every activation is
    1-Lipschitz, so the map is Lipschitz with constant at most c^L, L the number of linear
    layers (:meth:`lipschitz_bound`), in the Euclidean norm.

    The Jacobian with respect to a slice of the input is, by the chain rule,
    W_L diag(phi'(h_{L-1})) W_{L-1} ... diag(phi'(h_1)) W_1[:, slice] (:meth:`jacobian`).

    Shapes: input (*batch, in_features); output (*batch, out_features).

    Args:
        in_features, out_features: input and output sizes.
        hidden_features: sizes of the hidden layers.
        coefficient: the bound c of each layer's spectral norm, 0 < c < 1.
        activation: LipSwish, ELU or Tanh (a class taking the number of units, with
            ``derivative`` and ``value_and_derivative``).
        iterations: None for the exact gradient of the spectral norms, else the power-iteration
            steps per call that give it in training mode (:class:`SpectralLinear`).

    Raises:
        ValueError: for a coefficient outside (0, 1).
    """

    def __init__(self, in_features: int, out_features: int, hidden_features: Sequence[int] = (128, 128),
                 coefficient: float = 0.97, activation: type[nn.Module] = LipSwish, iterations: int | None = None):
        super().__init__()
        sizes = [in_features, *hidden_features, out_features]
        self.linears = nn.ModuleList(SpectralLinear(a, b, coefficient, iterations) for a, b in zip(sizes, sizes[1:]))
        self.activations = nn.ModuleList(activation(size) for size in hidden_features)
        self.coefficient = float(coefficient)

    @property
    def layers(self) -> nn.ModuleList:
        return self.linears

    def jacobian(self, weights: Sequence[Tensor], x: Tensor, columns: slice) -> tuple[Tensor, Tensor]:
        """The output at ``x`` and its Jacobian with respect to ``x[..., columns]``.

        Shapes: x (*batch, in_features); returns (*batch, out_features) and
        (*batch, out_features, n) with n the number of selected columns.
        """
        jac: Tensor | None = None
        for i, (layer, w) in enumerate(zip(self.linears, weights)):
            pre = F.linear(x, w, layer.bias)
            jac = w[:, columns] if jac is None else w @ jac
            if i < len(self.activations):
                x = self.activations[i](pre)
                jac = self.activations[i].derivative(pre).unsqueeze(-1) * jac
            else:
                x = pre
        assert jac is not None
        return x, jac.expand(*x.shape, jac.shape[-1])


class LipschitzCNN(_LipschitzNet):
    r"""Convolutional network in_channels -> hidden_channels... -> out_channels with Lip <= c^L
    on images of a given size.

    Every layer is a :class:`SpectralConv2d` (periodic boundaries, operator norm at most c on
    (H, W) images, exact) and every activation is 1-Lipschitz, so the map is Lipschitz with
    constant at most c^L in the Euclidean norm of the (C, H, W) image, L the number of layers.
    The default kernels (3, 1, 3) are the residual block of i-ResNet and Residual Flows
    (3 x 3, 1 x 1, 3 x 3 convolutions). The Jacobian (:meth:`jacobian`) is assembled from one
    vector-Jacobian product per output element, for small images.

    Shapes: input (*batch, in_channels, H, W); output (*batch, out_channels, H, W).

    Reference: Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen. Invertible residual networks.
    ICML 2019, section 5 and appendix; Chen, Behrmann, Duvenaud & Jacobsen. Residual flows for
    invertible generative modeling. NeurIPS 2019, appendix E.

    Args:
        in_channels, out_channels: input and output channels.
        size: the image size (H, W).
        hidden_channels: channels of the hidden layers.
        kernel_sizes: the odd kernel size of each layer, one more than ``hidden_channels``.
        coefficient: the bound c of each layer's operator norm, 0 < c < 1.
        activation: LipSwish, ELU or Tanh (a class taking the shape (C, 1, 1) of its parameters).
        iterations: as :class:`SpectralConv2d`.

    Raises:
        ValueError: for a coefficient outside (0, 1), an even kernel size or as many kernel
            sizes as layers.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int],
                 hidden_channels: Sequence[int] = (64, 64), kernel_sizes: Sequence[int] = (3, 1, 3),
                 coefficient: float = 0.97, activation: type[nn.Module] = LipSwish, iterations: int | None = None):
        super().__init__()
        channels = [in_channels, *hidden_channels, out_channels]
        if len(kernel_sizes) != len(channels) - 1:
            raise ValueError(f"LipschitzCNN: {len(channels) - 1} layers need as many kernel sizes, got "
                             f"{list(kernel_sizes)}")
        self.convs = nn.ModuleList(SpectralConv2d(a, b, k, size, coefficient, iterations)
                                   for a, b, k in zip(channels, channels[1:], kernel_sizes))
        self.activations = nn.ModuleList(activation((c, 1, 1)) for c in hidden_channels)
        self.coefficient = float(coefficient)

    @property
    def layers(self) -> nn.ModuleList:
        return self.convs

    def jacobian(self, weights: Sequence[Tensor], x: Tensor, columns: slice) -> tuple[Tensor, Tensor]:
        """The output at ``x`` and its Jacobian with respect to the channels ``columns`` of ``x``,
        flattened: row i holds e_i^T J, from one vector-Jacobian product per output element.

        Shapes: x (*batch, C, H, W); returns (*batch, C_out, H, W) and (*batch, D_out, D_in) with
        D_out = C_out H W and D_in the number of selected elements.
        """
        y, slopes = self.forward_and_slopes(weights, x)
        event = y.shape[-3:]
        n = event.numel()
        basis = torch.eye(n, dtype=y.dtype, device=y.device).reshape(n, *[1] * (y.dim() - 3), *event)
        slopes = [s.unsqueeze(0) for s in slopes]
        # rows in chunks whose widest intermediate holds at most 2^24 numbers (64 MB in float32)
        widest = max(layer.weight.shape[0] for layer in self.convs) * y.numel() // event[0]
        chunk = max(1, 2**24 // max(1, widest))
        rows = [self.vjp(weights, slopes, basis[i : i + chunk].expand(-1, *y.shape), columns)
                for i in range(0, n, chunk)]
        return y, torch.cat(rows).flatten(-3).movedim(0, -2)
