"""Tests of pushforward.data: toys, digits, MNIST, user files, image folders and the MAF tabular benchmarks.

Expected arrays are re-derived here with a few lines of numpy/pandas that follow the documented
procedure (the MAF paper's loaders), not with the package's own helpers.
"""

from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pushforward.data import (
    IMAGE_NAMES,
    NAMES,
    TOYS,
    DataError,
    DataSet,
    binarized_mnist,
    bsds300,
    digits,
    from_file,
    gas,
    hepmass,
    image_folder,
    load,
    miniboone,
    mnist,
    mnist_images,
    mnist_labels,
    power,
    read_array,
    read_idx,
    toy,
)

MNIST_DIRS = [Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist", Path("/work/shared/data/mnist")]
MNIST_DIR = next((d for d in MNIST_DIRS if (d / "train-images-idx3-ubyte.gz").is_file()), None)


def stacked(data: DataSet) -> np.ndarray:
    return torch.cat([data.train, data.valid, data.test]).numpy()


def sizes(data: DataSet) -> tuple[int, int, int]:
    return len(data.train), len(data.valid), len(data.test)


# ---------------------------------------------------------------------------------------------
# toys


@pytest.mark.parametrize("name", list(TOYS))
def test_toy_shape_finite_and_seeded(name):
    x = toy(name, 1000, seed=0)
    assert x.shape == (1000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.abs().max() < 6
    assert torch.equal(x, toy(name, 1000, seed=0))
    assert not torch.allclose(x, toy(name, 1000, seed=1))


def test_toy_dataset_sizes_and_seeds():
    data = load("moons")
    assert sizes(data) == (10_000, 2_000, 2_000) and data.features == 2
    assert data.space == "data" and data.to_data is None and data.levels is None
    assert torch.equal(data.train, toy("moons", 10_000, seed=0))
    assert not torch.allclose(data.valid, data.test)
    small = load("Moons", n=300, seed=2)
    assert len(small.train) == 300 and torch.equal(small.train, toy("moons", 300, seed=6))


def test_toy_errors():
    with pytest.raises(DataError, match="unknown toy density 'banana'"):
        toy("banana", 10)
    with pytest.raises(DataError, match="at least 1"):
        toy("moons", 0)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_split_range_and_seed():
    from sklearn.datasets import load_digits

    values = load_digits().data
    n = len(values)
    data = digits(seed=0)
    assert sizes(data) == (int(0.8 * n), int(0.1 * n), n - int(0.8 * n) - int(0.1 * n)) == (1437, 179, 181)
    assert data.image_shape == (1, 8, 8) and data.levels == 17 and data.features == 64
    x = stacked(data)
    assert x.min() >= 0 and x.max() < 17
    np.testing.assert_array_equal(np.floor(x), values[np.random.RandomState(0).permutation(n)])
    assert torch.equal(digits(seed=0).train, data.train)
    assert not torch.equal(digits(seed=1).train, data.train)


def test_digits_as_images():
    rows, data = digits(seed=3), load("digits", seed=3, images=True)
    assert sizes(data) == (1437, 179, 181) and data.event_shape == (1, 8, 8) and data.features == 64
    assert data.image_shape == (1, 8, 8) and data.levels == 17 and data.space == "data"
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(data, split).flatten(1), getattr(rows, split))
    assert rows.event_shape == (64,)


# ---------------------------------------------------------------------------------------------
# MNIST on the real files

needs_mnist = pytest.mark.skipif(MNIST_DIR is None, reason="MNIST IDX files not found in ../shared/data/mnist")


@pytest.fixture(scope="module")
def mnist_data():
    return mnist(MNIST_DIR)


@needs_mnist
def test_mnist_splits_and_attributes(mnist_data):
    assert sizes(mnist_data) == (50_000, 10_000, 10_000)
    assert mnist_data.features == 784 and mnist_data.image_shape == (1, 28, 28)
    assert mnist_data.space == "logit" and mnist_data.levels == 256
    assert mnist_data.train.dtype == torch.float32


@needs_mnist
def test_mnist_labels_and_pixels():
    train = np.concatenate([mnist_labels(MNIST_DIR, "train"), mnist_labels(MNIST_DIR, "valid")])
    assert np.bincount(train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test = mnist_labels(MNIST_DIR, "test")
    assert np.bincount(test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    images = read_idx(MNIST_DIR / "train-images-idx3-ubyte.gz")
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert images.mean() == pytest.approx(33.318, abs=5e-4)
    with pytest.raises(DataError, match="unknown split"):
        mnist_labels(MNIST_DIR, "dev")


@needs_mnist
def test_mnist_to_data_gives_back_pixels(mnist_data):
    pixels = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz").reshape(10_000, 784).astype(np.float64)
    x, ladj = mnist_data.to_data(mnist_data.test.double())
    x = x.numpy()
    assert ladj.shape == (10_000,) and torch.isfinite(ladj).all()
    assert x.min() >= 0 and x.max() < 256 + 1e-3
    # Logits stored in float32 move a value by about 1e-6 pixel, which can cross an integer
    # only when the noise u lies that close to 0 or 1.
    wrong = np.floor(x) != pixels
    assert wrong.mean() < 1e-5
    assert np.abs(x[wrong] - np.round(x[wrong])).max(initial=0) < 1e-4


@needs_mnist
def test_mnist_noise_follows_maf_order(mnist_data):
    alpha = 1e-6
    pixels = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz").reshape(10_000, 784)[:3]
    rng = np.random.RandomState(42)
    for _ in range(12):  # the 50,000 train then 10,000 valid rows come first
        rng.rand(5_000, 784)
    p = alpha + (1 - 2 * alpha) * (pixels + rng.rand(3, 784)) / 256
    np.testing.assert_allclose(mnist_data.test[:3].numpy(), np.log(p / (1 - p)), rtol=1e-6, atol=1e-6)


@needs_mnist
def test_mnist_as_images():
    data = load("mnist", MNIST_DIR, images=True)  # seed 0
    assert sizes(data) == (55_000, 5_000, 10_000) and data.event_shape == data.image_shape == (1, 28, 28)
    assert data.space == "data" and data.to_data is None and data.levels == 256 and data.features == 784
    train = read_idx(MNIST_DIR / "train-images-idx3-ubyte.gz")
    test = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(np.floor(data.valid.numpy()[:, 0]), train[55_000:])
    x = data.test.numpy()
    np.testing.assert_array_equal(np.floor(x[:, 0]), test)
    assert x.min() >= 0 and x.max() < 256 and data.train.max() < 256
    rng = np.random.RandomState(0)
    for _ in range(12):  # the 60,000 training images draw first
        rng.rand(5_000, 784)
    np.testing.assert_allclose(x[:3].reshape(3, 784), test[:3].reshape(3, 784) + rng.rand(3, 784), rtol=0, atol=3e-5)
    labels = [mnist_labels(MNIST_DIR, s, images=True) for s in ("train", "valid", "test")]
    assert [len(a) for a in labels] == [55_000, 5_000, 10_000]


# ---------------------------------------------------------------------------------------------
# IDX files


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 6, compress: bool = True) -> dict:
    rng = np.random.RandomState(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 4, 5)),
        "train-labels-idx1-ubyte": rng.randint(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 4, 5)),
        "t10k-labels-idx1-ubyte": rng.randint(0, 10, n_test),
    }
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if compress else "")), array, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx(tmp_path, compress):
    array = np.arange(24).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / "a-idx3-ubyte", array, compress))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_read_idx_corrupt(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((3, 2, 2)))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="corrupt IDX file"):
        read_idx(path)
    path.write_bytes(b"\x12\x34\x08\x01abcd")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)
    path.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match="gzip"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_on_small_idx_files(tmp_path, compress):
    arrays = write_mnist(tmp_path / "mnist", compress=compress)
    data = load("mnist", str(tmp_path))  # a parent holding mnist/
    assert sizes(data) == (10, 2, 6) and data.image_shape == (1, 4, 5)
    pixels = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]]).reshape(18, 20)
    x, _ = data.to_data(torch.from_numpy(stacked(data)).double())
    np.testing.assert_array_equal(np.floor(x.numpy()), pixels)
    np.testing.assert_array_equal(mnist_labels(tmp_path / "mnist", "valid"), arrays["train-labels-idx1-ubyte"][10:])


