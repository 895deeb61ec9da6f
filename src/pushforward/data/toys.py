r"""Two-dimensional toy densities, as used to picture flows since FFJORD.

Each sampler draws from a numpy ``RandomState`` (so a seed gives the same points on every
platform) and returns float32 points of shape (n, 2), roughly within [-4, 4]^2.

Reference: Grathwohl et al. FFJORD: free-form continuous dynamics for scalable reversible
generative models. ICLR 2019 (the toy densities of its figures); Papamakarios et al. Normalizing
flows for probabilistic modeling and inference. JMLR 2021.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import Tensor

from .base import DataError, DataSet, to_tensor

__all__ = ["TOYS", "toy", "toy_dataset"]


def _polar(radius: np.ndarray, angle: np.ndarray) -> np.ndarray:
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def _moons(rng: np.random.RandomState, n: int) -> np.ndarray:
    t = np.pi * rng.rand(n)
    upper = rng.rand(n) < 0.5
    # The lower moon is the upper one turned by pi and moved to interlock with it.
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    points = np.stack([x, y], axis=1) + 0.1 * rng.randn(n, 2)
    return 2 * points + np.array([-1.0, -0.2])


def _circles(rng: np.random.RandomState, n: int) -> np.ndarray:
    radius = np.where(rng.rand(n) < 0.5, 1.0, 0.5)
    return 3 * (_polar(radius, 2 * np.pi * rng.rand(n)) + 0.08 * rng.randn(n, 2))


def _eight_gaussians(rng: np.random.RandomState, n: int) -> np.ndarray:
    centres = _polar(np.full(n, 4.0), np.pi / 4 * rng.randint(8, size=n))
    return (centres + 0.5 * rng.randn(n, 2)) / np.sqrt(2)


def _checkerboard(rng: np.random.RandomState, n: int) -> np.ndarray:
    x = 4 * rng.rand(n) - 2
    # y in [0, 1) or [-2, -1), moved up by 1 on every other column: a 4 x 4 board of 8 squares.
    y = rng.rand(n) - 2 * rng.randint(2, size=n) + np.floor(x) % 2
    return 2 * np.stack([x, y], axis=1)


def _pinwheel(rng: np.random.RandomState, n: int, arms: int = 5) -> np.ndarray:
    radial = 1 + 0.3 * rng.randn(n)
    tangential = 0.1 * rng.randn(n)
    angle = 2 * np.pi * rng.randint(arms, size=n) / arms + 0.25 * np.exp(radial)
    cos, sin = np.cos(angle), np.sin(angle)
    return 2 * np.stack([cos * radial - sin * tangential, sin * radial + cos * tangential], axis=1)


def _two_spirals(rng: np.random.RandomState, n: int) -> np.ndarray:
    t = np.sqrt(rng.rand(n)) * 3 * np.pi
    sign = np.where(rng.rand(n) < 0.5, 1.0, -1.0)[:, None]
    arm = np.stack([-t * np.cos(t), t * np.sin(t)], axis=1) + 0.5 * rng.rand(n, 2)
    return sign * arm / 3 + 0.1 * rng.randn(n, 2)


def _rings(rng: np.random.RandomState, n: int) -> np.ndarray:
    radius = (rng.randint(4, size=n) + 1) / 4
    return 3 * _polar(radius, 2 * np.pi * rng.rand(n)) + 0.08 * rng.randn(n, 2)


TOYS: dict[str, Callable[[np.random.RandomState, int], np.ndarray]] = {
    "moons": _moons,
    "circles": _circles,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "rings": _rings,
}


def toy(name: str, n: int, seed: int = 0) -> Tensor:
    r"""Draw ``n`` points from a 2-D toy density.

    Densities: "moons" (two interleaved half circles, noise 0.1), "circles" (two concentric
    circles of radii 3 and 1.5), "8gaussians" (a ring of 8 Gaussians, std 0.5/sqrt 2),
    "checkerboard" (uniform on 8 squares of a 4 x 4 board on [-4, 4]^2), "pinwheel" (5 curved
    arms), "2spirals" (two interleaved spirals), "rings" (4 concentric noisy rings).

    Shapes: returns (n, 2), float32, unitless.

    Reference: the toy densities of Grathwohl et al. FFJORD. ICLR 2019 (re-implemented; the
    mixture weights are drawn per point, so any n works).

    Args:
        name: one of :data:`TOYS`.
        n: number of points, at least 1.
        seed: seed of the numpy ``RandomState`` that draws them (0 <= seed < 2**32).

    Raises:
        DataError: for an unknown name or n < 1.
    """
    if name not in TOYS:
        raise DataError(f"unknown toy density '{name}' (known: {', '.join(TOYS)})")
    if n < 1:
        raise DataError(f"toy '{name}': n must be at least 1, got {n}")
    return to_tensor(TOYS[name](np.random.RandomState(seed), n))


def toy_dataset(name: str, n: int | None = None, seed: int = 0) -> DataSet:
    """A toy density as a :class:`DataSet`: 10,000 train, 2,000 valid and 2,000 test points.

    The splits are independent draws with seeds 3 seed, 3 seed + 1 and 3 seed + 2, so different
    seeds never share a stream and ``toy_dataset(name, n, seed).train == toy(name, n, 3 * seed)``.

    Shapes: train (n, 2), valid (2000, 2), test (2000, 2); space "data".

    Args:
        name: one of :data:`TOYS`.
        n: size of the training split (default 10,000).
        seed: a non-negative integer.

    Raises:
        DataError: for an unknown name, n < 1 or a negative seed.
    """
    if seed < 0:
        raise DataError(f"toy '{name}': seed must be non-negative, got {seed}")
    sizes = (10_000 if n is None else n, 2_000, 2_000)
    train, valid, test = (toy(name, size, 3 * seed + k) for k, size in enumerate(sizes))
    return DataSet(name, train, valid, test)
