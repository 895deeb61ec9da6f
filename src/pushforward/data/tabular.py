r"""The tabular density-estimation benchmarks of MAF: POWER, GAS, HEPMASS, MINIBOONE, BSDS300.

Each loader reads the files that MAF's own loaders read (the arrays published with the paper,
Zenodo record 1161203) and repeats its preprocessing and splits exactly, so test
log-likelihoods compare with the published tables (MAF, NAF, NSF, FFJORD, BNAF): those are
average nats per example in the *normalised* space the loaders return, with no standardisation
Jacobian added back.

Every split rule is :func:`~pushforward.data.base.tail_sizes` unless said otherwise: test is
the last int(0.1 N) rows, validation the last int(0.1 M) of the M rows before them.

Reference: Papamakarios, Pavlakou and Murray. Masked autoregressive flow for density
estimation. NeurIPS 2017, appendix D; github.com/gpapamak/maf, datasets/*.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np

from . import base
from .base import DataError, DataSet, check_array, find_file, standardise, tail_sizes, to_tensor

__all__ = ["power", "gas", "hepmass", "miniboone", "bsds300"]

DataDir = str | Path | None


def _require(module: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{what} needs {module}: pip install pushforward[tabular]") from error


def _normalised(name: str, data: np.ndarray, n_train: int, n_valid: int, where: str) -> DataSet:
    parts = base.split(data, n_train, n_valid, where)
    return DataSet(name, *map(to_tensor, parts), space="normalised")


def _tail_split_normalised(name: str, data: np.ndarray, where: str) -> DataSet:
    # POWER and MINIBOONE: split, then standardise all splits with train + valid statistics.
    n_train, n_valid = tail_sizes(len(data))
    return _normalised(name, standardise(data, n_train + n_valid, 0, where), n_train, n_valid, where)


def power(data_dir: DataDir) -> DataSet:
    r"""POWER: UCI "Individual household electric power consumption", as preprocessed by MAF.

    From MAF's ``power/data.npy`` (N x 8: global active power, global reactive power, voltage,
    global intensity, sub-meterings 1-3, time): the rows are shuffled with numpy
    RandomState(42), columns 3 (intensity) and 1 (reactive power) are deleted, and the same
    RandomState adds uniform noise, drawn in MAF's order: U[0, 0.01) on voltage first, then
    U[0, 0.001) on active power, then U[0, 1) on each sub-metering; none on time. Split by the
    tail rule, then standardised with the mean and std (ddof 0) of train + valid.

    Shapes: 6 features; 1,659,917 / 184,435 / 204,928 rows for the full 2,049,280-row file.

    Raises:
        FileNotFoundError: no data.npy in data_dir or data_dir/power.
        DataError: if the array is not (N, 8), not finite, or too small to split.
    """
    path = find_file(data_dir, ["data.npy"], ["power", "POWER"], "power")
    data = check_array(np.load(path, allow_pickle=False), str(path))
    if data.shape[1] != 8:
        raise DataError(f"{path}: POWER has 8 columns, found {data.shape[1]}")
    rng = np.random.RandomState(42)
    rng.shuffle(data)
    data = np.delete(data, [1, 3], axis=1)
    n = len(data)
    voltage = 0.01 * rng.rand(n, 1)  # MAF draws the voltage noise before the active-power noise
    active = 0.001 * rng.rand(n, 1)
    noise = np.hstack([active, voltage, rng.rand(n, 3), np.zeros((n, 1))])
    return _tail_split_normalised("power", data + noise, str(path))


def miniboone(data_dir: DataDir) -> DataSet:
    r"""MINIBOONE: UCI "MiniBooNE particle identification", as preprocessed by MAF.

    Reads MAF's final ``miniboone/data.npy`` (outliers and 7 features with a repeated smallest
    value already removed), splits it without shuffling by the tail rule and standardises with
    the mean and std (ddof 0) of train + valid.

    Shapes: 43 features; 29,556 / 3,284 / 3,648 rows for the 36,488-row file.

    Raises:
        FileNotFoundError: no data.npy in data_dir or data_dir/miniboone.
        DataError: if the array is not 2-D, not finite, too small, or has a constant column.
    """
    path = find_file(data_dir, ["data.npy"], ["miniboone", "MINIBOONE"], "miniboone")
    data = check_array(np.load(path, allow_pickle=False), str(path))
    return _tail_split_normalised("miniboone", data, str(path))


def gas(data_dir: DataDir, threshold: float = 0.98) -> DataSet:
    r"""GAS: UCI "Gas sensor array under dynamic gas mixtures" (ethylene and CO), as by MAF.

    From MAF's pandas pickle ``gas/ethylene_CO.pickle``: the columns Meth, Eth and Time are
    dropped; then, while a column has a Pearson correlation above ``threshold`` (signed, not
    absolute) with another one, the first such column is dropped. The rest is standardised with
    the mean and std (ddof 1) of the *whole* set, then split without shuffling by the tail rule.

    Shapes: 8 features; 852,174 / 94,685 / 105,206 rows for the full file.

    Warning: unpickling runs code from the file; load only a pickle you trust.

    Raises:
        ImportError: without pandas (pip install pushforward[tabular]).
        FileNotFoundError: no ethylene_CO.pickle in data_dir or data_dir/gas.
        DataError: if the pickle is not a DataFrame with the Meth, Eth and Time columns, holds
            non-numeric or non-finite values, or is too small.
    """
    pd = _require("pandas", "gas")
    path = find_file(data_dir, ["ethylene_CO.pickle"], ["gas", "GAS"], "gas")
    try:
        frame = pd.read_pickle(path)
    except Exception as error:  # unpickling can raise anything; report it as one line
        raise DataError(f"{path}: cannot read the pickle ({type(error).__name__}: {error})") from error
    missing = {"Meth", "Eth", "Time"} - set(getattr(frame, "columns", ()))
    if not isinstance(frame, pd.DataFrame) or missing:
        raise DataError(f"{path}: expected a DataFrame with columns Meth, Eth, Time (missing {sorted(missing)})")
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    check_array(frame.to_numpy(), str(path))
    while (counts := (frame.corr() > threshold).to_numpy().sum(axis=1)).max() > 1:
        frame = frame.drop(columns=frame.columns[np.argmax(counts > 1)])
    data = standardise(frame.to_numpy(dtype=np.float64), len(frame), 1, str(path))
    return _normalised("gas", data, *tail_sizes(len(data)), str(path))


def hepmass(data_dir: DataDir, max_repeats: int = 5) -> DataSet:
    r"""HEPMASS: UCI "HEPMASS" (signal mass 1000), as preprocessed by MAF.

    From ``1000_train.csv`` and ``1000_test.csv`` (comma-separated, one header row, the class
    label first): only the signal rows (label 1) are kept and the label dropped; the test file's
    last column, one too many, is dropped as well. Both are standardised with the training
    file's mean and std (ddof 1). A feature is dropped when its smallest training value occurs
    more than ``max_repeats`` times. Validation is the last int(0.1 N) rows of the training
    file; test is the test file.

    Shapes: 21 features; 315,123 / 35,013 / 174,987 rows for the full files.

    Raises:
        ImportError: without pandas (pip install pushforward[tabular]).
        FileNotFoundError: a file missing from data_dir or data_dir/hepmass.
        DataError: for non-numeric or non-finite values, no signal rows, files whose feature
            counts differ, a constant feature, or too few rows.
    """
    pd = _require("pandas", "hepmass")
    paths = [find_file(data_dir, [f"1000_{part}.csv"], ["hepmass", "HEPMASS"], "hepmass") for part in ("train", "test")]
    train, test = (_signal_rows(pd.read_csv(p, index_col=False), str(p)) for p in paths)
    train, test = check_array(train, str(paths[0])), check_array(test[:, :-1], str(paths[1]))
    where = str(paths[0].parent)
    if train.shape[1] != test.shape[1]:
        raise DataError(f"{where}: train has {train.shape[1]} features, test {test.shape[1]} after its last column")
    data = standardise(np.concatenate([train, test]), len(train), 1, where)
    smallest = data[: len(train)].min(axis=0)
    repeats = (data[: len(train)] == smallest).sum(axis=0)
    data = data[:, repeats <= max_repeats]
    n_valid = int(0.1 * len(train))
    return _normalised("hepmass", data, len(train) - n_valid, n_valid, where)


def _signal_rows(frame, where: str) -> np.ndarray:
    values = frame.to_numpy()
    if values.dtype.kind not in "biuf" or values.shape[1] < 2:
        raise DataError(f"{where}: expected numeric columns, the class label first")
    signal = values[values[:, 0] == 1, 1:]
    if len(signal) == 0:
        raise DataError(f"{where}: no signal rows (label 1)")
    return signal


def bsds300(data_dir: DataDir) -> DataSet:
    r"""BSDS300: 8 x 8 grey patches of the Berkeley segmentation data set, as published by MAF.

    Reads the datasets ``train``, ``validation`` and ``test`` of ``BSDS300.hdf5`` as they are:
    each patch had its mean removed, so its 64 pixels sum to zero and the bottom-right pixel
    (minus the sum of the other 63) is left out.

    Shapes: 63 features; 1,000,000 / 50,000 / 250,000 rows.

    Raises:
        ImportError: without h5py (pip install pushforward[tabular]).
        FileNotFoundError: no BSDS300.hdf5 in data_dir or data_dir/BSDS300.
        DataError: if a dataset is missing, not 2-D, non-numeric or not finite.
    """
    h5py = _require("h5py", "bsds300")
    path = find_file(data_dir, ["BSDS300.hdf5"], ["BSDS300", "bsds300"], "bsds300")
    with h5py.File(path, "r") as f:
        missing = [k for k in ("train", "validation", "test") if k not in f]
        if missing:
            raise DataError(f"{path}: no dataset(s) {missing}")
        parts = [check_array(f[k][()], f"{path}[{k}]") for k in ("train", "validation", "test")]
    return DataSet("bsds300", *map(to_tensor, parts), space="normalised")
