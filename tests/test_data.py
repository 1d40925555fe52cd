"""Data sources, the IDX reader and augmentation (netspec.data)."""

import gzip
import json

import numpy as np
import pytest
from pydantic import ValidationError

from netspec.data import AugmentSpec, Dataset, augment, data_spec_adapter, load_data
from netspec.data.idx import idx_bytes, parse_idx, read_idx, write_idx
from netspec.data.sources import MNIST5K_PATH
from netspec.errors import DataError

ADAPTER = data_spec_adapter()


def spec(**fields):
    return ADAPTER.validate_python(fields)


@pytest.fixture(autouse=True)
def isolated_data_dirs(tmp_path, monkeypatch):
    """No test sees the user's real data: NETSPEC_DATA unset, cache in tmp."""
    monkeypatch.delenv("NETSPEC_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# ---------------------------------------------------------------- mnist-5k

def test_mnist5k_ships_small_uint8():
    assert MNIST5K_PATH.is_file()
    assert MNIST5K_PATH.stat().st_size < 2 * 1024 * 1024
    with np.load(MNIST5K_PATH, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["t_test", "t_train", "x_test", "x_train"]
        assert all(npz[k].dtype == np.uint8 for k in npz.files)
        assert npz["x_train"].max() == 255


def test_mnist5k_loads_stratified_and_normalized():
    data = load_data(spec(source="mnist-5k"))
    assert isinstance(data, Dataset) and data.name == "mnist-5k" and data.num_classes == 10
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.x_train.dtype == np.float32
    assert data.t_train.dtype == np.int64 and data.t_train.shape == (4000,)
    assert np.bincount(data.t_train).tolist() == [400] * 10
    assert np.bincount(data.t_test).tolist() == [100] * 10
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    # shuffled, not sorted by label as the source CSV is
    assert len(np.unique(data.t_train[:50])) > 5


def test_mnist5k_options():
    data = load_data(spec(source="mnist-5k", flatten=True, one_hot=True, normalize=False,
                          limit_train=30, limit_test=20), dtype="float64")
    assert data.x_train.shape == (30, 784) and data.x_test.shape == (20, 784)
    assert data.x_train.dtype == np.float64 and data.x_train.max() == 255.0
    assert data.t_train.shape == (30, 10) and np.all(data.t_train.sum(axis=1) == 1)
    full = load_data(spec(source="mnist-5k", limit_train=30))
    assert np.array_equal(full.t_train, data.t_train.argmax(axis=1))  # limit takes the first N


def test_default_source_is_mnist5k_and_unknown_fields_are_refused():
    from netspec.data.spec import Mnist5kData

    assert Mnist5kData().source == "mnist-5k"
    with pytest.raises(ValidationError, match="extra"):
        spec(source="mnist-5k", normalise=True)
    with pytest.raises(ValidationError):
        spec(source="cifar")
    with pytest.raises(ValidationError):
        spec(source="mnist-5k", limit_train=0)
    schema = json.dumps(ADAPTER.json_schema())
    for name in ("mnist-5k", "fashion-mnist", "inline", "npz", "function", "digits"):
        assert f'"{name}"' in schema


# --------------------------------------------------------------------- IDX

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_idx_header_is_big_endian():
    data = idx_bytes(np.zeros((3, 2), dtype=np.int32))
    assert data[:4] == bytes([0, 0, 0x0C, 2])
    assert data[4:12] == (3).to_bytes(4, "big") + (2).to_bytes(4, "big")


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:-5], "truncated"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b"\x01" + b[1:], "magic number"),
    (lambda b: b[:2] + b"\x42" + b[3:], "type code 0x42"),
    (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
    (lambda b: b[:2], "at least 4 bytes"),
])
def test_idx_corrupt_raw_names_the_reason(mutate, reason):
    good = idx_bytes(np.arange(20, dtype=np.uint8).reshape(4, 5))
    with pytest.raises(DataError, match=reason):
        parse_idx(mutate(good), source="f")


def test_idx_corrupt_files_on_disk(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 10, 10)))
    (tmp_path / "trunc.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "trunc.gz")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    (tmp_path / "bad.gz").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="corrupt|truncated"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "notgz.gz").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="expected a gzip file"):
        read_idx(tmp_path / "notgz.gz")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((4, 4), np.uint8))[:-1])
    with pytest.raises(DataError, match=r"truncated.*needs 28 bytes, found 27"):
        read_idx(tmp_path / "short")


