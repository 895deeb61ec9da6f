r"""The :class:`DataSet` container and the helpers every loader shares.

A loader returns its train, validation and test splits in the *reference space*, the space a
model is fitted in (logits for MNIST, standardised features for the MAF tabular sets), with the
transform back to the original data space when they differ. The helpers here validate arrays,
split them by a stated rule and standardise them, so each loader states only what is its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core import Transform

__all__ = [
    "DataSet", "DataError", "split", "fraction_sizes", "tail_sizes", "standardise", "check_array", "find_file",
    "to_tensor",
]


class DataError(ValueError):
    """A data set or data file that cannot be used: empty, non-numeric, not 2-D, NaN/inf, too small,
    not an image.

    The message is one line that names the file (or data set) and the problem, so a command-line
    tool can print it as it is.
    """


@dataclass(repr=False)
class DataSet:
    r"""Train, validation and test splits of one data set, in the space a model is fitted in.

    Shapes: ``train`` (N_train, *event), ``valid`` (N_valid, *event), ``test`` (N_test, *event),
    all float32 tensors in the *reference space* named by ``space``, one example per index of
    the first dimension. The event shape is (D,) for vectors (toys, tabular sets, files, and
    images as flattened rows) and (C, H, W) for images loaded as images.

    Attributes:
        name: the data set's name ("moons", "mnist", "power", or a file's stem).
        train, valid, test: the three splits.
        space: the reference space: "data" (no preprocessing), "logit" (MNIST, MAF
            preprocessing) or "normalised" (MAF tabular sets, standardised features).
        to_data: transform from the reference space to the original data space (forward
            direction, with its log-abs-det-Jacobian), or None when the two are the same. A
            density p_ref in the reference space gives the data-space log-density
            log p_ref(r) - ladj(r), with (x, ladj) = to_data(r).
        image_shape: (C, H, W) of one example when the data are images, whether stored as
            flattened rows (event (C*H*W,)) or as images (event (C, H, W)); else None.
        levels: number of quantisation levels of the data space when the data are dequantised
            integers (256 for MNIST, 17 for digits): the data space is then [0, levels)^D and
            bits/dim are measured there. None for continuous data.

    Raises:
        DataError: if a split has fewer than 2 dimensions, if the splits' event shapes differ,
            or if ``image_shape`` does not match them (another number of elements, or another
            shape when the examples are not flat).
    """

    name: str
    train: Tensor
    valid: Tensor
    test: Tensor
    space: str = "data"
    to_data: Transform | None = None
    image_shape: tuple[int, ...] | None = None
    levels: int | None = None

    def __post_init__(self) -> None:
        shapes = [tuple(t.shape) for t in (self.train, self.valid, self.test)]
        if any(len(s) < 2 for s in shapes) or len({s[1:] for s in shapes}) != 1:
            raise DataError(
                f"{self.name}: splits must be (N, *event) with the same event shape (same features), "
                f"got shapes {shapes}"
            )
        if self.image_shape is not None:
            image_shape, event = tuple(self.image_shape), self.event_shape
            if math.prod(image_shape) != self.features or (len(event) > 1 and event != image_shape):
                raise DataError(f"{self.name}: image_shape {image_shape} does not match examples of shape {event}")

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one example: (D,) for vectors, (C, H, W) for images."""
        return tuple(self.train.shape[1:])

    @property
    def features(self) -> int:
        """Number of elements D of one example (the product of the event shape)."""
        return math.prod(self.event_shape)

    def __repr__(self) -> str:
        sizes = f"train={len(self.train)}, valid={len(self.valid)}, test={len(self.test)}"
        shape = "" if len(self.event_shape) == 1 else f"event_shape={self.event_shape}, "
        return f"DataSet(name={self.name!r}, features={self.features}, {shape}{sizes}, space={self.space!r})"


