"""Turn a ``DataSpec`` into arrays: ``load_data(spec) -> Dataset``.

Design: one loader per source returns raw arrays (images as (N, 1, H, W),
labels as integers); ``load_data`` then applies the shared options in one
place (limits, normalize, flatten, one-hot, dtype). Every failure a user can
cause or fix is a ``DataError`` that says what was expected, what was found,
and what to do. Nothing here touches the network: downloads live in
``netspec.data.fetch``.
"""

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from netspec.data.idx import read_idx
from netspec.data.spec import (
    DigitsData,
    FashionMnistData,
    FunctionData,
    InlineData,
    Mnist5kData,
    MnistData,
    NpzData,
    data_spec_adapter,
)
from netspec.errors import DataError
from netspec.safeio import file_kind, load_npz

PACKAGE_DIR = Path(__file__).resolve().parent
MNIST5K_PATH = PACKAGE_DIR / "mnist5k.npz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# The four files of an MNIST-style dataset, by role.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "t_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "t_test": "t10k-labels-idx1-ubyte",
}
IDX_COUNTS = {"x_train": 60000, "x_test": 10000}


@dataclass(frozen=True, repr=False)
class Dataset:
    """Training, test and (with a validation split) validation arrays: x float (N, ...), t int64
    labels or float targets. ``val_index`` holds the positions in the full training set that were
    held out for validation; the test arrays are None when a run must not read them (tuning)."""

    x_train: np.ndarray
    t_train: np.ndarray
    x_test: Optional[np.ndarray]
    t_test: Optional[np.ndarray]
    num_classes: Optional[int]
    name: str
    x_val: Optional[np.ndarray] = None
    t_val: Optional[np.ndarray] = None
    val_index: Optional[np.ndarray] = None

    @property
    def sample_shape(self):
        """Shape of one input sample, e.g. (1, 28, 28) or (784,)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self):
        shape = lambda a: None if a is None else a.shape  # noqa: E731
        val = f", x_val={self.x_val.shape}" if self.x_val is not None else ""
        return (f"Dataset({self.name!r}, x_train={self.x_train.shape} {self.x_train.dtype}, "
                f"t_train={self.t_train.shape} {self.t_train.dtype}, x_test={shape(self.x_test)}, "
                f"t_test={shape(self.t_test)}{val}, num_classes={self.num_classes})")


# ---------------------------------------------------------------- locations

def cache_dir():
    """The user cache dir for netspec data: $XDG_CACHE_HOME/netspec, else ~/.cache/netspec."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "netspec"


def default_data_root():
    """Where datasets live by default: $NETSPEC_DATA if set, else the user cache dir."""
    env = os.environ.get("NETSPEC_DATA")
    return Path(env).expanduser() if env else cache_dir()


