r"""Image data sets: scikit-learn's digits, MNIST and Fashion-MNIST (IDX files), a folder of images.

Images come either as flattened rows (N, C*H*W), for vector flows, or as images (N, C, H, W),
for image flows; ``DataSet.image_shape`` gives (C, H, W) in both cases. Integer pixels are
dequantised once, with seeded uniform noise, so the data space is [0, levels)^D and bits/dim
are measured there.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import base
from .base import DataError, DataSet, find_file, fraction_sizes, to_tensor

__all__ = [
    "digits", "digits_labels", "read_idx", "mnist", "mnist_images", "mnist_labels", "dequantise", "image_folder",
    "folder_pixels", "read_image", "IMAGE_SUFFIXES", "BinaryImages", "binarized_mnist",
]

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_MAGIC = {"images": 2051, "labels": 2049}
_MNIST_STEMS = {"train": "train", "test": "t10k"}
# Sub-folders of data_dir searched for the IDX files (the second is torchvision's layout).
_MNIST_SUBDIRS = {"mnist": ("mnist", "MNIST/raw"), "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MNIST_ALPHA = 1e-6


def digits(seed: int = 0, *, images: bool = False) -> DataSet:
    r"""scikit-learn's 8 x 8 digits, permuted, split 80/10/10 and uniformly dequantised.

    The 1,797 images of ``sklearn.datasets.load_digits`` (integer grey levels 0..16) are
    permuted with ``RandomState(seed).permutation``; the first int(0.8 N) = 1,437 permuted rows
    are train, the next int(0.1 N) = 179 valid, the remaining 181 test. The same RandomState
    then draws one (N, 64) array u ~ U[0, 1) in permuted-row order and x = v + u, so the data
    space is [0, 17)^64.

    Shapes: train (1437, 64), valid (179, 64), test (181, 64), float32; with ``images``
    the same values as images, (1437, 1, 8, 8), (179, 1, 8, 8), (181, 1, 8, 8). image_shape
    (1, 8, 8); levels 17; space "data".

    Reference: Alpaydin and Kaynak, UCI "Optical recognition of handwritten digits" (the test
    part, as shipped by scikit-learn).
    """
    values, _, rng = _permuted_digits(seed)
    x = values + rng.rand(*values.shape)
    if images:
        x = x.reshape(len(x), 1, 8, 8)
    parts = base.split(x, *fraction_sizes(len(x)), "digits")
    return DataSet("digits", *map(to_tensor, parts), image_shape=(1, 8, 8), levels=17)


def _permuted_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.random.RandomState]:
    """scikit-learn's digits (N, 64) and labels (N,) in :func:`digits`' permuted order, with the
    RandomState that drew the permutation (it draws the noise next)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(bunch.data))
    return bunch.data[order], bunch.target[order], rng


def digits_labels(split: str, seed: int = 0) -> np.ndarray:
    """The labels (0..9) of one split of :func:`digits` with the same ``seed``, in the same order.

    Shapes: (1437,) for "train", (179,) for "valid", (181,) for "test".

    Raises:
        DataError: for a split other than "train", "valid", "test".
    """
    labels = _permuted_digits(seed)[1]
    return _split_part(base.split(labels, *fraction_sizes(len(labels)), "digits"), split)


def _split_part(parts: Sequence[np.ndarray], split: str) -> np.ndarray:
    """The part of (train, valid, test) named ``split``.

    Raises:
        DataError: for a split other than "train", "valid", "test".
    """
    names = ("train", "valid", "test")
    if split not in names:
        raise DataError(f"unknown split '{split}' (expected train, valid or test)")
    return parts[names.index(split)]


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


def _read_mnist_file(data_dir: str | Path | None, part: str, kind: str, name: str) -> np.ndarray:
    stem, idx = f"{_MNIST_STEMS[part]}-{kind}", "idx3" if kind == "images" else "idx1"
    names = [f"{stem}{sep}{idx}-ubyte{gz}" for sep in "-." for gz in (".gz", "")]
    path = find_file(data_dir, names, _MNIST_SUBDIRS.get(name, (name,)), name)
    magic, array = _read_idx(path)
    if magic != _MNIST_MAGIC[kind]:
        raise DataError(f"{path}: magic number {magic}, expected {_MNIST_MAGIC[kind]} for {kind}")
    return array