def test_mnist_images_on_small_idx_files(tmp_path):
    arrays = write_mnist(tmp_path / "mnist")
    data = load("mnist", str(tmp_path), images=True, seed=4)
    assert sizes(data) == (11, 1, 6) and data.event_shape == (1, 4, 5) and data.image_shape == (1, 4, 5)
    pixels = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])[:, None]
    x = stacked(data)
    np.testing.assert_array_equal(np.floor(x), pixels)
    np.testing.assert_allclose(x, pixels + np.random.RandomState(4).rand(18, 1, 4, 5), rtol=0, atol=3e-5)
    assert torch.equal(mnist_images(tmp_path, seed=4).test, data.test)
    assert not torch.equal(mnist_images(tmp_path, seed=5).test, data.test)
    np.testing.assert_array_equal(mnist_labels(tmp_path, "valid", images=True), arrays["train-labels-idx1-ubyte"][11:])


def test_binarized_mnist_split_and_fixed_test_bits(tmp_path):
    arrays = write_mnist(tmp_path / "mnist", n_train=60)
    data = binarized_mnist(tmp_path)
    assert data.train.shape == (50, 20) and data.valid.shape == (10, 20) and data.test.shape == (6, 20)
    assert data.image_shape == (1, 4, 5) and data.features == 20
    pixels = torch.from_numpy(arrays["train-images-idx3-ubyte"][:50].reshape(50, 20)).float()
    torch.testing.assert_close(data.train * 255, pixels)
    assert set(data.test.unique().tolist()) <= {0.0, 1.0} and set(data.valid.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(binarized_mnist(tmp_path).test, data.test)
    assert not torch.equal(binarized_mnist(tmp_path, seed=1).test, data.test)


@pytest.mark.skipif(MNIST_DIR is None, reason="MNIST files absent")
def test_binarized_mnist_real_files():
    data = binarized_mnist(MNIST_DIR)
    assert (len(data.train), len(data.valid), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.features == 784 and abs(float(data.test.mean()) - 0.13) < 0.01


def test_fashion_mnist_is_mnist_by_another_name(tmp_path):
    arrays = write_mnist(tmp_path / "fashion-mnist")
    assert "fashion-mnist" in NAMES and "fashion-mnist" in IMAGE_NAMES
    images = load("Fashion-MNIST", tmp_path, images=True)
    assert images.name == "fashion-mnist" and sizes(images) == (11, 1, 6)
    rows = load("fashion-mnist", tmp_path)
    assert rows.name == "fashion-mnist" and rows.space == "logit" and sizes(rows) == (10, 2, 6)
    labels = mnist_labels(tmp_path, "test", name="fashion-mnist")
    np.testing.assert_array_equal(labels, arrays["t10k-labels-idx1-ubyte"])
    with pytest.raises(FileNotFoundError, match="looked for .*, mnist/train-images"):
        load("mnist", tmp_path, images=True)  # looks in mnist/, not in fashion-mnist/


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        mnist(None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mnist(tmp_path / "nowhere")
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        mnist_labels(tmp_path, "test")
    labels = (tmp_path / "train-labels-idx1-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(labels)
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        mnist(tmp_path)


# ---------------------------------------------------------------------------------------------
# user files


@pytest.fixture
def table():
    return np.random.RandomState(1).randn(20, 3)


def expected_split(array: np.ndarray, seed: int = 0) -> np.ndarray:
    return array[np.random.RandomState(seed).permutation(len(array))]


@pytest.mark.parametrize(
    "name, write",
    [
        ("header.csv", lambda p, a: np.savetxt(p, a, delimiter=",", header="a,b,c", comments="")),
        ("plain.csv", lambda p, a: np.savetxt(p, a, delimiter=",")),
        ("spaces.txt", lambda p, a: p.write_text("\n".join(" \t ".join(map(str, r)) + "  " for r in a))),
        ("spaces_header.dat", lambda p, a: p.write_text("x y z\n" + "\n".join(" ".join(map(str, r)) for r in a))),
        ("array.npy", lambda p, a: np.save(p, a)),
        ("single.npz", lambda p, a: np.savez(p, anything=a)),
    ],
)
def test_from_file_formats(tmp_path, table, name, write):
    write(tmp_path / name, table)
    data = load(str(tmp_path / name), seed=3)
    assert sizes(data) == (16, 2, 2) and data.features == 3 and data.name == Path(name).stem
    np.testing.assert_allclose(stacked(data), expected_split(table, seed=3), rtol=1e-6)


def test_from_file_named_splits(tmp_path, table):
    np.savez(tmp_path / "ready.npz", train=table[:12], validation=table[12:15], test=table[15:])
    data = from_file(tmp_path / "ready.npz")
    assert sizes(data) == (12, 3, 5)
    np.testing.assert_allclose(stacked(data), table, rtol=1e-6)
    np.savez(tmp_path / "two.npz", train=table[:15], test=table[15:])
    data = from_file(tmp_path / "two.npz", seed=2)
    assert sizes(data) == (14, 1, 5)
    np.testing.assert_allclose(stacked(data)[:15], expected_split(table[:15], seed=2), rtol=1e-6)


def test_from_file_test_path(tmp_path, table):
    np.save(tmp_path / "train.npy", table)
    np.savetxt(tmp_path / "test.csv", table[:4] + 10, delimiter=",")
    data = load(str(tmp_path / "train.npy"), test_path=str(tmp_path / "test.csv"), seed=5)
    assert sizes(data) == (18, 2, 4)
    np.testing.assert_allclose(stacked(data)[:20], expected_split(table, seed=5), rtol=1e-6)
    np.testing.assert_allclose(data.test.numpy(), table[:4] + 10, rtol=1e-6)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", "", "empty file"),
        ("blank.csv", "\n  \n", "empty file"),
        ("header_only.csv", "a,b\n", "a header row but no data"),
        ("nan.csv", "1,2\n3,4\n5,nan\n", "1 NaN or infinite value.*row 2, column 1"),
        ("inf.txt", "1 2\ninf -inf\n", "2 NaN or infinite value.*row 1, column 0"),
        ("text.csv", "a,b\n1,2\n3,abc\n", "line 3: non-numeric value 'abc'"),
        ("ragged.csv", "1,2\n3,4,5\n", "line 2: 3 values, expected 2"),
        ("few.csv", "\n".join(f"{i},{i}" for i in range(9)), "9 rows are too few"),
        ("data.json", "[1, 2]", "unsupported file type '.json'"),
    ],
)
def test_bad_text_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        from_file(tmp_path / name)


@pytest.mark.parametrize(
    "name, save, message",
    [
        ("flat.npy", lambda p: np.save(p, np.arange(20.0)), r"expected a 2-D array .* shape \(20,\)"),
        ("cube.npy", lambda p: np.save(p, np.zeros((20, 2, 2))), "expected a 2-D array"),
        ("inf.npy", lambda p: np.save(p, np.array([[1.0, np.inf]] * 20)), "20 NaN or infinite"),
        ("none.npy", lambda p: np.save(p, np.zeros((0, 3))), "empty"),
        ("strings.npy", lambda p: np.save(p, np.array([["a", "b"]] * 20)), "expected numbers"),
        ("objects.npy", lambda p: np.save(p, np.array([[1, None]] * 20), allow_pickle=True), "cannot read as NPY"),
        ("names.npz", lambda p: np.savez(p, train=np.zeros((20, 2)), extra=np.zeros((20, 2))), "unknown array names"),
        ("widths.npz", lambda p: np.savez(p, train=np.ones((20, 2)), test=np.ones((5, 3))), "different numbers"),
    ],
)
def test_bad_array_files(tmp_path, name, save, message):
    save(tmp_path / name)
    with pytest.raises(DataError, match=message):
        from_file(tmp_path / name)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        from_file(tmp_path / "missing.csv")
    with pytest.raises(DataError, match=r"unknown data set or missing file: 'xyz' \(known: moons, .*mnist"):
        load("xyz")
    with pytest.raises(ValueError, match="unknown data set or missing file"):
        load(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="test_path applies to files only"):
        load("digits", test_path="x.csv")
    with pytest.raises(DataError, match="n must be between 1 and 1437"):
        load("digits", n=5000)
    assert set(TOYS) < set(NAMES) and issubclass(DataError, ValueError)


def test_dataset_holds_examples_of_any_event_shape():
    images = DataSet("img", torch.zeros(5, 1, 2, 3), torch.zeros(2, 1, 2, 3), torch.zeros(1, 1, 2, 3),
                     image_shape=(1, 2, 3), levels=256)
    assert images.event_shape == (1, 2, 3) and images.features == 6
    assert repr(images) == (
        "DataSet(name='img', features=6, event_shape=(1, 2, 3), train=5, valid=2, test=1, space='data')"
    )
    rows = DataSet("rows", torch.zeros(5, 6), torch.zeros(2, 6), torch.zeros(1, 6), image_shape=(1, 2, 3))
    assert rows.event_shape == (6,) and rows.features == 6
    bad = [
        ((torch.zeros(5, 1, 2, 3), torch.zeros(2, 1, 2, 3), torch.zeros(1, 6)), {}, "same event shape"),
        ((torch.zeros(5, 1, 2, 3), torch.zeros(2, 1, 3, 2), torch.zeros(1, 1, 2, 3)), {}, "same event shape"),
        ((torch.zeros(5), torch.zeros(2), torch.zeros(1)), {}, r"\(N, \*event\)"),
        ((torch.zeros(5, 1, 2, 3),) * 3, {"image_shape": (1, 3, 2)}, r"image_shape \(1, 3, 2\) does not match"),
        ((torch.zeros(5, 6),) * 3, {"image_shape": (1, 2, 2)}, "does not match examples of shape"),
    ]
    for splits, kwargs, message in bad:
        with pytest.raises(DataError, match=message):
            DataSet("bad", *splits, **kwargs)


def test_measure_sums_over_image_dimensions():
    from pushforward.core import Flow
    from pushforward.distributions import StandardNormal
    from pushforward.experiment import measure
    from pushforward.transforms.elementwise import Affine

    x = torch.from_numpy(np.random.RandomState(0).rand(7, 1, 2, 3) * 256).float()
    data = DataSet("img", x, x, x, image_shape=(1, 2, 3), levels=256)
    flow = Flow(StandardNormal((1, 2, 3)), Affine(torch.full((1, 2, 3), 128.0), torch.full((1, 2, 3), 64.0), 3))
    z = (x.double() - 128) / 64
    expected = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi) - np.log(64)).sum((1, 2, 3))
    m = measure(flow, data)
    assert m.log_likelihood_nats == pytest.approx(expected.mean().item(), rel=1e-5)
    assert m.data_log_likelihood_nats == pytest.approx(m.log_likelihood_nats)
    assert m.bits_per_dim == pytest.approx(-expected.mean().item() / (6 * np.log(2)), rel=1e-5)
    assert m.stderr_nats == pytest.approx((expected.std() / np.sqrt(7)).item(), rel=1e-4)


