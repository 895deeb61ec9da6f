"""Family checks of the invertible convolutions (the shared contract is in test_transforms.py)."""

import pytest
import torch
import torch.nn.functional as F

from pushforward.testing import perturb
from pushforward.transforms import Conv1x1, Conv1x1LU, EmergingConv, PeriodicConv

CLASSES = [Conv1x1, Conv1x1LU, EmergingConv, PeriodicConv]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def built(t):
    return perturb(t.double(), seed=1)


def dense(t, shape):
    """The matrix of the linear map t on flattened (C, H, W) images, by applying it to the basis."""
    n = torch.Size(shape).numel()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return t(basis)[0].reshape(n, n).T


def raster(matrix, shape):
    """``matrix`` on flattened (C, H, W) images re-indexed pixel by pixel, channel by channel: (H, W, C)."""
    order = torch.arange(matrix.shape[0]).reshape(shape).permute(1, 2, 0).flatten()
    return matrix[order][:, order]


@pytest.mark.parametrize("cls", [Conv1x1, Conv1x1LU])
def test_1x1_convolutions_are_conv2d_with_the_1x1_kernel_and_start_at_a_rotation(cls):
    torch.manual_seed(0)
    t = cls(3).double()
    weight = t.weight if cls is Conv1x1 else t.matrix()
    torch.testing.assert_close(weight @ weight.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    t = built(t)
    weight = t.weight if cls is Conv1x1 else t.matrix()
    z = randn(2, 4, 3, 5, 6)
    x, ladj = t(z)
    torch.testing.assert_close(x, F.conv2d(z.flatten(0, 1), weight[..., None, None]).reshape(z.shape))
    torch.testing.assert_close(ladj, (30 * torch.linalg.slogdet(weight)[1]).expand(2, 4))


def test_1x1_lu_matrix_is_permuted_lower_times_upper():
    t = built(Conv1x1LU(4))
    lower = torch.tril(t.lower, -1) + torch.eye(4, dtype=torch.float64)
    upper = torch.triu(t.upper, 1) + torch.diag(t.sign * t.log_diagonal.exp())
    p = torch.eye(4, dtype=torch.float64)[t.permutation]
    torch.testing.assert_close(t.matrix(), p @ lower @ upper)
    torch.testing.assert_close(t(randn(3, 4, 2, 5))[1], (10 * t.log_diagonal.sum()).expand(3))


def test_emerging_forward_is_two_masked_convolutions_with_triangular_jacobians():
    t = built(EmergingConv(3))
    shape = (3, 4, 5)
    z = randn(2, *shape)
    k1, k2 = t.kernels()
    x, ladj = t(z)
    torch.testing.assert_close(x, F.conv2d(F.conv2d(z, k1, padding=1), k2, padding=1))
    # each factor is triangular in raster order (pixels, then channels within a pixel)
    first = raster(dense(lambda u: (F.conv2d(u, k1, padding=1),), shape), shape)
    second = raster(dense(lambda u: (F.conv2d(u, k2, padding=1),), shape), shape)
    torch.testing.assert_close(first, torch.tril(first))
    torch.testing.assert_close(torch.diagonal(first), t.log_diagonal.exp().repeat(20))
    torch.testing.assert_close(second, torch.triu(second))
    torch.testing.assert_close(torch.diagonal(second), torch.ones(60, dtype=torch.float64))
    assert (first - torch.diag(torch.diagonal(first))).abs().max() > 0.1  # the masks leave taps to learn
    torch.testing.assert_close(raster(dense(t, shape), shape), second @ first)
    torch.testing.assert_close(ladj, (20 * t.log_diagonal.sum()).expand(2))


@pytest.mark.parametrize("shape, kernel_size", [((3, 5, 6), 3), ((3, 5, 6), 5), ((2, 1, 7), 3), ((2, 6, 2), 5)])
def test_emerging_inverse_round_trips_on_a_non_square_image(shape, kernel_size):
    t = built(EmergingConv(shape[0], kernel_size))
    z = randn(2, *shape)
    x, ladj = t(z)
    z2, ladj2 = t.inverse(x)
    torch.testing.assert_close(z2, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(t(z2)[0], x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj2, -ladj)


@pytest.mark.parametrize("shape, kernel_size", [((2, 4, 5), 3), ((3, 4, 4), 3), ((2, 5, 6), 5), ((2, 3, 3), 3)])
def test_periodic_conv_is_the_dense_circular_matrix(shape, kernel_size):
    t = built(PeriodicConv(shape[0], kernel_size))
    channels, height, width = shape
    k, c = kernel_size, kernel_size // 2
    matrix = torch.zeros(channels, height, width, channels, height, width, dtype=torch.float64)
    for h in range(height):
        for w in range(width):
            for a in range(k):
                for b in range(k):
                    matrix[:, h, w, :, (h + a - c) % height, (w + b - c) % width] += t.weight[:, :, a, b]
    matrix = matrix.reshape(channels * height * width, -1)
    z = randn(3, *shape)
    x, ladj = t(z)
    torch.testing.assert_close(x.flatten(1), z.flatten(1) @ matrix.T)
    torch.testing.assert_close(ladj, torch.linalg.slogdet(matrix)[1].expand(3))
    torch.testing.assert_close(x, F.conv2d(F.pad(z, (c, c, c, c), mode="circular"), t.weight))
    torch.testing.assert_close(t.inverse(x)[0], z)


def test_periodic_conv_starts_near_the_identity():
    torch.manual_seed(0)
    t = PeriodicConv(3).double()
    z = randn(2, 3, 4, 4)
    x, ladj = t(z)
    torch.testing.assert_close(x, z, atol=0.1, rtol=0)
    assert ladj.abs().max() < 1.0


@pytest.mark.parametrize("cls", CLASSES)
def test_wrong_channels_or_rank_is_a_one_line_error(cls):
    t = cls(2).double()
    for bad in (randn(3, 3, 4, 4), randn(4, 4), randn(2)):
        for method in (t, t.inverse):
            with pytest.raises(ValueError, match=r"acts on images \(\*batch, 2, H, W\), got shape") as info:
                method(bad)
            assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"got shape \(3, 4, 4\)"):
        t.forward_shape((3, 4, 4))
    assert t.inverse_shape((2, 4, 5)) == (2, 4, 5)


def test_kernel_size_errors():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer, got 2"):
        EmergingConv(2, 2)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer, got 0"):
        PeriodicConv(2, 0)
    t = PeriodicConv(2, 5).double()
    with pytest.raises(ValueError, match=r"the 5x5 kernel is larger than the 4x6 image of shape \(3, 2, 4, 6\)"):
        t(randn(3, 2, 4, 6))
    with pytest.raises(ValueError, match="larger than the 6x4 image"):
        t.inverse_shape((2, 6, 4))