def _mnist_arrays(data_dir: str | Path | None, kind: str, name: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    train = _read_mnist_file(data_dir, "train", kind, name)
    test = _read_mnist_file(data_dir, "test", kind, name)
    if kind == "images" and train.shape[1:] != test.shape[1:]:
        raise DataError(f"{name}: train images are {train.shape[1:]}, test images {test.shape[1:]}")
    return train, test


def _mnist_valid_size(n_train_file: int, images: bool = False) -> int:
    # MAF's validation images are the last 10,000 of LeCun's 60,000 (one sixth); for image
    # flows, which train on (nearly) all of them, the last 5,000 (one twelfth).
    return min(5_000, n_train_file // 12) if images else min(10_000, n_train_file // 6)


def mnist(data_dir: str | Path | None, alpha: float = MNIST_ALPHA, *, name: str = "mnist") -> DataSet:
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
            "idx"), or a parent of it holding mnist/ or MNIST/raw/ (for the name
            "fashion-mnist": fashion-mnist/ or FashionMNIST/raw/).
        alpha: the logit margin.
        name: the data set's name, "mnist" or "fashion-mnist" (Fashion-MNIST, Xiao et al. 2017,
            ships in the same four IDX files).

    Raises:
        FileNotFoundError: if data_dir is None or a file is missing (the message names it).
        DataError: for a corrupt file (magic number 2051 for images, 2049 for labels; sizes)
            or train and test images of different sizes.
    """
    from ..transforms.elementwise import logit_preprocessing

    train, test = _mnist_arrays(data_dir, "images", name)
    image_shape = (1, *train.shape[1:])
    pixels = np.concatenate([train, test]).reshape(len(train) + len(test), -1)
    n_valid = _mnist_valid_size(len(train))
    # One pass over the stacked rows draws the noise in MAF's order: train, valid, test.
    r = _dequantised_logits(pixels, np.random.RandomState(42), alpha)
    parts = base.split(r, len(train) - n_valid, n_valid, name)
    to_data = logit_preprocessing(alpha=alpha, levels=256)
    return DataSet(name, *map(to_tensor, parts), "logit", to_data, image_shape, 256)


def mnist_images(data_dir: str | Path | None, seed: int = 0, *, name: str = "mnist") -> DataSet:
    r"""MNIST (or Fashion-MNIST) as 1 x 28 x 28 images in the 8-bit pixel space, for image flows.

    Not MAF's preprocessing (:func:`mnist`): no logit, no rescaling. Split: train = the first
    55,000 of the 60,000 training images, valid = the last 5,000 of them (in general the last
    min(5,000, N // 12)), kept for early stopping, test = the 10,000 t10k images. The image-flow
    papers (RealNVP, Glow, FFJORD, Residual Flows) train on all 60,000 and report the t10k
    bits/dim; training on 55,000 gives a slightly pessimistic comparison.
    Dequantisation: x = pixel + u with u ~ U[0, 1) from numpy RandomState(seed), drawn as one
    rand(70000, 1, 28, 28) stream (in chunks of rows) in the order of the files: the 60,000
    training images, then the 10,000 t10k images. x is rounded down to float32, so floor(x) is
    the pixel and the data space is [0, 256)^784, where bits/dim are measured.

    Shapes: train (55000, 1, 28, 28), valid (5000, 1, 28, 28), test (10000, 1, 28, 28),
    float32; image_shape (1, 28, 28); levels 256; space "data"; to_data None.

    Reference: LeCun et al. Gradient-based learning applied to document recognition. Proc. IEEE
    1998 (the data); Dinh et al. Density estimation using Real NVP. ICLR 2017, section 4.1
    (uniform dequantisation, bits/dim in [0, 256)^D).

    Args:
        data_dir: the folder of the four IDX files, as for :func:`mnist`.
        seed: seed of the dequantisation noise.
        name: "mnist" or "fashion-mnist", as for :func:`mnist`.

    Raises:
        FileNotFoundError: if data_dir is None or a file is missing (the message names it).
        DataError: for a corrupt file or train and test images of different sizes.
    """
    train, test = _mnist_arrays(data_dir, "images", name)
    pixels = np.concatenate([train, test])[:, None]
    x = dequantise(pixels, np.random.RandomState(seed))
    n_valid = _mnist_valid_size(len(train), images=True)
    parts = base.split(x, len(train) - n_valid, n_valid, name)
    return DataSet(name, *map(to_tensor, parts), image_shape=pixels.shape[1:], levels=256)


def dequantise(pixels: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    r"""Uniform dequantisation of integer pixels: x = v + u, u ~ U[0, 1), stored in float32.

    The noise is ``rng.rand`` drawn in chunks of 5,000 examples, which gives the same stream as
    one rand(*pixels.shape) call. v + u is computed in float64 and rounded down to float32
    (rounding to nearest would give v + 1 when u is within about 1e-5 of 1 for v near 255), so
    floor(x) = v exactly.

    Shapes: pixels (N, *event), non-negative integers -> x (N, *event) float32.
    """
    out = np.empty(pixels.shape, np.float32)
    for start in range(0, len(pixels), 5_000):
        v = pixels[start : start + 5_000].astype(np.float64)
        x = (v + rng.rand(*v.shape)).astype(np.float32)
        over = x >= v + 1
        x[over] = np.nextafter((v[over] + 1).astype(np.float32), np.float32(0))
        out[start : start + len(v)] = x
    return out


def _dequantised_logits(pixels: np.ndarray, rng: np.random.RandomState, alpha: float) -> np.ndarray:
    out = np.empty(pixels.shape, np.float32)
    # Chunks of rows draw the same stream as one rand(N, D) call, with less memory.
    for start in range(0, len(pixels), 5_000):
        chunk = pixels[start : start + 5_000]
        p = alpha + (1 - 2 * alpha) * ((chunk + rng.rand(*chunk.shape)) / 256.0)
        out[start : start + len(chunk)] = np.log(p) - np.log1p(-p)
    return out


def mnist_labels(
    data_dir: str | Path | None, split: str, *, images: bool = False, name: str = "mnist"
) -> np.ndarray:
    """The labels (0..9, uint8) of one split of :func:`mnist` (or, with ``images``, of
    :func:`mnist_images`), in the same order.

    Shapes: (50000,) for "train", (10000,) for "valid" and "test"; with ``images`` (55000,),
    (5000,) and (10000,).

    Raises:
        FileNotFoundError: if a label file is missing.
        DataError: for a corrupt label file, or a split other than "train", "valid", "test".
    """
    train, test = _mnist_arrays(data_dir, "labels", name)
    n_train = len(train) - _mnist_valid_size(len(train), images)
    return _split_part((train[:n_train], train[n_train:], test), split)


@dataclasses.dataclass
class BinaryImages:
    r"""Binary image data: ``train`` holds grey levels in [0, 1], binarized anew at every
    mini-batch (dynamic binarization, x ~ Bernoulli(grey)); ``valid`` and ``test`` are
    binarized once, with a fixed seed, so every model sees the same test bits.

    Shapes: train (N_train, D) float32 in [0, 1]; valid, test (N, D) float32 in {0, 1};
    image_shape (C, H, W).
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    image_shape: tuple[int, int, int]

    @property
    def features(self) -> int:
        """The number of pixels per image, D."""
        return self.train.shape[1]


def binarized_mnist(data_dir: str | Path, seed: int = 0, *, name: str = "mnist") -> BinaryImages:
    r"""Dynamically binarized MNIST (or another data set in MNIST's four IDX files) from ``data_dir``.

    Split as :func:`mnist`: train = the first 50,000 training images, valid = the last 10,000
    (in general the last min(10,000, N // 6)), test = the 10,000 t10k images. Grey levels are
    pixel / 255; valid and test are binarized once by torch.bernoulli with a generator seeded
    by ``seed`` (valid first, then test).

    Reference: Salakhutdinov & Murray. On the quantitative analysis of deep belief networks.
    ICML 2008 (binarized MNIST); dynamic binarization as in Burda et al. 2016.

    Raises:
        FileNotFoundError, DataError: as :func:`mnist`.
    """
    train, test = _mnist_arrays(data_dir, "images", name)
    n_valid = _mnist_valid_size(len(train))
    grey = torch.from_numpy(np.concatenate([train, test]).reshape(len(train) + len(test), -1).astype(np.float32) / 255)
    g = torch.Generator().manual_seed(seed)
    n_train = len(train) - n_valid
    valid = torch.bernoulli(grey[n_train : len(train)], generator=g)
    test_bits = torch.bernoulli(grey[len(train) :], generator=g)
    return BinaryImages(grey[:n_train].contiguous(), valid, test_bits, (1, *train.shape[1:]))


def image_folder(
    path: str | Path, image_size: int | Sequence[int] | None = None, seed: int = 0
) -> DataSet:
    r"""The images of a folder, as (C, H, W) images in the 8-bit pixel space, split 80/10/10.

    Files: every file in the folder and its sub-folders (recursively, so a folder of class
    sub-folders works too), sorted by path relative to the folder. Hidden files and folders
    (names starting with ".", e.g. .DS_Store) are skipped; any other file must end in .png,
    .jpg, .jpeg, .bmp, .gif or .webp (any case), else it is refused rather than skipped. Each
    file's first frame is read with Pillow and turned upright by its EXIF orientation.
    Channels: if every image is grey (Pillow mode "1", "L" or "LA"), C = 1; else all are
    converted to RGB, C = 3 (a grey image copied to the three channels, alpha dropped, a
    palette resolved). Size: all images must have the same size unless ``image_size`` is
    given; then each is resized to it with Pillow's Lanczos filter (the aspect ratio is not
    kept, nothing is cropped).
    Split and noise: the images are permuted with numpy ``RandomState(seed).permutation``; the
    first int(0.8 N) are train, the next int(0.1 N) valid, the rest test (N >= 10). The same
    RandomState then dequantises them in permuted order, as :func:`dequantise`: x = pixel + u,
    u ~ U[0, 1), so the data space is [0, 256)^(C H W).

    Shapes: train (int(0.8 N), C, H, W), valid (int(0.1 N), C, H, W), test (the rest), float32;
    image_shape (C, H, W); levels 256; space "data"; to_data None; name the folder's name.

    Args:
        path: the folder.
        image_size: None, an int S for S x S, or (H, W).
        seed: seed of the permutation and of the noise.

    Raises:
        FileNotFoundError: if ``path`` is not a folder.
        DataError: (one line, naming the file) for a folder with no image files, a file with
            another suffix, a file Pillow cannot read, an image that is not 8-bit (e.g. 16-bit
            grey), images of different sizes without ``image_size`` (two files and their
            sizes), fewer than 10 images, or a bad ``image_size``.
    """
    root = Path(path).expanduser()
    pixels = folder_pixels(root, image_size)
    n = len(pixels)
    n_train, n_valid = fraction_sizes(n)
    if min(n_train, n_valid, n - n_train - n_valid) < 1:
        raise DataError(f"{root}: {n} images are too few to split 80/10/10 into train/valid/test (at least 10)")
    rng = np.random.RandomState(seed)
    x = dequantise(pixels[rng.permutation(n)], rng)
    parts = base.split(x, n_train, n_valid, str(root))
    return DataSet(root.name, *map(to_tensor, parts), image_shape=x.shape[1:], levels=256)


def folder_pixels(path: str | Path, image_size: int | Sequence[int] | None = None) -> np.ndarray:
    r"""The 8-bit pixels of every image file of a folder, in the order and with the rules of
    :func:`image_folder` (files, channels, size), without splitting or dequantising them.

    Shapes: (N, C, H, W) uint8, N >= 1.

    Raises:
        FileNotFoundError: if ``path`` is not a folder.
        DataError: as :func:`image_folder`, but for the number of images (one is enough).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    size = _image_size(image_size)
    files = sorted(
        (f for f in root.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)),
        key=lambda f: f.relative_to(root).as_posix(),
    )
    for f in files:
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{f}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}); move it out of {root}")
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    arrays = [_read_image(f, size) for f in files]
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape[:2]
        i = next(i for i, a in enumerate(arrays) if a.shape[:2] != first)
        (h, w), (h2, w2) = first, arrays[i].shape[:2]
        a, b = (f.relative_to(root).as_posix() for f in (files[0], files[i]))
        raise DataError(
            f"{root}: images of different sizes (H x W), {a} is {h}x{w} but {b} is {h2}x{w2}; "
            "pass image_size to resize them"
        )
    if any(a.ndim == 3 for a in arrays):
        # L -> RGB in Pillow copies the grey level into each channel.
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1) for a in arrays]
        return np.stack(arrays).transpose(0, 3, 1, 2)
    return np.stack(arrays)[:, None]


def _image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size):
        raise DataError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    return int(size[0]), int(size[1])


_GREY_MODES = ("1", "L", "LA")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def read_image(path: str | Path) -> np.ndarray:
    """One image file read as :func:`image_folder` reads each of its files (grey stays one
    channel, anything else becomes RGB).

    Shapes: (C, H, W) uint8, C = 1 or 3.

    Raises:
        FileNotFoundError: if the file does not exist.
        DataError: for a file Pillow cannot read or an image that is not 8-bit.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    array = _read_image(path, None)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _read_image(file: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 (H, W) when grey, (H, W, 3) otherwise, resized to ``size`` (H, W)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, ...
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(f"{file}: not a readable image ({reason})") from None
    if image.mode in _GREY_MODES:
        image = image.convert("L")
    elif image.mode in _COLOUR_MODES:
        # A palette with a transparent entry goes through RGBA, as Pillow asks.
        image = (image.convert("RGBA") if image.mode in ("P", "PA") else image).convert("RGB")
    else:
        raise DataError(f"{file}: Pillow mode {image.mode!r} is not 8-bit grey or colour")
    if size is not None and image.size != size[::-1]:
        image = image.resize(size[::-1], Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)
