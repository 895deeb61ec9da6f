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

from .base import DataError, DataSet
from .files import from_file, read_array
from .images import digits, mnist, mnist_labels, read_idx
from .tabular import bsds300, gas, hepmass, miniboone, power
from .toys import TOYS, toy, toy_dataset

__all__ = [
    "DataSet", "DataError", "load", "NAMES", "TOYS", "toy", "toy_dataset", "digits", "mnist",
    "mnist_labels", "read_idx", "from_file", "read_array", "power", "gas", "hepmass", "miniboone",
    "bsds300",
]

_FROM_DIR: dict[str, Callable[[str | Path | None], DataSet]] = {
    "mnist": mnist, "power": power, "gas": gas, "hepmass": hepmass, "miniboone": miniboone, "bsds300": bsds300,
}
NAMES: tuple[str, ...] = (*TOYS, "digits", *_FROM_DIR)


def load(
    name_or_path: str,
    data_dir: str | Path | None = None,
    *,
    seed: int = 0,
    test_path: str | Path | None = None,
    n: int | None = None,
) -> DataSet:
    r"""Load a data set by name, or a file by path.

    Names (case-insensitive): the toys of :data:`TOYS` (:func:`toy_dataset`), "digits"
    (:func:`digits`), and, from files in ``data_dir``, "mnist" (:func:`mnist`) and the MAF
    benchmarks "power", "gas", "hepmass", "miniboone", "bsds300" (:mod:`.tabular`). Anything
    else must be an existing .csv/.txt/.tsv/.dat, .npy or .npz file (:func:`from_file`).

    Shapes: see the loaders; every split is (N, D) float32 in the reference space.

    Args:
        name_or_path: a name of :data:`NAMES` or a file path.
        data_dir: folder of the data files, for mnist and the MAF sets.
        seed: seed of the toys' draws, of the digits' and files' permutation and noise. MNIST
            and the MAF sets ignore it: their randomness is fixed by the paper (RandomState(42)).
        test_path: for a file only, a second file that is the test set.
        n: size of the training split: the toys draw n points; the other sets keep the first n
            training rows.

    Raises:
        DataError: for an unknown name that is no existing file (the message lists the
            names), test_path with a named set, n < 1 or more than the training rows, and every
            problem of the loaders (empty, non-numeric, non-2-D or non-finite data ...).
        FileNotFoundError: for a missing data_dir or data file (the message names the path).
        ImportError: for gas, hepmass or bsds300 without pandas / h5py.
    """
    key = name_or_path.lower()
    if test_path is not None and key in NAMES:
        raise DataError(f"test_path applies to files only, not to the data set '{key}'")
    if key in TOYS:
        return toy_dataset(key, 10_000 if n is None else n, seed)
    if key == "digits":
        data = digits(seed)
    elif key in _FROM_DIR:
        data = _FROM_DIR[key](data_dir)
    elif Path(name_or_path).expanduser().is_file():
        data = from_file(Path(name_or_path).expanduser(), test_path, seed)
    else:
        raise DataError(f"unknown data set or missing file: {name_or_path!r} (known: {', '.join(NAMES)})")
    return data if n is None else _first_rows(data, n)


def _first_rows(data: DataSet, n: int) -> DataSet:
    if not 1 <= n <= len(data.train):
        raise DataError(f"{data.name}: n must be between 1 and {len(data.train)} training rows, got {n}")
    return dataclasses.replace(data, train=data.train[:n])
