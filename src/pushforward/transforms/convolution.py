r"""Invertible convolutions of images (*batch, C, H, W), each with an exact log-abs-det-Jacobian.

:class:`Conv1x1` and :class:`Conv1x1LU` mix the channels of every pixel with one C x C matrix
(Glow); :class:`EmergingConv` is a k x k convolution built from two masked autoregressive
convolutions, whose inverse is a sequential solve; :class:`PeriodicConv` is a circular k x k
convolution, diagonal in the Fourier domain, whose inverse is a solve per frequency. All are
linear, shape-preserving and ignore the context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Transform, on_images
from .linear import _solve, lu_lower, lu_rotation, lu_upper

__all__ = ["Conv1x1", "Conv1x1LU", "EmergingConv", "PeriodicConv"]


def _check_image(t: Transform, shape: Sequence[int], channels: int) -> None:
    """Raise ``ValueError`` unless ``shape`` ends in (channels, H, W)."""
    shape = tuple(shape)
    if len(shape) < 3 or shape[-3] != channels:
        raise ValueError(f"{type(t).__name__} acts on images (*batch, {channels}, H, W), got shape {shape}")


def _constant_ladj(value: Tensor, like: Tensor) -> Tensor:
    """A per-example ladj that does not depend on the input: ``value`` expanded to its batch shape."""
    return value.to(like.dtype).expand(like.shape[:-3])


def _conv2d(x: Tensor, kernel: Tensor, padding: int) -> Tensor:
    """``F.conv2d`` over any number of batch dimensions: (*batch, C, H, W) -> (*batch, C', H, W)."""
    return on_images(lambda u: F.conv2d(u, kernel, padding=padding), x)


def _channel_matmul(matrix: Tensor, z: Tensor) -> Tensor:
    """One C x C matrix applied to the channels of every pixel: x[..., :, h, w] = matrix @ z[..., :, h, w]."""
    return (matrix @ z.flatten(-2)).reshape(z.shape)


class Conv1x1(Transform):
    r"""Glow's invertible 1x1 convolution: one learned C x C matrix W mixes the channels of each pixel.

    x[:, h, w] = W z[:, h, w]; ladj = H W log|det W| (slogdet, O(C^3)); the inverse solves
    W z = x for all pixels at once with one LU factorisation of W. Initialised at a random
    rotation drawn from torch's RNG.

    Shapes: z, x (*batch, C, H, W); ladj (*batch,).

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018, section 3.2 (table 1).

    Args:
        channels: number of channels C.

    Raises:
        ValueError: for an input that is not (*batch, C, H, W).
    """

    event_dims = 3

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        _check_image(self, shape, len(self.weight))
        return tuple(shape)

    inverse_shape = forward_shape

    def _ladj(self, like: Tensor) -> Tensor:
        return _constant_ladj(like.shape[-2] * like.shape[-1] * torch.linalg.slogdet(self.weight)[1], like)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(self, z.shape, len(self.weight))
        return _channel_matmul(self.weight, z), self._ladj(z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(self, x.shape, len(self.weight))
        # one factorisation for every example: solve would factor W again for each batch element
        factors, pivots = torch.linalg.lu_factor(self.weight)
        return torch.linalg.lu_solve(factors, pivots, x.flatten(-2)).reshape(x.shape), -self._ladj(x)

    def extra_repr(self) -> str:
        return f"channels={len(self.weight)}"


class Conv1x1LU(Transform):
    r"""Glow's invertible 1x1 convolution with W in LU form, so that its log-determinant is O(C).

    x[:, h, w] = W z[:, h, w] with W = P L U, P a fixed permutation, L unit lower triangular,
    U = triu(W_U, 1) + diag(sign(s) exp(log|s|)) with the signs fixed; ladj = H W sum_c log|s_c|;
    the inverse applies W^-1 = U^-1 L^-1 P^-1, formed by two C x C triangular solves.
    Initialised at the LU decomposition of a random rotation (the parametrisation of
    :class:`~pushforward.transforms.LU`).

    Shapes: z, x (*batch, C, H, W); ladj (*batch,).

    Reference: Kingma & Dhariwal. Glow: generative flow with invertible 1x1 convolutions.
    NeurIPS 2018, section 3.2 (LU decomposition).

    Args:
        channels: number of channels C.

    Raises:
        ValueError: for an input that is not (*batch, C, H, W).
    """

    event_dims = 3

    def __init__(self, channels: int):
        super().__init__()
        permutation, lower, upper, log_diagonal, sign = lu_rotation(channels)
        self.register_buffer("permutation", permutation)  # (P y)_i = y_{permutation[i]}
        self.register_buffer("inverse_permutation", torch.argsort(permutation))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper)
        self.log_diagonal = nn.Parameter(log_diagonal)
        self.register_buffer("sign", sign)

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        _check_image(self, shape, len(self.sign))
        return tuple(shape)

    inverse_shape = forward_shape

    def matrix(self) -> Tensor:
        """W = P L U, shape (C, C)."""
        return lu_lower(self.lower)[self.permutation] @ lu_upper(self.upper, self.log_diagonal, self.sign)

    def _ladj(self, like: Tensor) -> Tensor:
        return _constant_ladj(like.shape[-2] * like.shape[-1] * self.log_diagonal.sum(), like)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(self, z.shape, len(self.sign))
        return _channel_matmul(self.matrix(), z), self._ladj(z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(self, x.shape, len(self.sign))
        # W^-1 = U^-1 L^-1 P^-1 as one C x C matrix (two small triangular solves), then one
        # product over the pixels: solving for every pixel, and permuting the image's channels,
        # cost more than the product at a training step's sizes
        eye = torch.eye(len(self.sign), dtype=x.dtype, device=x.device)[self.inverse_permutation]
        lower_solved = torch.linalg.solve_triangular(lu_lower(self.lower), eye, upper=False, unitriangular=True)
        inverse = torch.linalg.solve_triangular(lu_upper(self.upper, self.log_diagonal, self.sign), lower_solved,
                                                upper=True)
        return _channel_matmul(inverse, x), -self._ladj(x)

    def extra_repr(self) -> str:
        return f"channels={len(self.sign)}"


def _check_kernel_size(kernel_size: int) -> None:
    if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")


class EmergingConv(Transform):
    r"""Emerging k x k convolution: two masked autoregressive convolutions, x = K_2 * (K_1 * z).

    K_1 sees, for the output pixel (h, w), only the inputs at pixels before it in raster order
    (the rows above, the pixels to its left) and, at the pixel itself, the channels up to its
    own: its centre tap is lower triangular with diagonal exp(d). K_2 has the mirrored mask (the
    pixels after it, a unit upper-triangular centre). With zero padding, the Jacobian of each
    factor in raster order (pixel by pixel, channel by channel) is triangular, so
    ladj = H W sum_c d_c. Forward is two convolutions; the inverse solves K_2 pixel by pixel in
    reverse raster order, then K_1 in raster order, each step one C x C triangular solve for the
    whole batch; pixels that do not depend on each other (a wavefront) are solved together, so
    there are O(H + W) sequential steps, (k // 2 + 1)(H - 1) + W per factor. For density
    estimation, where ``inverse`` runs at every training step, use ``Inverse(EmergingConv(...))``.
    Initialised at the identity.

    Shapes: z, x (*batch, C, H, W); ladj (*batch,).

    Reference: Hoogeboom, van den Berg & Welling. Emerging convolutions for generative
    normalizing flows. ICML 2019, section 3.1. arXiv:1901.11137.

    Args:
        channels: number of channels C.
        kernel_size: odd size k of the square kernels.

    Raises:
        ValueError: for an even or non-positive ``kernel_size``; for an input that is not
            (*batch, C, H, W).
    """

    event_dims = 3

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        _check_kernel_size(kernel_size)
        k, c = kernel_size, kernel_size // 2
        self.weight_lower = nn.Parameter(torch.zeros(channels, channels, k, k))
        self.weight_upper = nn.Parameter(torch.zeros(channels, channels, k, k))
        self.log_diagonal = nn.Parameter(torch.zeros(channels))
        # mask[o, i, a, b] = 1 where output channel o at pixel (h, w) may see input channel i at
        # (h + a - c, w + b - c): an earlier pixel, or the same pixel and an earlier channel
        mask = torch.zeros(channels, channels, k, k)
        mask[:, :, :c, :] = 1
        mask[:, :, c, :c] = 1
        mask[:, :, c, c] = torch.tril(torch.ones(channels, channels), -1)
        self.register_buffer("mask", mask)

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        _check_image(self, shape, len(self.log_diagonal))
        return tuple(shape)

    inverse_shape = forward_shape

    def kernels(self) -> tuple[Tensor, Tensor]:
        """The masked kernels (K_1, K_2), each (C, C, k, k), of x = conv2d(conv2d(z, K_1), K_2)."""
        k1 = self.weight_lower * self.mask
        k2 = self.weight_upper * self.mask.flip(-2, -1).transpose(0, 1)
        c = self.mask.shape[-1] // 2
        eye = torch.eye(len(self.log_diagonal), dtype=k1.dtype, device=k1.device)
        k1 = k1 + F.pad(torch.diag(torch.exp(self.log_diagonal))[..., None, None], (c, c, c, c))
        k2 = k2 + F.pad(eye[..., None, None], (c, c, c, c))
        return k1, k2

    def _ladj(self, like: Tensor) -> Tensor:
        return _constant_ladj(like.shape[-2] * like.shape[-1] * self.log_diagonal.sum(), like)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(self, z.shape, len(self.log_diagonal))
        k1, k2 = self.kernels()
        c = k1.shape[-1] // 2
        return _conv2d(_conv2d(z, k1, c), k2, c), self._ladj(z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_image(self, x.shape, len(self.log_diagonal))
        k1, k2 = self.kernels()
        z = on_images(lambda u: _autoregressive_solve(k1, _autoregressive_solve(k2, u, upper=True), upper=False), x)
        return z, -self._ladj(x)

    def extra_repr(self) -> str:
        return f"channels={len(self.log_diagonal)}, kernel_size={self.mask.shape[-1]}"


def _autoregressive_solve(kernel: Tensor, x: Tensor, upper: bool) -> Tensor:
    """Solve conv2d(z, kernel, padding=k // 2) = x for z, with ``kernel`` masked so that the map is
    lower (``upper=False``: raster order) or upper (reverse raster order) triangular.

    Pixel (h, w) depends only on pixels in the rows before it within k // 2 columns and on those
    to its left in its own row, so all the pixels of a wavefront (k // 2 + 1) h + w = t are
    independent given the earlier wavefronts: (k // 2 + 1)(H - 1) + W sequential steps rather
    than H W. Each step subtracts what the solved pixels contribute, then solves the centre
    tap's C x C triangular system for every pixel of the front and every example at once.

    Shapes: kernel (C, C, k, k); x, z (N, C, H, W).
    """
    n, channels, height, width = x.shape
    k = kernel.shape[-1]
    c = k // 2
    centre = kernel[:, :, c, c]
    neighbours = kernel.clone()
    neighbours[:, :, c, c] = 0
    neighbours = neighbours.flatten(1).T  # (C k k, C)
    z = x.new_zeros(n, channels, height + 2 * c, width + 2 * c)  # zero padding: the map is then triangular
    offsets = torch.arange(k, device=x.device)
    fronts = [[(h, t - (c + 1) * h) for h in range(height) if 0 <= t - (c + 1) * h < width]
              for t in range((c + 1) * (height - 1) + width)]
    for front in reversed(fronts) if upper else fronts:
        if not front:  # images narrower than k // 2 + 1 leave gaps between the fronts
            continue
        hs, ws = torch.tensor(front, device=x.device).T
        # advanced indexing copies: the in-place writes of later steps leave what autograd saved alone
        patch = z[:, :, (hs[:, None] + offsets)[:, :, None], (ws[:, None] + offsets)[:, None, :]]  # (N, C, P, k, k)
        patch = patch.transpose(1, 2).reshape(n * len(hs), channels * k * k)
        rest = x[:, :, hs, ws].transpose(1, 2).reshape(n * len(hs), channels) - patch @ neighbours
        solved = _solve(centre, rest, upper=upper, unitriangular=upper)
        z[:, :, hs + c, ws + c] = solved.reshape(n, len(hs), channels).transpose(1, 2)
    return z[:, :, c : c + height, c : c + width]


class PeriodicConv(Transform):
    r"""Periodic (circular) k x k convolution, computed and inverted in the Fourier domain.

    x[o, h, w] = sum_{i, a, b} K[o, i, a, b] z[i, (h + a - c) mod H, (w + b - c) mod W], c = k // 2
    (``conv2d`` with circular padding). The 2-D DFT turns it into one C x C matrix per
    frequency, x^(u, v) = K^(u, v) z^(u, v), K^ the DFT of the kernel zero-padded to H x W, so
    ladj = sum_{u, v} log|det K^(u, v)| (real: conjugate frequencies pair up), O(H W C^3), and the
    inverse solves K^(u, v) z^ = x^ at every frequency. Real FFTs halve the work. Initialised near
    the identity (centre tap I plus N(0, 0.01^2) noise, the other taps zero).

    Shapes: z, x (*batch, C, H, W) with H, W >= k; ladj (*batch,).

    Reference: Hoogeboom, van den Berg & Welling. Emerging convolutions for generative
    normalizing flows. ICML 2019, section 3.2. arXiv:1901.11137.

    Args:
        channels: number of channels C.
        kernel_size: odd size k of the square kernel.

    Raises:
        ValueError: for an even or non-positive ``kernel_size``; for an input that is not
            (*batch, C, H, W) or whose image is smaller than the kernel.
    """

    event_dims = 3

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        _check_kernel_size(kernel_size)
        c = kernel_size // 2
        weight = torch.zeros(channels, channels, kernel_size, kernel_size)
        weight[:, :, c, c] = torch.eye(channels) + 0.01 * torch.randn(channels, channels)
        self.weight = nn.Parameter(weight)

    def _check(self, shape: Sequence[int]) -> None:
        _check_image(self, shape, len(self.weight))
        k = self.weight.shape[-1]
        if shape[-2] < k or shape[-1] < k:
            raise ValueError(f"PeriodicConv: the {k}x{k} kernel is larger than the {shape[-2]}x{shape[-1]} "
                             f"image of shape {tuple(shape)}")

    def forward_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        self._check(shape)
        return tuple(shape)

    inverse_shape = forward_shape

    def spectrum(self, height: int, width: int) -> Tensor:
        """K^(u, v) for the real FFT's frequencies, shape (H, W // 2 + 1, C, C)."""
        k = self.weight.shape[-1]
        c = k // 2
        # cross-correlation is convolution with the flipped kernel; the roll puts its centre at (0, 0)
        padded = F.pad(self.weight.flip(-2, -1), (0, width - k, 0, height - k))
        padded = torch.roll(padded, (c - k + 1, c - k + 1), dims=(-2, -1))
        return torch.fft.rfft2(padded).permute(2, 3, 0, 1)

    def _ladj(self, spectrum: Tensor, like: Tensor) -> Tensor:
        width = like.shape[-1]
        # the real FFT keeps one of each pair of conjugate columns: count those twice
        counts = torch.full((spectrum.shape[1],), 2.0, dtype=like.dtype, device=like.device)
        counts[0] = 1
        if width % 2 == 0:
            counts[-1] = 1
        return _constant_ladj((torch.linalg.slogdet(spectrum)[1] * counts).sum(), like)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z.shape)
        height, width = z.shape[-2:]
        spectrum = self.spectrum(height, width)
        if z.numel() == 0:  # MKL's FFT refuses an empty batch
            return z.clone(), self._ladj(spectrum, z)
        x = torch.einsum("uvoi,...iuv->...ouv", spectrum, torch.fft.rfft2(z))
        return torch.fft.irfft2(x, s=(height, width)), self._ladj(spectrum, z)

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x.shape)
        height, width = x.shape[-2:]
        spectrum = self.spectrum(height, width)
        if x.numel() == 0:
            return x.clone(), -self._ladj(spectrum, x)
        flat = torch.fft.rfft2(x.reshape(-1, *x.shape[-3:]))  # (N, C, H, W // 2 + 1)
        z = torch.linalg.solve(spectrum, flat.permute(2, 3, 1, 0)).permute(3, 2, 0, 1)
        z = torch.fft.irfft2(z, s=(height, width)).reshape(x.shape)
        return z, -self._ladj(spectrum, x)

    def extra_repr(self) -> str:
        return f"channels={len(self.weight)}, kernel_size={self.weight.shape[-1]}"
