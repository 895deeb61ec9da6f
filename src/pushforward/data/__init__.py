r"""Data sets for density estimation: 2-D toys, images, the MAF tabular benchmarks and files.

:func:`load` is the single entry point (the command-line tool uses it); each loader returns a
:class:`DataSet` with train, validation and test splits in the space a model is fitted in.

    >>> from pushforward.data import load
    >>> load("moons", n=500)
    DataSet(name='moons', features=2, train=500, valid=2000, test=2000, space='data')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import DataError, DataSet
from .files import from_file, read_array
from .images import (IMAGE_SUFFIXES, BinaryImages, binarized_mnist, dequantise, digits, digits_labels, folder_pixels,
                     image_folder, mnist, mnist_images, mnist_labels, read_idx, read_image)
from .tabular import bsds300, gas, hepmass, miniboone, power
from .toys import TOYS, toy, toy_dataset

__all__ = [
    "DataSet", "DataError", "load", "is_image_folder", "NAMES", "IMAGE_NAMES", "TOYS", "toy", "toy_dataset", "digits",
    "mnist", "mnist_images", "mnist_labels", "binarized_mnist", "BinaryImages", "digits_labels", "labels", "read_idx",
    "dequantise", "image_folder", "folder_pixels", "read_image",
    "IMAGE_SUFFIXES", "from_file", "read_array", "power", "gas", "hepmass", "miniboone", "bsds300",
]

_MNISTS = ("mnist", "fashion-mnist")
_FROM_DIR: dict[str, Callable[[str | Path | None], DataSet]] = {
    "power": power, "gas": gas, "hepmass": hepmass, "miniboone": miniboone, "bsds300": bsds300,
}
NAMES: tuple[str, ...] = (*TOYS, "digits", *_MNISTS, *_FROM_DIR)
IMAGE_NAMES: tuple[str, ...] = ("digits", *_MNISTS)


def is_image_folder(name_or_path: str) -> bool:
    """Whether ``load`` reads ``name_or_path`` as a folder of images: a folder that is not a
    built-in name (a built-in name wins over a folder of that name in the working directory)."""
    return name_or_path.lower() not in NAMES and Path(name_or_path).expanduser().is_dir()


def load(
    name_or_path: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    test_path: str | Path | None = None,
    n: int | None = None,
    images: bool = False,
    image_size: int | tuple[int, int] | None = None,
) -> DataSet:
    r"""Load a data set by name, a file or a folder of images by path.

    Names (case-insensitive): the toys of :data:`TOYS` (:func:`toy_dataset`), "digits"
    (:func:`digits`), and, from files in ``data_dir``, "mnist" and "fashion-mnist" (the same
    four IDX files; :func:`mnist`, or :func:`mnist_images` with ``images``) and the MAF
    benchmarks "power", "gas", "hepmass", "miniboone", "bsds300" (:mod:`.tabular`). Anything
    else must be an existing .csv/.txt/.tsv/.dat, .npy or .npz file (:func:`from_file`) or a
    folder of images (:func:`image_folder`).

    Shapes: see the loaders; every split is (N, D) float32 in the reference space, or, with
    ``images``, (N, C, H, W).

    Args:
        name_or_path: a name of :data:`NAMES`, a file path or a folder path.
        data_dir: folder of the data files, for mnist and the MAF sets.
        seed: seed of the toys' draws, of the digits', files' and image folders' permutation
            and noise, and of the noise of MNIST as images. MNIST with MAF's preprocessing and
            the MAF sets ignore it: their randomness is fixed by the paper (RandomState(42)).
        test_path: for a file only, a second file that is the test set.
        n: size of the training split: the toys draw n points; the other sets keep the first n
            training examples.
        images: return images (N, C, H, W) for image flows, for the names of
            :data:`IMAGE_NAMES` and folders of images: digits as (1, 8, 8) in [0, 17), MNIST as
            (1, 28, 28) in the pixel space [0, 256) with its own split (:func:`mnist_images`).
            Without it, a folder of images gives the same values as flattened rows.
        image_size: for a folder of images only, the size (an int, or (H, W)) every image is
            resized to.

    Raises:
        DataError: for an unknown name that is no existing file or folder (the message lists
            the names), test_path with a named set or a folder, image_size with anything but a
            folder, images with a set that has no images, n < 1 or more than the training
            examples, and every problem of the loaders (empty, non-numeric, non-2-D or
            non-finite data, unreadable or mixed-size images ...).
        FileNotFoundError: for a missing data_dir or data file (the message names the path).
        ImportError: for gas, hepmass or bsds300 without pandas / h5py.
    """
    key = name_or_path.lower()
    path = Path(name_or_path).expanduser()
    folder = is_image_folder(name_or_path)
    if test_path is not None and (key in NAMES or folder):
        raise DataError(f"test_path applies to files only, not to {name_or_path!r}")
    if image_size is not None and not folder:
        raise DataError(f"image_size applies to folders of images only, not to {name_or_path!r}")
    if images and not (key in IMAGE_NAMES or folder):
        raise DataError(
            f"{name_or_path!r} holds no images: image flows need images ({', '.join(IMAGE_NAMES)} or a folder of "
            f"images)"
        )
    if key in TOYS:
        return toy_dataset(key, 10_000 if n is None else n, seed)
    if key == "digits":
        data = digits(seed, images=images)
    elif key in _MNISTS:
        data = mnist_images(data_dir, seed, name=key) if images else mnist(data_dir, name=key)
    elif key in _FROM_DIR:
        data = _FROM_DIR[key](data_dir)
    elif folder:
        data = image_folder(path, image_size, seed)
        if not images:
            data = dataclasses.replace(data, **{s: getattr(data, s).flatten(1) for s in ("train", "valid", "test")})
    elif path.is_file():
        data = from_file(path, test_path, seed)
    else:
        raise DataError(f"unknown data set or missing file: {name_or_path!r} (known: {', '.join(NAMES)})")
    return data if n is None else _first_rows(data, n)


def _first_rows(data: DataSet, n: int) -> DataSet:
    if not 1 <= n <= len(data.train):
        raise DataError(f"{data.name}: n must be between 1 and {len(data.train)} training examples, got {n}")
    return dataclasses.replace(data, train=data.train[:n])


def labels(name: str, split: str, data_dir: str | Path | None = None, *, seed: int = 0) -> np.ndarray:
    """The class labels (0..9) of one split of a labelled image data set loaded as images by
    :func:`load` (``images=True``) with the same ``data_dir`` and ``seed``, in the same order:
    "digits" (:func:`digits_labels`), "mnist" and "fashion-mnist" (:func:`mnist_labels`).

    Shapes: (N_split,).

    Raises:
        DataError: for a data set without labels (the message lists those with), or an unknown
            split.
        FileNotFoundError: for a missing label file.
    """
    key = name.lower()
    if key == "digits":
        return digits_labels(split, seed)
    if key in _MNISTS:
        return mnist_labels(data_dir, split, images=True, name=key)
    raise DataError(f"{name!r} has no class labels (labelled image data: {', '.join(IMAGE_NAMES)})")
