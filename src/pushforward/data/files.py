r"""Data sets from the user's own files: CSV or other delimited text, NPY and NPZ.

Every file holds a table of shape (N, D), one example per row. Without ready-made splits the
rows are permuted with a seed and split 80/10/10.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from . import base
from ..checks import check_memory
from .base import DataError, DataSet, check_array, fraction_sizes, to_tensor

__all__ = ["TEXT_SUFFIXES", "read_array", "from_file"]

TEXT_SUFFIXES = (".csv", ".txt", ".tsv", ".dat")
_SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}


def read_array(path: str | Path) -> np.ndarray:
    r"""Read one table of numbers (N, D) from a text, NPY or single-array NPZ file.

    Text files (.csv, .txt, .tsv, .dat) are comma-separated when their first data line holds a
    comma, else whitespace-separated; a first row that is not all numbers is a header and is
    skipped; blank lines and lines starting with "#" are ignored.

    Shapes: returns (N, D) float64 (float32 stays float32), N >= 1, D >= 1.

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: for an unsupported suffix, an empty file, a non-numeric value (the message
            gives the line and the value), rows of different lengths, an array that is not 2-D,
            NaN or infinite values (their number and the first row and column), an NPZ file
            with several arrays, an NPY file whose header announces more data than the file
            holds or than this machine's memory, or a file numpy cannot read.
    """
    arrays = _read_arrays(Path(path))
    if list(arrays) != ["data"]:
        raise DataError(f"{path}: expected one array, found {sorted(arrays)}")
    return arrays["data"]


def from_file(path: str | Path, test_path: str | Path | None = None, seed: int = 0) -> DataSet:
    r"""A :class:`DataSet` from a file of shape (N, D), split into train, validation and test.

    * One table (CSV/text, NPY, or an NPZ with one array): the rows are permuted with numpy
      ``RandomState(seed).permutation``; the first int(0.8 N) are train, the next int(0.1 N)
      valid, the rest test. At least 10 rows are needed.
    * With ``test_path``: that file is the test set; the permuted rows of ``path`` are split
      into train and the last int(0.1 N) rows, valid (again at least 10 rows).
    * An NPZ with arrays named train, valid (or validation, val) and test: used as they are.
      With train and test only, train is split as with ``test_path``.

    The data are used as they are (space "data", no ``to_data``): standardise them in the model.

    Shapes: train (N_train, D), valid (N_valid, D), test (N_test, D), float32.

    Raises:
        FileNotFoundError: if a file does not exist.
        DataError: for any problem of :func:`read_array`; for too few rows to split; for splits
            with different numbers of features; for an NPZ with arrays of other names, or whose
            test split is also given as ``test_path``.
    """
    path = Path(path)
    arrays = _read_arrays(path)
    if test_path is not None:
        if "data" not in arrays:
            raise DataError(f"{path}: holds named splits {sorted(arrays)}; do not also pass test_path")
        arrays = {"train": arrays["data"], "test": read_array(test_path)}
    widths = {name: a.shape[1] for name, a in arrays.items()}
    if len(set(widths.values())) > 1:
        raise DataError(f"{path}: splits have different numbers of features {widths}")
    return DataSet(path.stem, *map(to_tensor, _splits(arrays, seed, str(path))))


def _splits(arrays: dict[str, np.ndarray], seed: int, where: str) -> tuple[np.ndarray, ...]:
    names = sorted(arrays)
    if names == ["test", "train", "valid"]:
        return arrays["train"], arrays["valid"], arrays["test"]
    rng = np.random.RandomState(seed)
    if names == ["data"]:
        data = arrays["data"][rng.permutation(len(arrays["data"]))]
        return base.split(data, *fraction_sizes(len(data)), where)
    if names == ["test", "train"]:
        train = arrays["train"][rng.permutation(len(arrays["train"]))]
        n_valid = int(0.1 * len(train))
        return base.split(np.concatenate([train, arrays["test"]]), len(train) - n_valid, n_valid, where)
    raise DataError(f"{where}: arrays {names}; expected one array, or train, valid and test (or train and test)")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: '{path}'")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return {"data": _read_text(path)}
    try:
        if suffix == ".npy":
            _check_npy_size(path)
            return {"data": check_array(np.load(path, allow_pickle=False), str(path))}
        if suffix == ".npz":
            return _read_npz(path)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: cannot read as {suffix[1:].upper()} ({error})") from None
    raise DataError(f"{path}: unsupported file type '{suffix}' (expected {', '.join(TEXT_SUFFIXES)}, .npy or .npz)")


def _check_npy_size(path: Path) -> None:
    """Check the array size that an .npy header announces before anything is allocated.

    Raises:
        ValueError: if the array cannot fit in this machine's memory (the message gives the
            estimate), or if the file is shorter than the header says (a DataError).
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            return  # np.load reads (or refuses) the other versions itself
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        return  # pickled objects, which np.load refuses
    size = math.prod(shape) * dtype.itemsize
    check_memory(f"{path}, an array of shape {shape},", size)
    if size > path.stat().st_size - offset:
        raise DataError(f"{path}: the header announces shape {shape} ({size} bytes) but the file holds "
                        f"{path.stat().st_size - offset} bytes of data: it is truncated or corrupted")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        if len(archive.files) == 0:
            raise DataError(f"{path}: empty NPZ archive")
        if len(archive.files) == 1:
            return {"data": check_array(archive[archive.files[0]], str(path))}
        unknown = [k for k in archive.files if k.lower() not in _SPLIT_NAMES]
        if unknown:
            raise DataError(f"{path}: unknown array names {unknown} (expected train, valid or validation, test)")
        return {_SPLIT_NAMES[k.lower()]: check_array(archive[k], f"{path}[{k}]") for k in archive.files}


def _read_text(path: Path) -> np.ndarray:
    lines = [
        (number, line)
        # utf-8-sig: a byte-order mark is not part of the first row.
        for number, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise DataError(f"{path}: empty file")
    delimiter = "," if "," in lines[0][1] else None
    if not _is_numeric_row(lines[0][1], delimiter):
        lines = lines[1:]  # a header row
        if not lines:
            raise DataError(f"{path}: a header row but no data")
    try:
        array = np.loadtxt([line for _, line in lines], delimiter=delimiter, ndmin=2, comments=None)
    except ValueError as error:
        _locate_text_error(path, lines, delimiter)
        raise DataError(f"{path}: cannot parse as numbers ({error})") from None
    return check_array(array, str(path))


def _is_numeric_row(line: str, delimiter: str | None) -> bool:
    try:
        [float(field) for field in line.split(delimiter)]
    except ValueError:
        return False
    return True


def _locate_text_error(path: Path, lines: list[tuple[int, str]], delimiter: str | None) -> None:
    width = len(lines[0][1].split(delimiter))
    for number, line in lines:
        fields = line.split(delimiter)
        for field in fields:
            try:
                float(field)
            except ValueError:
                raise DataError(f"{path}, line {number}: non-numeric value {field.strip()!r}") from None
        if len(fields) != width:
            raise DataError(f"{path}, line {number}: {len(fields)} values, expected {width} as on the first data row")