def search_dirs(name, dir=None, base_dir=None):
    """Directories searched, in order, for the IDX files of ``name`` ('mnist' or 'fashion-mnist')."""
    if dir is not None:
        return [_resolve(dir, base_dir)]
    dirs = []
    env = os.environ.get("NETSPEC_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.append(cache_dir() / name)
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def find_idx_files(directory):
    """{role: path} of the IDX files present in ``directory`` (.gz preferred over raw)."""
    found = {}
    for role, stem in IDX_FILES.items():
        # some archives unpack "train-images-idx3-ubyte" as "train-images.idx3-ubyte"
        dotted = stem.replace("-idx", ".idx")
        for candidate in (stem + ".gz", stem, dotted + ".gz", dotted):
            path = Path(directory) / candidate
            if os.path.exists(path):  # not is_file(): a FIFO or folder by that name gets read_idx's clear refusal
                found[role] = path
                break
    return found


def _resolve(path, base_dir):
    path = Path(path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


# ------------------------------------------------------------------ loaders

def _load_mnist5k(spec):
    if not MNIST5K_PATH.is_file():
        raise DataError(f"the shipped dataset {MNIST5K_PATH} is missing; expected it inside the netspec package. "
                        "Reinstall netspec, or rebuild it with: python tools/build_mnist5k.py")
    arrays = _read_npz(MNIST5K_PATH, ("x_train", "t_train", "x_test", "t_test"))
    x_train, x_test = (arrays[k][:, None, :, :] for k in ("x_train", "x_test"))
    return x_train, arrays["t_train"], x_test, arrays["t_test"], 10


def _not_a_directory(path):
    """The kind of file at ``path`` ('regular file', 'FIFO (named pipe)', ...) if it exists but is no directory."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISDIR(mode) else file_kind(mode)


def _note(directory):
    """What is wrong with a searched directory, for the not-found message."""
    kind = _not_a_directory(directory)
    if kind:
        return f" (a {kind}, not a directory)"
    return "" if os.path.isdir(directory) else " (does not exist)"


def _load_idx_dataset(spec, name, base_dir):
    dirs = search_dirs(name, spec.dir, base_dir)
    kind = _not_a_directory(dirs[0]) if spec.dir is not None else None
    if kind:
        raise DataError(f"{name}: dir {dirs[0]} is a {kind}, not a directory; expected a folder holding "
                        f"the four IDX files ({', '.join(s + '.gz' for s in IDX_FILES.values())})")
    for directory in dirs:
        found = find_idx_files(directory)
        if len(found) == len(IDX_FILES):
            return _read_idx_set(found, name)
        if found and spec.dir is not None:
            missing = [IDX_FILES[r] + "[.gz]" for r in IDX_FILES if r not in found]
            raise DataError(f"{name}: {directory} holds only some of the IDX files; missing: {', '.join(missing)}. "
                            f"Put all four there, or run: netspec data fetch {name} --dir {directory}")
    looked = "\n".join(f"  - {d}{_note(d)}" for d in dirs)
    target = dirs[0]
    env_note = "" if spec.dir is not None else " (or set NETSPEC_DATA=DIR and use DIR/" + name + ")"
    raise DataError(
        f"{name}: dataset files not found. Looked in:\n{looked}\n"
        f"Expected the four IDX files ({', '.join(s + '.gz' for s in IDX_FILES.values())}; raw, uncompressed "
        f"files work too) in {target}{env_note}.\n"
        f"To download them: netspec data fetch {name}" + (f" --dir {target}" if spec.dir is not None else "")
        + "\nOffline? Copy the files there by hand, or use the shipped 'mnist-5k' source."
    )


def _read_idx_set(paths, name):
    arrays = {role: read_idx(path) for role, path in paths.items()}
    for split in ("train", "test"):
        x, t = arrays["x_" + split], arrays["t_" + split]
        xp, tp = paths["x_" + split], paths["t_" + split]
        if x.ndim != 3:
            raise DataError(f"{xp}: expected images of shape (N, rows, cols), found shape {x.shape}")
        if len(x) == 0:
            raise DataError(f"{xp}: the file holds no images (shape {x.shape}); expected at least one")
        if t.ndim != 1:
            raise DataError(f"{tp}: expected labels of shape (N,), found shape {t.shape}")
        if len(x) != len(t):
            raise DataError(f"{name}: {xp.name} has {len(x)} images but {tp.name} has {len(t)} labels; "
                            "expected the same number (are the files from the same dataset?)")
        if t.size and (t.min() < 0 or t.max() > 9):
            raise DataError(f"{tp}: expected labels 0..9, found values {int(t.min())}..{int(t.max())}")
    return (arrays["x_train"][:, None], arrays["t_train"], arrays["x_test"][:, None], arrays["t_test"], 10)


def _load_digits(spec):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the 'digits' source needs scikit-learn, which is not installed; "
                        "install it with: pip install 'netspec[sklearn]' (or pip install scikit-learn), "
                        "or use the shipped 'mnist-5k' source") from None
    bunch = load_digits()
    images, target = np.asarray(bunch.images), np.asarray(bunch.target)
    if spec.n_test >= len(images):
        raise DataError(f"digits: n_test must be smaller than the {len(images)} images, found {spec.n_test}")
    order = np.random.default_rng(1797).permutation(len(images))  # fixed split, independent of the spec seed
    test, train = order[: spec.n_test], order[spec.n_test:]
    return images[train, None], target[train], images[test, None], target[test], 10


def _load_inline(spec):
    x, t = np.asarray(spec.x), np.asarray(spec.t)
    if spec.x_test is None:
        x_test, t_test = x, t
    else:
        x_test, t_test = np.asarray(spec.x_test), np.asarray(spec.t_test)
    num_classes = int(max(t.max(), t_test.max())) + 1 if t.ndim == 1 and t.dtype.kind in "iu" else None
    return x, t, x_test, t_test, num_classes


def file_sha256(path):
    """Hex SHA-256 of a file's contents, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pin_paths(spec, base_dir):
    """The data spec with relative paths made absolute (from ``base_dir``, the spec file's folder)
    and an npz file's SHA-256 recorded, so the run directory names exactly the data it used."""
    if getattr(spec, "dir", None):
        return spec.model_copy(update={"dir": str(_resolve(spec.dir, base_dir).absolute())})
    if spec.source == "npz":
        path = _resolve(spec.path, base_dir).absolute()
        if not path.is_file():
            return spec.model_copy(update={"path": str(path)})  # the loader says what is wrong
        return spec.model_copy(update={"path": str(path), "sha256": spec.sha256 or file_sha256(path)})
    return spec


def _load_npz(spec, base_dir):
    path = _resolve(spec.path, base_dir)
    if spec.sha256 and path.is_file():
        found = file_sha256(path)
        if found != spec.sha256:
            raise DataError(f"{path}: the file's contents changed since training (SHA-256 {found}, the run "
                            f"recorded {spec.sha256}); restore the file, or train a new run on the new data")
    keys = spec.keys
    arrays = _read_npz(path, (keys.x_train, keys.t_train, keys.x_test, keys.t_test))
    x, t = arrays[keys.x_train], arrays[keys.t_train]
    x_test, t_test = arrays[keys.x_test], arrays[keys.t_test]
    for xs, ts, kx, kt in ((x, t, keys.x_train, keys.t_train), (x_test, t_test, keys.x_test, keys.t_test)):
        for array, key in ((xs, kx), (ts, kt)):
            if array.ndim == 0:
                raise DataError(f"{path}: '{key}' is a single value (a 0-d array); expected samples along "
                                "the first axis")
            if len(array) == 0:
                raise DataError(f"{path}: '{key}' is empty (shape {array.shape}): it has no samples; "
                                "expected at least one")
        if len(xs) != len(ts):
            raise DataError(f"{path}: '{kx}' has {len(xs)} samples but '{kt}' has {len(ts)}; expected the same number")
        if xs.dtype.kind not in "biuf" or ts.dtype.kind not in "biuf":
            raise DataError(f"{path}: expected numeric arrays, found '{kx}' {xs.dtype} and '{kt}' {ts.dtype}")
    num_classes = None
    if t.ndim == 1 and t.dtype.kind in "iub":
        num_classes = int(max(t.max(initial=0), t_test.max(initial=0))) + 1
    return x, t, x_test, t_test, num_classes


def _read_npz(path, names):
    """{name: array} for ``names`` from an .npz, refusing pickled objects, special files and bad sizes."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such .npz file; expected a file with arrays {', '.join(names)}")
    return load_npz(path, names, what=".npz data file", error=DataError, hint=" (set 'keys' to rename)")


def _load_function(spec, seed):
    rng = np.random.default_rng(spec.seed if spec.seed is not None else seed)
    x_train = rng.uniform(spec.low, spec.high, size=(spec.n_train, 1))
    x_test = rng.uniform(spec.low, spec.high, size=(spec.n_test, 1))
    t_train = np.polyval(spec.coefficients, x_train)
    if spec.noise:
        t_train = t_train + rng.normal(0.0, spec.noise, size=t_train.shape)
    t_test = np.polyval(spec.coefficients, x_test)
    return x_train, t_train, x_test, t_test, None


# --------------------------------------------------------------- load_data

def load_data(spec, *, seed=0, dtype="float32", base_dir=None):
    """Load the dataset a ``DataSpec`` describes.

    ``seed`` seeds synthetic sources (``function``) that do not set their own;
    the split of every real dataset is fixed. ``dtype`` is the float dtype of
    x (and of one-hot or regression targets); labels stay int64. ``base_dir``
    resolves relative paths (``npz.path``, ``dir``), normally the spec file's folder.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise DataError(f"dtype must be a float type such as float32, found {dtype}")
    if isinstance(spec, dict):
        spec = data_spec_adapter().validate_python(spec)

    if isinstance(spec, Mnist5kData):
        raw, name = _load_mnist5k(spec), "mnist-5k"
    elif isinstance(spec, (MnistData, FashionMnistData)):
        name = spec.source
        raw = _load_idx_dataset(spec, name, base_dir)
    elif isinstance(spec, DigitsData):
        raw, name = _load_digits(spec), "digits"
    elif isinstance(spec, InlineData):
        raw, name = _load_inline(spec), "inline"
    elif isinstance(spec, NpzData):
        raw, name = _load_npz(spec, base_dir), f"npz:{Path(spec.path).name}"
    elif isinstance(spec, FunctionData):
        raw, name = _load_function(spec, seed), "function"
    else:
        raise DataError(f"unknown data spec {type(spec).__name__}; expected one of the DataSpec sources")

    x_train, t_train, x_test, t_test, num_classes = raw
    limit_train = getattr(spec, "limit_train", None)
    limit_test = getattr(spec, "limit_test", None)
    if limit_train:
        x_train, t_train = x_train[:limit_train], t_train[:limit_train]
    if limit_test:
        x_test, t_test = x_test[:limit_test], t_test[:limit_test]

    normalize = getattr(spec, "normalize", False)
    if isinstance(spec, NpzData) and normalize is None:
        normalize = x_train.dtype == np.uint8
    pixel_max = 16.0 if isinstance(spec, DigitsData) else 255.0  # digits' pixels run 0..16
    x_train, x_test = (_prepare_x(x, normalize and pixel_max, dtype) for x in (x_train, x_test))
    if getattr(spec, "flatten", None):
        x_train, x_test = (x.reshape(len(x), -1) for x in (x_train, x_test))

    one_hot = getattr(spec, "one_hot", False)
    t_train, t_test = (_prepare_t(t, num_classes, one_hot, dtype, name) for t in (t_train, t_test))
    return Dataset(x_train, t_train, x_test, t_test, num_classes, name)


def _prepare_x(x, pixel_max, dtype):
    """x as a fresh float array (callers may modify it), divided by ``pixel_max`` unless it is falsy."""
    out = np.asarray(x).astype(dtype)
    if pixel_max:
        out /= dtype.type(pixel_max)
    return out


def _prepare_t(t, num_classes, one_hot, dtype, name):
    t = np.asarray(t)
    if num_classes is not None and t.ndim == 1:
        labels = t.astype(np.int64)
        if one_hot:
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise DataError(f"{name}: expected labels in 0..{num_classes - 1} for one_hot, "
                                f"found {labels.min()}..{labels.max()}")
            return np.eye(num_classes, dtype=dtype)[labels]
        return labels
    if one_hot:
        raise DataError(f"{name}: one_hot needs integer class labels, found targets of shape {t.shape} "
                        f"and dtype {t.dtype}")
    return t.astype(dtype)