def check_array(array: np.ndarray, where: str) -> np.ndarray:
    """Check that ``array`` is a non-empty, numeric, finite 2-D array (rows, features).

    Returns the array, as float64 unless it is already floating-point (a float32 array stays
    float32, so large files are not doubled in memory). ``where`` names the file or split in
    the messages.

    Raises:
        DataError: if the array is not 2-D, has no rows or no columns, is not numeric (real
            numbers or booleans), or holds NaN/inf values (the message gives their number and
            the row and column, counted from 0, of the first one).
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: expected numbers, got an array of dtype {array.dtype}")
    if array.ndim != 2:
        raise DataError(f"{where}: expected a 2-D array (rows, features), got shape {array.shape}")
    if array.size == 0:
        raise DataError(f"{where}: empty (shape {array.shape})")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{where}: {int(bad.sum())} NaN or infinite value(s), the first at row {row}, column {col} (from 0)"
        )
    return array


def split(data: np.ndarray, n_train: int, n_valid: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split examples in order: the first ``n_train`` are train, the next ``n_valid`` valid, the rest test.

    Every loader splits with this one function; the rule that gives the sizes is the loader's
    (:func:`fraction_sizes`, :func:`tail_sizes`, or the files' own splits stacked in order).

    Shapes: data (N, *event) -> (n_train, *event), (n_valid, *event), (N - n_train - n_valid, *event).

    Raises:
        DataError: if a split would be empty (too few rows); the message names ``where`` and N.
    """
    n_test = len(data) - n_train - n_valid
    if min(n_train, n_valid, n_test) < 1:
        raise DataError(
            f"{where}: {len(data)} rows are too few to split into train/valid/test "
            f"({n_train}/{n_valid}/{n_test} rows)"
        )
    return data[:n_train], data[n_train : n_train + n_valid], data[n_train + n_valid :]


def fraction_sizes(n: int, train: float = 0.8, valid: float = 0.1) -> tuple[int, int]:
    """Sizes (n_train, n_valid) = (int(train * n), int(valid * n)); the test split takes the rest.

    With the default 80/10/10 rule, 1,797 rows give 1437/179/181 and fewer than 10 rows give an
    empty split.
    """
    return int(train * n), int(valid * n)


def tail_sizes(n: int) -> tuple[int, int]:
    """Sizes (n_train, n_valid) of the MAF rule: test = the last int(0.1 n) rows, valid = the
    last int(0.1 m) of the m rows left, train = the rest.

    Reference: Papamakarios et al. Masked autoregressive flow for density estimation.
    NeurIPS 2017; loaders in github.com/gpapamak/maf, datasets/*.py.
    """
    n_test = int(0.1 * n)
    n_valid = int(0.1 * (n - n_test))
    return n - n_test - n_valid, n_valid


def standardise(data: np.ndarray, reference_rows: int, ddof: int, where: str) -> np.ndarray:
    """Standardise every column with the mean and standard deviation of the first rows.

    (data - mean) / std, both per column over ``data[:reference_rows]`` with ``ddof`` (0: numpy's
    population std, as MAF for POWER and MINIBOONE; 1: pandas' sample std, as for GAS, HEPMASS).

    Shapes: data (N, D) -> (N, D).

    Raises:
        DataError: if a column is constant on the reference rows (its std is 0).
    """
    reference = data[:reference_rows]
    std = reference.std(axis=0, ddof=ddof)
    if not (std > 0).all():
        cols = np.flatnonzero(~(std > 0)).tolist()
        raise DataError(f"{where}: column(s) {cols} (from 0) are constant, cannot standardise")
    return (data - reference.mean(axis=0)) / std


def find_file(data_dir: str | Path | None, names: Sequence[str], subdirs: Sequence[str], what: str) -> Path:
    """Find the first of ``names`` in ``data_dir`` or in one of its ``subdirs``.

    ``data_dir`` may be the folder holding the file, a parent of it (e.g. holding
    ``power/data.npy``), or the file itself.

    Raises:
        FileNotFoundError: if ``data_dir`` is None, does not exist, or holds none of the names;
            the message names the folder and the files looked for.
    """
    if data_dir is None:
        raise FileNotFoundError(f"{what} needs data_dir, the folder holding {names[0]}")
    root = Path(data_dir).expanduser()
    if root.is_file() and root.name in names:
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: data_dir '{root}' is not a folder")
    for folder in (root, *(root / s for s in subdirs)):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    looked = ", ".join(str(Path(s) / names[0]) for s in ("", *subdirs))
    raise FileNotFoundError(f"{what}: no {names[0]} in '{root}' (looked for {looked})")


def to_tensor(array: np.ndarray) -> Tensor:
    """A contiguous float32 torch tensor of a numpy array (sharing its memory when it already is one)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