def test_read_array_and_dataset_checks(tmp_path, table):
    np.savez(tmp_path / "two.npz", train=table, test=table)
    with pytest.raises(DataError, match="expected one array"):
        read_array(tmp_path / "two.npz")
    with pytest.raises(DataError, match="same features"):
        DataSet("bad", torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 4))
    data = DataSet("ok", torch.zeros(3, 2), torch.zeros(1, 2), torch.zeros(1, 2))
    assert repr(data) == "DataSet(name='ok', features=2, train=3, valid=1, test=1, space='data')"


# ---------------------------------------------------------------------------------------------
# MAF tabular benchmarks on small files in MAF's formats


def maf_sizes(n: int) -> tuple[int, int, int]:
    n_test = int(0.1 * n)
    n_valid = int(0.1 * (n - n_test))
    return n - n_test - n_valid, n_valid, n_test


def test_power(tmp_path):
    raw = np.random.RandomState(7).rand(57, 8) * [5, 1, 240, 20, 30, 30, 30, 1440]
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", raw)
    data = power(tmp_path)
    assert sizes(data) == maf_sizes(57) == (47, 5, 5) and data.features == 6
    assert data.space == "normalised" and data.to_data is None and data.levels is None

    def maf_power(voltage_first: bool) -> np.ndarray:
        rng, x = np.random.RandomState(42), raw.copy()
        rng.shuffle(x)
        x = np.delete(np.delete(x, 3, axis=1), 1, axis=1)
        u, v = rng.rand(57, 1), rng.rand(57, 1)
        voltage, active = (0.01 * u, 0.001 * v) if voltage_first else (0.01 * v, 0.001 * u)
        x = x + np.hstack([active, voltage, rng.rand(57, 3), np.zeros((57, 1))])
        return (x - x[:52].mean(axis=0)) / x[:52].std(axis=0)

    np.testing.assert_allclose(stacked(data), maf_power(voltage_first=True), atol=1e-5)
    assert not np.allclose(stacked(data), maf_power(voltage_first=False), atol=1e-5)
    reference = stacked(data)[:52].astype(np.float64)
    np.testing.assert_allclose(reference.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(reference.std(axis=0), 1, atol=1e-6)
    assert torch.equal(power(tmp_path / "power").train, data.train)
    np.save(tmp_path / "power" / "data.npy", raw[:, :7])
    with pytest.raises(DataError, match="8 columns, found 7"):
        power(tmp_path)


def test_miniboone(tmp_path):
    raw = np.random.RandomState(8).randn(37, 5) * [1, 2, 3, 4, 5] + 10
    np.save(tmp_path / "data.npy", raw)
    data = load("miniboone", str(tmp_path))
    assert sizes(data) == maf_sizes(37) == (31, 3, 3) and data.features == 5
    expected = (raw - raw[:34].mean(axis=0)) / raw[:34].std(axis=0)  # ddof 0, train + valid
    np.testing.assert_allclose(stacked(data), expected, atol=1e-5)
    np.save(tmp_path / "data.npy", np.ones((37, 2)))
    with pytest.raises(DataError, match="constant"):
        miniboone(tmp_path)


def test_gas(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(9)
    s1, s2, s4 = rng.randn(3, 40)
    frame = pd.DataFrame({
        "Time": np.arange(40.0), "Meth": rng.rand(40), "Eth": rng.rand(40),
        "s1": s1, "s2": s2, "s3": 2 * s1 + 1, "s4": s4, "s5": s2 + 1e-3 * rng.randn(40), "s6": -s4,
    })
    (tmp_path / "gas").mkdir()
    frame.to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    data = gas(tmp_path)
    # s1 goes first (correlated with s3), then s2 (with s5); s6 = -s4 has correlation -1 and stays.
    kept = frame[["s3", "s4", "s5", "s6"]]
    expected = ((kept - kept.mean()) / kept.std()).to_numpy()  # whole set, ddof 1
    assert sizes(data) == maf_sizes(40) == (33, 3, 4) and data.features == 4
    np.testing.assert_allclose(stacked(data), expected, atol=1e-5)
    frame.drop(columns="Eth").to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    with pytest.raises(DataError, match=r"missing \['Eth'\]"):
        gas(tmp_path)


def hepmass_frame(rng: np.random.RandomState, n: int, extra: bool):
    import pandas as pd

    label = (rng.rand(n) < 0.7).astype(float)
    signal = np.flatnonzero(label == 1)
    features = rng.randn(n, 4)
    features[signal[:6], 1] = -9.0  # smallest signal value of f1 six times: dropped
    features[signal[6:11], 2] = -9.0  # smallest of f2 five times: kept ...
    features[signal[11:21], 2] = 0.5  # ... although another value repeats ten times
    features[label == 0, 2] = -20.0  # background rows do not count
    columns = {"# label": label, **{f"f{j}": features[:, j] for j in range(4)}}
    if extra:
        columns["mass"] = np.full(n, 1000.0)
    return pd.DataFrame(columns)


def test_hepmass(tmp_path):
    pytest.importorskip("pandas")
    rng = np.random.RandomState(10)
    train, test = hepmass_frame(rng, 80, extra=False), hepmass_frame(rng, 30, extra=True)
    train.to_csv(tmp_path / "1000_train.csv", index=False)
    test.to_csv(tmp_path / "1000_test.csv", index=False)
    data = hepmass(tmp_path)
    x_train = train[train["# label"] == 1].to_numpy()[:, 1:]
    x_test = test[test["# label"] == 1].to_numpy()[:, 1:-1]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0, ddof=1)
    keep = [0, 2, 3]
    n_valid = int(0.1 * len(x_train))
    assert sizes(data) == (len(x_train) - n_valid, n_valid, len(x_test)) and data.features == 3
    expected = (np.concatenate([x_train, x_test]) - mean) / std
    np.testing.assert_allclose(stacked(data), expected[:, keep], atol=1e-5)


def test_bsds300(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.RandomState(11)
    parts = {"train": rng.randn(20, 63), "validation": rng.randn(4, 63), "test": rng.randn(6, 63)}
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for key, value in parts.items():
            f.create_dataset(key, data=value.astype(np.float32))
    data = bsds300(tmp_path)
    assert sizes(data) == (20, 4, 6) and data.features == 63
    np.testing.assert_array_equal(data.valid.numpy(), parts["validation"].astype(np.float32))
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        f.create_dataset("train", data=np.zeros((2, 63)))
    with pytest.raises(DataError, match=r"no dataset\(s\) \['validation', 'test'\]"):
        bsds300(tmp_path)


@pytest.mark.parametrize("loader", [power, gas, hepmass, miniboone, bsds300])
def test_tabular_missing_files(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        loader(tmp_path)
    with pytest.raises(FileNotFoundError, match="data_dir"):
        loader(None)


@pytest.mark.parametrize("module, loader", [("pandas", gas), ("pandas", hepmass), ("h5py", bsds300)])
def test_tabular_optional_imports(monkeypatch, tmp_path, module, loader):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"pip install pushforward\[tabular\]"):
        loader(tmp_path)


# ---------------------------------------------------------------------------------------------
# a folder of images (tiny files written here with Pillow)


def write_images(folder: Path, n: int, shape: tuple[int, ...] = (3, 5), seed: int = 0, suffix: str = ".png",
                 prefix: str = "img", **save) -> list[np.ndarray]:
    """n random 8-bit images of ``shape`` ((H, W) grey, (H, W, 3) RGB) named prefix00.png, ..."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    arrays = list(np.random.RandomState(seed).randint(0, 256, (n, *shape)).astype(np.uint8))
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{prefix}{i:02d}{suffix}", **save)
    return arrays


def one_line_error(call, match: str) -> str:
    with pytest.raises(DataError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_image_folder_grey(tmp_path):
    arrays = write_images(tmp_path / "faces", 12, (3, 5))
    data = load(str(tmp_path / "faces"), images=True, seed=2)
    assert data.name == "faces" and sizes(data) == (9, 1, 2)
    assert data.event_shape == data.image_shape == (1, 3, 5) and data.features == 15
    assert data.space == "data" and data.to_data is None and data.levels == 256
    rng = np.random.RandomState(2)
    pixels = np.stack(arrays)[rng.permutation(12)][:, None]
    x = stacked(data)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() < 256
    np.testing.assert_array_equal(np.floor(x), pixels)
    np.testing.assert_allclose(x, pixels + rng.rand(12, 1, 3, 5), rtol=0, atol=3e-5)
    assert torch.equal(image_folder(tmp_path / "faces", seed=2).train, data.train)
    assert not torch.equal(image_folder(tmp_path / "faces", seed=3).train, data.train)
    rows = load(str(tmp_path / "faces"), seed=2)
    assert rows.event_shape == (15,) and rows.image_shape == (1, 3, 5)
    assert torch.equal(rows.test, data.test.flatten(1))
    assert len(load(str(tmp_path / "faces"), images=True, n=4).train) == 4


def test_image_folder_rgb_recursive_and_hidden(tmp_path):
    from PIL import Image

    root = tmp_path / "pictures"
    grey = write_images(root, 6, (4, 4), prefix="a")
    rgb = write_images(root / "sub", 5, (4, 4, 3), seed=1, prefix="b")
    Image.fromarray(rgb[0]).convert("P").save(root / "sub" / "c.GIF")
    Image.fromarray(rgb[1]).save(root / "d.bmp")
    Image.fromarray(np.dstack([rgb[2], np.full((4, 4), 128, np.uint8)])).save(root / "e.png")  # RGBA
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / ".cache").mkdir()
    (root / ".cache" / "notes.txt").write_text("hidden folders are skipped")
    data = image_folder(root, seed=0)
    assert sum(sizes(data)) == 14 and data.event_shape == data.image_shape == (3, 4, 4)
    # Sorted by relative path: a00..a05, d.bmp, e.png, sub/b00..b04, sub/c.GIF.
    order = np.random.RandomState(0).permutation(14)
    x = np.floor(stacked(data))
    first_grey = int(np.flatnonzero(order == 0)[0])
    np.testing.assert_array_equal(x[first_grey], np.stack([grey[0]] * 3))
    np.testing.assert_array_equal(x[int(np.flatnonzero(order == 7)[0])], rgb[2].transpose(2, 0, 1))
    np.testing.assert_array_equal(x[int(np.flatnonzero(order == 8)[0])], rgb[0].transpose(2, 0, 1))


@pytest.mark.parametrize("suffix", [".webp", ".jpeg", ".PNG"])
def test_image_folder_other_formats(tmp_path, suffix):
    from PIL import features

    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("Pillow without WebP")
    lossless = {"lossless": True} if suffix == ".webp" else {}
    arrays = write_images(tmp_path / "f", 10, (8, 8, 3), suffix=suffix, **lossless)
    data = image_folder(tmp_path / "f")
    assert sizes(data) == (8, 1, 1) and data.event_shape == (3, 8, 8)
    if suffix != ".jpeg":  # lossless formats give the pixels back exactly
        pixels = np.stack(arrays)[np.random.RandomState(0).permutation(10)].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(np.floor(stacked(data)), pixels)


def test_image_folder_resize(tmp_path):
    from PIL import Image

    root = tmp_path / "sizes"
    write_images(root, 5, (3, 5))
    write_images(root, 5, (6, 2), prefix="tall")
    Image.fromarray(np.full((7, 9), 77, np.uint8)).save(root / "constant.jpg")
    assert image_folder(root, image_size=4).event_shape == (1, 4, 4)
    data = load(str(root), images=True, image_size=(2, 3))
    assert data.event_shape == (1, 2, 3) and sum(sizes(data)) == 11
    x = np.floor(stacked(data))
    constant = int(np.flatnonzero(np.random.RandomState(0).permutation(11) == 0)[0])  # sorted first
    np.testing.assert_array_equal(x[constant], 77)


def test_image_folder_errors(tmp_path):
    from PIL import Image

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.png").write_bytes(b"")
    one_line_error(lambda: image_folder(empty), f"{re.escape(str(empty))}: no image files")

    readme = tmp_path / "readme"
    write_images(readme, 10)
    (readme / "README.txt").write_text("my pictures")
    one_line_error(lambda: image_folder(readme), r"README\.txt: not an image file")

    broken = tmp_path / "broken"
    write_images(broken, 10)
    (broken / "broken.png").write_text("not a png\nat all")
    one_line_error(lambda: image_folder(broken), r"broken\.png: not a readable image")
    good = (broken / "img00.png").read_bytes()
    (broken / "broken.png").write_bytes(good[: len(good) // 2])
    one_line_error(lambda: image_folder(broken), r"broken\.png: not a readable image")

    deep = tmp_path / "deep"
    write_images(deep, 10)
    Image.fromarray(np.zeros((3, 5), np.uint16) + 1000).save(deep / "sixteen.png")
    one_line_error(lambda: image_folder(deep), r"sixteen\.png: Pillow mode .* is not 8-bit")

    mixed = tmp_path / "mixed"
    write_images(mixed, 10, (3, 5))
    write_images(mixed, 1, (4, 4), prefix="odd")
    message = one_line_error(lambda: image_folder(mixed), "images of different sizes")
    assert f"{mixed}: images of different sizes (H x W), img00.png is 3x5 but odd00.png is 4x4;" in message
    assert "image_size" in message

    few = tmp_path / "few"
    write_images(few, 9)
    one_line_error(lambda: image_folder(few), r"few: 9 images are too few to split")

    for size in (0, (2,), (2, 0), "big", 2.5, True, (2, 3, 4)):
        one_line_error(lambda: image_folder(few, image_size=size), "image_size must be a positive int or")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        image_folder(tmp_path / "nowhere")


def test_load_images_errors(tmp_path, table):
    np.save(tmp_path / "table.npy", table)
    write_images(tmp_path / "folder", 10)
    for name in ("moons", "power", str(tmp_path / "table.npy")):
        with pytest.raises(DataError, match="holds no images: image flows need images \\(digits, mnist, fashion-mnist"):
            load(name, images=True)
    for name in ("digits", "mnist", str(tmp_path / "table.npy")):
        with pytest.raises(DataError, match="image_size applies to folders of images only"):
            load(name, image_size=4)
    with pytest.raises(DataError, match="test_path applies to files only"):
        load(str(tmp_path / "folder"), test_path=str(tmp_path / "table.npy"))


def test_a_headerless_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2\n3,4\n5,6\n")
    np.testing.assert_array_equal(read_array(path), [[1, 2], [3, 4], [5, 6]])


def test_an_npy_header_is_checked_before_its_data_are_read(tmp_path):
    def npy(name, shape, data=b"\0" * 64):
        with open(tmp_path / name, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
            f.write(data)
        return tmp_path / name

    with pytest.raises(ValueError, match=r"needs about 1\.6 TB"):
        read_array(npy("huge.npy", (10**11, 2)))
    with pytest.raises(DataError, match="truncated"):
        read_array(npy("short.npy", (1000, 2)))