def make_idx_dataset(directory, n_train=12, n_test=5, compress=True, size=28):
    """Write a small fake MNIST-style dataset; returns the arrays written."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(directory / (stem + (".gz" if compress else "")), array)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_dir(tmp_path, compress):
    arrays = make_idx_dataset(tmp_path / "m", compress=compress)
    data = load_data(spec(source="mnist", dir=str(tmp_path / "m")))
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (5, 1, 28, 28)
    assert np.array_equal(data.t_train, arrays["train-labels-idx1-ubyte"])
    assert np.allclose(data.x_test[:, 0] * 255, arrays["t10k-images-idx3-ubyte"])


def test_mnist_relative_dir_and_env(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "specs" / "data")
    assert load_data(spec(source="mnist", dir="data"), base_dir=tmp_path / "specs").x_train.shape[0] == 12
    make_idx_dataset(tmp_path / "root" / "fashion-mnist", n_train=7)
    monkeypatch.setenv("NETSPEC_DATA", str(tmp_path / "root"))
    data = load_data(spec(source="fashion-mnist"))
    assert data.name == "fashion-mnist" and data.x_train.shape[0] == 7


def test_mnist_mismatched_counts(tmp_path):
    make_idx_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match="12 images but train-labels-idx1-ubyte.gz has 11 labels"):
        load_data(spec(source="mnist", dir=str(tmp_path)))


def test_mnist_missing_offline_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        load_data(spec(source="mnist"))
    message = str(err.value)
    assert str(tmp_path / "cache" / "netspec" / "mnist") in message  # where it looked / where to put files
    assert "train-images-idx3-ubyte.gz" in message
    assert "netspec data fetch mnist" in message
    assert "NETSPEC_DATA" in message


def test_mnist_partial_dir(tmp_path):
    make_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing: t10k-labels-idx1-ubyte.*netspec data fetch mnist --dir"):
        load_data(spec(source="mnist", dir=str(tmp_path)))


# ----------------------------------------------------- inline, npz, function

def test_inline_seed_network_1():
    data = load_data(spec(source="inline", x=[[0.5, 0.8]], t=[[0.2, 0.1]]), dtype="float64")
    assert data.x_train.tolist() == [[0.5, 0.8]] and data.t_train.tolist() == [[0.2, 0.1]]
    assert np.array_equal(data.x_test, data.x_train) and data.num_classes is None
    assert data.x_train.dtype == np.float64 and data.t_train.dtype == np.float64


def test_inline_labels_and_checks():
    data = load_data(spec(source="inline", x=[[0.6, 0.9], [0.1, 0.2]], t=[2, 0],
                          x_test=[[1, 1]], t_test=[1]))
    assert data.t_train.dtype == np.int64 and data.num_classes == 3
    assert data.x_test.shape == (1, 2)
    with pytest.raises(ValidationError, match="same number"):
        spec(source="inline", x=[[1], [2]], t=[1])
    with pytest.raises(ValidationError, match="ragged"):
        spec(source="inline", x=[[1, 2], [3]], t=[0, 1])
    with pytest.raises(ValidationError, match="both x_test and t_test"):
        spec(source="inline", x=[[1]], t=[1], x_test=[[2]])


def test_npz_source(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (8, 1, 4, 4), dtype=np.uint8),
             t_train=np.arange(8) % 3, x_test=np.zeros((2, 1, 4, 4), np.uint8), t_test=np.array([0, 2]))
    data = load_data(spec(source="npz", path="d.npz"), base_dir=tmp_path)
    assert data.x_train.shape == (8, 1, 4, 4) and data.x_train.max() <= 1.0  # uint8 -> normalized by default
    assert data.num_classes == 3 and data.t_train.dtype == np.int64
    np.savez(tmp_path / "e.npz", a=np.ones((3, 2)), b=np.ones((3, 1)), c=np.ones((1, 2)), d=np.ones((1, 1)))
    data = load_data(spec(source="npz", path=str(tmp_path / "e.npz"),
                          keys={"x_train": "a", "t_train": "b", "x_test": "c", "t_test": "d"}))
    assert data.t_train.shape == (3, 1) and data.num_classes is None
    with pytest.raises(DataError, match="missing x_train.*holds a, b, c, d"):
        load_data(spec(source="npz", path=str(tmp_path / "e.npz")))
    with pytest.raises(DataError, match="no such .npz file"):
        load_data(spec(source="npz", path=str(tmp_path / "nope.npz")))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(spec(source="npz", path=str(tmp_path / "junk.npz")))


def test_npz_pickled_object_is_refused(tmp_path):
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = {"a": 1}, [1, 2]
    np.savez(tmp_path / "evil.npz", x_train=objects, t_train=np.zeros(2), x_test=objects, t_test=np.zeros(2))
    with pytest.raises(DataError, match="pickled"):
        load_data(spec(source="npz", path=str(tmp_path / "evil.npz")))


def test_function_source_seed_6():
    fn = spec(source="function", coefficients=[1, 1, -1, -1])
    data = load_data(fn, seed=3, dtype="float64")
    assert data.x_train.shape == (10000, 1) and data.x_test.shape == (1000, 1)
    assert data.x_train.min() >= -5 and data.x_train.max() <= 5
    x = data.x_train
    assert np.allclose(data.t_train, x ** 3 + x ** 2 - x - 1)
    again = load_data(fn, seed=3, dtype="float64")
    assert np.array_equal(again.x_train, data.x_train)
    assert not np.array_equal(load_data(fn, seed=4).x_train, data.x_train.astype(np.float32))
    with pytest.raises(ValidationError, match="low < high"):
        spec(source="function", coefficients=[1], low=2, high=1)


def test_digits_needs_sklearn_or_loads():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="scikit-learn"):
            load_data(spec(source="digits"))
        return
    data = load_data(spec(source="digits"))
    assert data.x_train.shape == (1500, 1, 8, 8) and data.x_test.shape == (297, 1, 8, 8)
    assert data.x_train.max() == 1.0


# ---------------------------------------------------------------- augment

def batch():
    return load_data(spec(source="mnist-5k", limit_train=16)).x_train


@pytest.mark.parametrize("option", [{"shift": 3}, {"rotate": 20}, {"flip": True}, {"crop": 4},
                                    {"brightness": 0.3}])
def test_each_augmentation_changes_images(option):
    x = batch()
    before = x.copy()
    out = augment(x, AugmentSpec(**option), np.random.default_rng(0))
    assert np.array_equal(x, before)  # input untouched
    assert out.shape == x.shape and out.dtype == x.dtype and out is not x
    changed = [not np.array_equal(a, b) for a, b in zip(out, x)]
    assert sum(changed) >= 4


def test_augment_is_deterministic_given_rng():
    x = batch()
    full = AugmentSpec(shift=2, rotate=15, flip=True, crop=2, brightness=0.2)
    a = augment(x, full, np.random.default_rng(7))
    b = augment(x, full, np.random.default_rng(7))
    c = augment(x, full, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_augment_off_is_identity_copy():
    x = batch()
    spec_off = AugmentSpec()
    assert not spec_off.enabled
    out = augment(x, spec_off, np.random.default_rng(0))
    assert np.array_equal(out, x) and out is not x


def test_augment_geometry():
    from netspec.data.augment import rotate, translate

    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 1, 1] = 1.0
    moved = translate(x, np.array([2]), np.array([-1]))
    assert moved[0, 0, 3, 0] == 1.0 and moved.sum() == 1.0
    # a quarter turn of a pixel right of centre lands above centre (counter-clockwise on screen)
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 4] = 1.0
    turned = rotate(x, np.array([90.0]))
    assert np.isclose(turned[0, 0, 0, 2], 1.0, atol=1e-6) and np.isclose(turned.sum(), 1.0, atol=1e-6)
    assert np.allclose(rotate(x, np.array([0.0])), x)


def test_augment_rejects_flat_batches_and_bad_spec():
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        augment(np.zeros((4, 784)), AugmentSpec(shift=1), np.random.default_rng(0))
    with pytest.raises(ValidationError):
        AugmentSpec(rotate=-5)
    with pytest.raises(ValidationError):
        AugmentSpec(shfit=2)
