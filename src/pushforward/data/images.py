r"""Image data sets as flattened, dequantised vectors: scikit-learn's digits and MNIST (IDX files).

Images are rows of C*H*W values, with ``DataSet.image_shape`` giving (C, H, W). Integer pixels
are dequantised once, with seeded uniform noise, so the data space is [0, levels)^D and
bits/dim are measured there.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from . import base
from .base import DataError, DataSet, find_file, fraction_sizes, to_tensor

__all__ = ["digits", "read_idx", "mnist", "mnist_labels"]

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_MAGIC = {"images": 2051, "labels": 2049}
_MNIST_STEMS = {"train": "train", "test": "t10k"}
MNIST_ALPHA = 1e-6


def digits(seed: int = 0) -> DataSet:
    r"""scikit-learn's 8 x 8 digits, permuted, split 80/10/10 and uniformly dequantised.

    The 1,797 images of ``sklearn.datasets.load_digits`` (integer grey levels 0..16) are
    permuted with ``RandomState(seed).permutation``; the first int(0.8 N) = 1,437 permuted rows
    are train, the next int(0.1 N) = 179 valid, the remaining 181 test. The same RandomState
    then draws one (N, 64) array u ~ U[0, 1) in permuted-row order and x = v + u, so the data
    space is [0, 17)^64.

    Shapes: train (1437, 64), valid (179, 64), test (181, 64), float32; image_shape (1, 8, 8);
    levels 17; space "data".

    Reference: Alpaydin and Kaynak, UCI "Optical recognition of handwritten digits" (the test
    part, as shipped by scikit-learn).
    """
    from sklearn.datasets import load_digits

    values = load_digits().data
    rng = np.random.RandomState(seed)
    values = values[rng.permutation(len(values))]
    x = values + rng.rand(*values.shape)
    parts = base.split(x, *fraction_sizes(len(x)), "digits")
    return DataSet("digits", *map(to_tensor, parts), image_shape=(1, 8, 8), levels=17)


def read_idx(path: str | Path) -> np.ndarray:
    r"""Read an IDX file (LeCun's MNIST format), gzip-compressed or raw, as a numpy array.

    Header: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D
    float32, 0x0E float64), the number of dimensions, then one big-endian int32 per dimension;
    then the values, big-endian, row-major. Gzip is recognised by its content, not the name.

    Shapes: (dim_0, ..., dim_k) as in the header, e.g. (60000, 28, 28) uint8 for
    train-images-idx3-ubyte, (60000,) for train-labels-idx1-ubyte.

    Reference: http://yann.lecun.com/exdb/mnist/ (the file format at the bottom of the page).

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: for a bad magic number or type, a truncated header, a payload whose size
            does not match the header (a corrupt or truncated file), or a broken gzip stream.
    """
    return _read_idx(Path(path))[1]


def _read_idx(path: Path) -> tuple[int, np.ndarray]:
    raw = path.read_bytes()
    try:
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: corrupt gzip stream ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'missing'})")
    ndim, dtype = raw[3], np.dtype(_IDX_TYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: corrupt IDX file, header says {shape} ({expected} bytes) but {len(raw) - header} bytes follow"
        )
    array = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return int.from_bytes(raw[:4], "big"), array.astype(dtype.newbyteorder("="))


def _read_mnist_file(data_dir: str | Path | None, part: str, kind: str) -> np.ndarray:
    stem, idx = f"{_MNIST_STEMS[part]}-{kind}", "idx3" if kind == "images" else "idx1"
    names = [f"{stem}{sep}{idx}-ubyte{gz}" for sep in "-." for gz in (".gz", "")]
    path = find_file(data_dir, names, ["mnist", "MNIST/raw"], "mnist")
    magic, array = _read_idx(path)
    if magic != _MNIST_MAGIC[kind]:
        raise DataError(f"{path}: magic number {magic}, expected {_MNIST_MAGIC[kind]} for {kind}")
    return array


def _mnist_arrays(data_dir: str | Path | None, kind: str) -> tuple[np.ndarray, np.ndarray]:
    train = _read_mnist_file(data_dir, "train", kind)
    test = _read_mnist_file(data_dir, "test", kind)
    if kind == "images" and train.shape[1:] != test.shape[1:]:
        raise DataError(f"mnist: train images are {train.shape[1:]}, test images {test.shape[1:]}")
    return train, test


def _mnist_valid_size(n_train_file: int) -> int:
    # MAF's validation images are the last 10,000 of LeCun's 60,000 (one sixth).
    return min(10_000, n_train_file // 6)


def mnist(data_dir: str | Path | None, alpha: float = MNIST_ALPHA) -> DataSet:
    r"""MNIST (or any data set in its 4 IDX files, e.g. Fashion-MNIST) with MAF's preprocessing.

    Split: train = the first 50,000 of the 60,000 training images, valid = the last 10,000 of
    them (in general the last min(10,000, N // 6)), test = the 10,000 t10k images.
    Dequantisation: x = (pixel + u) / 256 with u ~ U[0, 1) drawn from numpy RandomState(42), one
    rand(N_split, 784) call per split in the order train, valid, test; then the logit
    r = logit(alpha + (1 - 2 alpha) x), alpha = 1e-6, computed in float64, stored in float32.
    ``to_data`` = :func:`pushforward.transforms.elementwise.logit_preprocessing`, which maps r
    back to the pixel space x * 256 in [0, 256).

    Shapes: train (50000, 784), valid (10000, 784), test (10000, 784), float32 logits;
    image_shape (1, 28, 28); levels 256; space "logit".

    Reference: LeCun et al. Gradient-based learning applied to document recognition. Proc. IEEE
    1998 (the data); Papamakarios et al. Masked autoregressive flow for density estimation.
    NeurIPS 2017, appendix E.2, and github.com/gpapamak/maf datasets/mnist.py (preprocessing).

    Args:
        data_dir: folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
            t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each .gz or raw; "-" or "." before
            "idx"), or a parent of it holding mnist/ or MNIST/raw/.
        alpha: the logit margin.

    Raises:
        FileNotFoundError: if data_dir is None or a file is missing (the message names it).
        DataError: for a corrupt file (magic number 2051 for images, 2049 for labels; sizes)
            or train and test images of different sizes.
    """
    from ..transforms.elementwise import logit_preprocessing

    train, test = _mnist_arrays(data_dir, "images")
    image_shape = (1, *train.shape[1:])
    pixels = np.concatenate([train, test]).reshape(len(train) + len(test), -1)
    n_valid = _mnist_valid_size(len(train))
    # One pass over the stacked rows draws the noise in MAF's order: train, valid, test.
    r = _dequantised_logits(pixels, np.random.RandomState(42), alpha)
    parts = base.split(r, len(train) - n_valid, n_valid, "mnist")
    to_data = logit_preprocessing(alpha=alpha, levels=256)
    return DataSet("mnist", *map(to_tensor, parts), "logit", to_data, image_shape, 256)


def _dequantised_logits(pixels: np.ndarray, rng: np.random.RandomState, alpha: float) -> np.ndarray:
    out = np.empty(pixels.shape, np.float32)
    # Chunks of rows draw the same stream as one rand(N, D) call, with less memory.
    for start in range(0, len(pixels), 5_000):
        chunk = pixels[start : start + 5_000]
        p = alpha + (1 - 2 * alpha) * ((chunk + rng.rand(*chunk.shape)) / 256.0)
        out[start : start + len(chunk)] = np.log(p) - np.log1p(-p)
    return out


def mnist_labels(data_dir: str | Path | None, split: str) -> np.ndarray:
    """The digit labels (0..9, uint8) of one split of :func:`mnist`, in the same row order.

    Shapes: (50000,) for "train", (10000,) for "valid" and "test".

    Raises:
        FileNotFoundError: if a label file is missing.
        DataError: for a corrupt label file, or a split other than "train", "valid", "test".
    """
    train, test = _mnist_arrays(data_dir, "labels")
    n_train = len(train) - _mnist_valid_size(len(train))
    parts = {"train": train[:n_train], "valid": train[n_train:], "test": test}
    if split not in parts:
        raise DataError(f"unknown split '{split}' (expected train, valid or test)")
    return parts[split]
