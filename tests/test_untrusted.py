"""Hostile and broken files: bombs, lying headers, special files, pickles and interrupted saves.

Each test reproduces a failure a user met (a 2.9 MB gzip that inflated to 3 GB,
a header whose size overflowed int64, a FIFO that hung the loader, ...) and
checks that netspec now stops early with one clear DataError/CheckpointError.
Property tests then feed random damage to valid files: the only outcomes
allowed are success and netspec's own error.
"""
import ast
import gzip
import io
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netspec
from netspec.atomic import remove_stale_temporaries
from netspec.checkpoint import read_checkpoint, save_checkpoint
from netspec.data import load_data
from netspec.data.idx import decompress, idx_bytes, parse_idx, read_idx
from netspec.errors import CheckpointError, DataError
from netspec.safeio import (check_regular_file, load_npy, load_npz, open_regular, parse_json_input,
                            read_input_file)

IMAGES_HEADER = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 10, 28, 28)  # 10 images of 28x28 uint8
IMAGES_SIZE = len(IMAGES_HEADER) + 10 * 28 * 28
# NETSPEC_FUZZ_EXAMPLES=5000 for a longer hunt; 60 keeps the file fast.
FUZZ = settings(max_examples=int(os.environ.get("NETSPEC_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ helpers

def gzip_bomb(gib, members=False):
    """A gzip file of the 10-image header followed by ``gib`` GiB of zeros, built in milliseconds.

    One stream: after a full flush deflate forgets its history, so the block
    coding 1 MiB of zeros is the same every time and can be repeated (the CRC
    is left 0: a reader stops long before the trailer). ``members``: the same
    as valid concatenated gzip members instead, each 1 MiB of zeros.
    """
    mib = bytes(2**20)
    count = gib * 1024
    if members:
        return gzip.compress(IMAGES_HEADER, mtime=0) + gzip.compress(mib, mtime=0) * count
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(IMAGES_HEADER) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = deflate.flush(zlib.Z_FINISH)
    head = b"\x1f\x8b\x08\x00" + bytes(4) + b"\x00\xff"
    size = (len(IMAGES_HEADER) + count * 2**20) % 2**32
    return head + first + block * count + last + struct.pack("<II", 0, size)


def npy_bytes(array=None, header=None, data=None):
    """The .npy encoding of ``array``, or a hand-written header dict with ``data`` after it."""
    out = io.BytesIO()
    if header is None:
        np.save(out, array, allow_pickle=False)
        return out.getvalue()
    np.lib.format.write_array_header_1_0(out, header)  # magic, length and the padded dict
    return out.getvalue() + data


def zip_bytes(entries):
    """A zip archive built by hand: [(name, stored bytes, method, crc, declared size)], so tests can lie."""
    body, central = b"", b""
    for name, data, method, crc, size in entries:
        name = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data),
                               size, len(name), 0, 0, 0, 0, 0, len(body)) + name
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
                            len(name), 0) + name + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), 0)
    return body + central + end


def deflated(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def finishes(fn, seconds=10):
    """Run ``fn`` in a daemon thread; return its exception, failing the test if it is still running (a hang)."""
    box = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: B902 - reported to the test
            box["exc"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call hung"
    return box.get("exc")


def tiny_model():
    return netspec.compile({"name": "tiny", "input": {"shape": [3]},
                            "layers": [{"type": "dense", "units": 2}], "loss": "mse", "seed": 0})


def checkpoint_like(path, compressed=False, **arrays):
    """A file read_checkpoint accepts, without compiling a model."""
    meta = np.array(json.dumps({"format": "netspec-checkpoint", "format_version": 1}))
    (np.savez_compressed if compressed else np.savez)(path, meta=meta, **arrays)
    return path


# ---------------------------------------------------------- 1. gzip bombs

@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    paths = {}
    for kind in ("stream", "members"):
        paths[kind] = folder / f"{kind}-images-idx3-ubyte.gz"
        paths[kind].write_bytes(gzip_bomb(3, members=kind == "members"))
    return paths


@pytest.mark.parametrize("kind", ["stream", "members"])
def test_gzip_bomb_is_refused_after_the_declared_size(bombs, kind):
    assert bombs[kind].stat().st_size < 3.5e6  # ~3 MB on disk, 3 GiB inflated
    start = time.process_time()  # CPU time: other processes on the host do not count
    with pytest.raises(DataError, match=rf"inflates to more than the {IMAGES_SIZE} bytes its IDX header "
                                        r"declares \(shape \(10, 28, 28\) of uint8\).*decompression bomb"):
        read_idx(bombs[kind])
    assert time.process_time() - start < 0.5


def test_gzip_bomb_in_a_download_is_refused_without_inflating(bombs):
    data = bombs["stream"].read_bytes()  # fetch verifies downloads with decompress(); same bound
    start = time.process_time()  # CPU time: other processes on the host do not count
    with pytest.raises(DataError, match="decompression bomb"):
        decompress(data, source="mirror/train-images-idx3-ubyte.gz")
    assert time.process_time() - start < 0.5


def test_gzip_bomb_under_a_memory_limit_gives_a_clean_error(bombs):
    # 1 GiB of address space: a reader that inflates the 3 GiB would die with MemoryError.
    child = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
        from netspec.data.idx import read_idx
        from netspec.errors import NetspecError
        try:
            read_idx({str(bombs["stream"])!r})
        except NetspecError as err:
            print(type(err).__name__ + ": " + str(err), file=sys.stderr)
            try:
                bytearray(2**30)  # proves the limit was in force
            except MemoryError:
                sys.exit(2)
            sys.exit(3)
        sys.exit(0)
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NETSPEC_PUREPYTHON="1",
               PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("DataError: ") and "decompression bomb" in proc.stderr
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr


def test_gzip_header_declaring_more_than_deflate_can_hold(tmp_path):
    path = tmp_path / "big.gz"  # 2**30 bytes declared by a ~50-byte file: refused before allocating
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 2]) + struct.pack(">2I", 2**15, 2**15), mtime=0))
    with pytest.raises(DataError, match=r"declares shape \(32768, 32768\) of uint8 = 1073741824 bytes, "
                                        r"but \d+ bytes of gzip can inflate to at most \d+"):
        read_idx(path)


def test_gzip_stream_shorter_than_its_header_says(tmp_path):
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(IMAGES_HEADER + bytes(100), mtime=0))
    with pytest.raises(DataError, match=rf"truncated: shape \(10, 28, 28\) of uint8 needs {IMAGES_SIZE} bytes, "
                                        r"found 116 bytes"):
        read_idx(path)


# ------------------------------------------------- 2. overflowing headers

MAX = 2**32 - 1


@pytest.mark.parametrize("dims, code", [
    ((MAX, MAX, MAX), 0x08),
    ((65536, 65536, 65536, 65536), 0x08),  # 2**64: int64 arithmetic wrapped this to 0 and accepted the file
    ((MAX, MAX), 0x0E),
])
def test_idx_size_overflow_is_reported_with_shape_and_file_size(tmp_path, dims, code):
    data = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    needed = len(data) + math.prod(dims) * (8 if code == 0x0E else 1)
    with pytest.raises(DataError, match=rf"truncated: shape \({', '.join(map(str, dims))}\) of \w+ needs "
                                        rf"{needed} bytes, found {len(data)} bytes"):
        parse_idx(data, source="f")
    path = tmp_path / "huge-idx"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        read_idx(path)
    message = str(err.value)
    assert f"shape {dims}" in message and f"the file has {len(data)} bytes" in message
    assert "negative" not in message


def test_idx_raw_file_is_checked_against_its_size_before_reading(tmp_path):
    path = tmp_path / "lie-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10**9) + bytes(5))
    with pytest.raises(DataError, match=r"truncated: shape \(1000000000,\) of uint8 needs 1000000008 bytes, "
                                        r"found 13 bytes"):
        read_idx(path)


# -------------------------------------- 3. .npy / .npz claiming terabytes

TERA = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}  # 8 TB of float64


def test_npy_claiming_terabytes(tmp_path):
    path = tmp_path / "tera.npy"
    path.write_bytes(npy_bytes(header=TERA, data=bytes(16)))
    with pytest.raises(DataError, match=r"tera.npy: truncated: its header declares shape \(1000000000000,\) of "
                                        r"float64 = 8000000000000 bytes of data, but only 16 bytes follow"):
        load_npy(path)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_member_claiming_terabytes(tmp_path, method):
    member = npy_bytes(header=TERA, data=bytes(16))
    stored = member if method == zipfile.ZIP_STORED else deflated(member)
    path = tmp_path / "tera.npz"
    path.write_bytes(zip_bytes([("x_train.npy", stored, method, zlib.crc32(member), len(member))]))
    with pytest.raises(DataError, match=r"entry 'x_train': truncated: its header declares shape "
                                        r"\(1000000000000,\) of float64 = 8000000000000 bytes"):
        load_npz(path)
    with pytest.raises(CheckpointError, match="8000000000000 bytes"):
        read_checkpoint(path)


def test_npz_zip_entry_declaring_more_than_it_can_hold(tmp_path):
    member = npy_bytes(np.zeros(4))
    path = tmp_path / "zipsize.npz"
    for method, stored in ((zipfile.ZIP_STORED, member), (zipfile.ZIP_DEFLATED, deflated(member))):
        path.write_bytes(zip_bytes([("a.npy", stored, method, zlib.crc32(member), 2**32 - 2)]))
        with pytest.raises(CheckpointError, match=r"declares 4294967294 bytes uncompressed, but its \d+ stored "
                                                  r"bytes can hold at most \d+"):
            read_checkpoint(path)


def test_npz_total_size_limit(tmp_path):
    np.savez_compressed(tmp_path / "zeros.npz", a=np.zeros(1000), b=np.zeros(1000))
    with pytest.raises(DataError, match=r"entries declare 16\d\d\d bytes uncompressed, more than the limit "
                                        r"of 10000 bytes"):
        load_npz(tmp_path / "zeros.npz", max_bytes=10000)
    assert load_npz(tmp_path / "zeros.npz", ["a"], max_bytes=10000)["a"].shape == (1000,)


def test_npz_compressed_member_is_inflated_no_further_than_declared(tmp_path):
    # a 10-float member that inflates to 1 GiB: zipfile stops at the declared size, the CRC then fails
    member = npy_bytes(np.zeros(10))
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(member) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(bytes(2**20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    stored = first + block * 1024 + deflate.flush()
    path = tmp_path / "bomb.npz"
    path.write_bytes(zip_bytes([("x.npy", stored, zipfile.ZIP_DEFLATED, zlib.crc32(member) ^ 1, len(member))]))
    start = time.process_time()  # CPU time: other processes on the host do not count
    with pytest.raises(DataError, match=r"entry 'x': corrupt or truncated .npz file \(BadZipFile: Bad CRC-32"):
        load_npz(path)
    assert time.process_time() - start < 0.5


def test_npz_entries_are_checked_for_overlap_and_duplicates(tmp_path):
    member = npy_bytes(np.arange(3))
    path = tmp_path / "dup.npz"
    path.write_bytes(zip_bytes([("a.npy", member, 0, zlib.crc32(member), len(member))] * 2))
    with pytest.raises(DataError, match="two entries named 'a.npy'"):
        load_npz(path)


def test_valid_npz_and_npy_round_trip(tmp_path):
    arrays = {"a": np.arange(12.0).reshape(3, 4), "b": np.asfortranarray(np.ones((2, 5), np.int16)),
              "s": np.array("text"), "e": np.zeros((0, 3), np.float32), "big": np.arange(6, dtype=">i4")}
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "ok.npz", **arrays)
        back = load_npz(tmp_path / "ok.npz")
        assert set(back) == set(arrays)
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
        assert load_npz(tmp_path / "ok.npz", ["b"])["b"].flags.f_contiguous
    np.save(tmp_path / "ok.npy", arrays["b"])
    assert np.array_equal(load_npy(tmp_path / "ok.npy"), arrays["b"])


# -------------------------------------------------- 4. misleading messages

def test_random_bytes_checkpoint_is_called_not_a_zip(tmp_path):
    path = tmp_path / "random.npz"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "not a readable checkpoint: it is not a zip archive (.npz)" in message and "500 bytes" in message
    assert "pickle" not in message
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="found an empty file"):
        read_checkpoint(path)


def test_truncated_npy_says_truncated_not_pickle(tmp_path):
    data = npy_bytes(np.arange(100.0))
    path = tmp_path / "cut.npy"
    path.write_bytes(data[:-400])
    with pytest.raises(DataError) as err:
        load_npy(path)
    assert str(err.value) == (f"{path}: truncated: its header declares shape (100,) of float64 = 800 bytes of "
                              "data, but only 400 bytes follow the header")
    path.write_bytes(data[:20])
    with pytest.raises(DataError, match="truncated .npy header"):
        load_npy(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(DataError, match="1 unexpected bytes after the array"):
        load_npy(path)


def test_pickle_is_named_only_when_the_header_says_object(tmp_path):
    path = tmp_path / "obj.npy"
    objects = np.empty(2, dtype=object)
    np.save(path, objects, allow_pickle=True)
    with pytest.raises(DataError, match=r"declares dtype object, so it holds pickled Python objects"):
        load_npy(path)
    path.write_bytes(b"\x80\x04\x95" + bytes(40))  # a bare pickle, what np.load would have unpickled
    with pytest.raises(DataError, match=r"not a .npy array: expected the magic bytes") as err:
        load_npy(path)
    assert "pickle" not in str(err.value).replace(str(path), "")


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(DataError, match=r"mnist: dir .*data is a regular file, not a directory"):
        load_data({"source": "mnist", "dir": str(tmp_path / "data")})


@pytest.mark.parametrize("array, reason", [
    (np.zeros((0, 4)), r"empty \(shape \(0, 4\)\)"),
    (np.float64(3.0), r"single number \(0-d array\)"),
    (np.zeros((2, 0)), r"empty \(shape \(2, 0\)\)"),
])
def test_empty_npy_input(tmp_path, array, reason):
    np.save(tmp_path / "in.npy", array)
    with pytest.raises(DataError, match=reason):
        read_input_file(tmp_path / "in.npy")


def test_npz_data_without_samples(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((0, 1, 2, 2)), t_train=np.zeros(0, int),
             x_test=np.zeros((1, 1, 2, 2)), t_test=np.zeros(1, int))
    with pytest.raises(DataError, match=r"'x_train' is empty \(shape \(0, 1, 2, 2\)\): it has no samples"):
        load_data({"source": "npz", "path": str(tmp_path / "d.npz")})
    np.savez(tmp_path / "d.npz", x_train=np.zeros((1, 2)), t_train=np.int64(0),
             x_test=np.zeros((1, 2)), t_test=np.zeros(1, int))
    with pytest.raises(DataError, match=r"'t_train' is a single value \(a 0-d array\)"):
        load_data({"source": "npz", "path": str(tmp_path / "d.npz")})


def test_idx_dataset_without_images(tmp_path):
    from netspec.data.idx import write_idx
    for stem, n in (("train-images-idx3-ubyte", 0), ("t10k-images-idx3-ubyte", 2)):
        write_idx(tmp_path / (stem + ".gz"), np.zeros((n, 28, 28), np.uint8))
    for stem, n in (("train-labels-idx1-ubyte", 0), ("t10k-labels-idx1-ubyte", 2)):
        write_idx(tmp_path / (stem + ".gz"), np.zeros(n, np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: the file holds no images"):
        load_data({"source": "mnist", "dir": str(tmp_path)})


# ----------------------------------------------------- 5. regular files only

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "MODEL.npz"
    os.mkfifo(path)
    return path


def test_fifo_checkpoint_is_refused_without_hanging(fifo):
    exc = finishes(lambda: netspec.load(fifo))
    assert isinstance(exc, CheckpointError) and str(exc) == (
        f"{fifo}: expected a checkpoint (a regular file), found a FIFO (named pipe)")


@pytest.mark.parametrize("reader", [
    lambda p: read_idx(p),
    lambda p: load_npz(p),
    lambda p: load_npy(p),
    lambda p: read_input_file(p),
    lambda p: load_data({"source": "npz", "path": str(p)}),
])
def test_fifo_data_is_refused_without_hanging(fifo, reader):
    exc = finishes(lambda: reader(fifo))
    assert isinstance(exc, DataError) and "found a FIFO (named pipe)" in str(exc) and str(fifo) in str(exc)


@pytest.mark.parametrize("reader, error", [
    (read_idx, DataError), (load_npy, DataError), (read_input_file, DataError), (read_checkpoint, CheckpointError),
])
def test_devices_are_refused(tmp_path, reader, error):
    link = tmp_path / "zero.npy"
    link.symlink_to("/dev/zero")
    for path in ("/dev/zero", link):
        exc = finishes(lambda: reader(path))
        assert isinstance(exc, error) and f"{path}: expected" in str(exc)
        assert "found a character device" in str(exc)


def test_directories_and_sockets_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="expected a checkpoint \\(a regular file\\), found a directory"):
        read_checkpoint(tmp_path)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s"))
        with pytest.raises(DataError, match="found a socket"):
            check_regular_file(tmp_path / "s", "IDX file")
    with pytest.raises(DataError, match="no such IDX file"):
        check_regular_file(tmp_path / "missing", "IDX file")
    (tmp_path / "f").write_bytes(b"12345")
    with pytest.raises(DataError, match="is 5 bytes, more than the limit of 4 bytes"):
        check_regular_file(tmp_path / "f", "input", max_bytes=4)
    stream, st = open_regular(tmp_path / "f", "input")
    with stream:
        assert stream.read() == b"12345" and st.st_size == 5


def test_read_input_file_json(tmp_path):
    path = tmp_path / "in.json"

    def read(text, **kw):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return read_input_file(path, **kw)
    np.testing.assert_array_equal(read("[[1, 2.5], [3, -4e2]]"), [[1, 2.5], [3, -400]])
    assert read("[1, 2]").dtype == np.float64
    with pytest.raises(DataError, match="expected UTF-8 JSON text, found byte 0xff at offset 1"):
        read(b"[\xff]")
    with pytest.raises(DataError, match=r"input\[0\]\[1\]: expected a number, found a string \('2'\); write numbers"):
        read('[[1, "2"]]')
    for bad in ("[true]", "[null]", '[{"a": 1}]'):
        with pytest.raises(DataError, match="expected a number, found"):
            read(bad)
    for bad in ("[NaN]", "[1, Infinity]", "[-Infinity]", "[1e999]"):
        with pytest.raises(DataError, match="expected finite numbers"):
            read(bad)
    assert np.isnan(read("[NaN, 1]", allow_nonfinite=True)[0])
    with pytest.raises(DataError, match="rectangular"):
        read("[[1, 2], [3]]")
    with pytest.raises(DataError, match="empty"):
        read("[]")
    with pytest.raises(DataError, match="single number"):
        read("3")
    with pytest.raises(DataError, match="invalid JSON"):
        read("[1, 2")
    with pytest.raises(DataError, match="too large for float64"):
        read("[" + "9" * 400 + "]")
    with pytest.raises(DataError, match="nested"):
        read("[" * 100000 + "]" * 100000)
    with pytest.raises(DataError, match="more than the limit of 10 bytes"):
        read("[1, 2, 3, 4, 5]", max_bytes=10)
    with pytest.raises(DataError, match="invalid JSON"):
        parse_json_input("{", "INPUT")


def test_read_input_file_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
    out = read_input_file(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    np.save(path, np.array(["a", "b"]))
    with pytest.raises(DataError, match="expected a numeric array, found dtype <U1"):
        read_input_file(path)
    np.save(path, np.array([1.0, np.inf]))
    with pytest.raises(DataError, match=r"expected finite numbers, found inf at index \(1,\)"):
        read_input_file(path)
    np.save(path, np.zeros(1000))
    with pytest.raises(DataError, match="more than the limit of 100 bytes"):
        read_input_file(path, max_bytes=100)


# --------------------------------------------------- 6. stale temporaries

def test_remove_stale_temporaries_only_touches_its_own(tmp_path):
    own = [tmp_path / ".model-abc_1234.npz.tmp", tmp_path / ".model-zz9.npz.tmp", tmp_path / ".netspec-k1ll3d_x.tmp"]
    for p in own:
        p.write_bytes(b"partial")
    keep = [tmp_path / "model.npz", tmp_path / "model-abc.npz.tmp", tmp_path / ".model-abc.npz",
            tmp_path / ".model-a.b.npz.tmp", tmp_path / "notes.tmp", tmp_path / ".model-UPPER.npz.tmp",
            tmp_path / ".netspec-abc.npz.tmp", tmp_path / ".netspec-.tmp"]
    for p in keep:
        p.write_bytes(b"keep")
    (tmp_path / ".model-dir00000.npz.tmp").mkdir()
    (tmp_path / ".model-link0000.npz.tmp").symlink_to(tmp_path / "model.npz")
    assert remove_stale_temporaries(tmp_path) == [str(p) for p in sorted(own)]
    assert all(p.exists() for p in keep) and not any(p.exists() for p in own)
    assert (tmp_path / ".model-dir00000.npz.tmp").is_dir() and (tmp_path / ".model-link0000.npz.tmp").is_symlink()
    assert remove_stale_temporaries(tmp_path) == []
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_kill_during_save_leaves_a_temporary_that_is_cleaned_up(tmp_path):
    # The child saves once, then is killed -9 while its second save sits between fsync and rename.
    child = textwrap.dedent(f"""
        import os, sys, time
        import numpy as np
        import netspec
        from netspec.checkpoint import save_checkpoint
        model = netspec.compile({{"name": "tiny", "input": {{"shape": [3]}},
                                 "layers": [{{"type": "dense", "units": 2}}], "loss": "mse", "seed": 0}})
        path = {str(tmp_path / "model.npz")!r}
        save_checkpoint(path, model)
        def stall(src, dst):
            print("saving", flush=True)
            time.sleep(60)
        os.replace = stall
        model.params["dense1.W"][...] = 7.0
        save_checkpoint(path, model)
    """)
    env = dict(os.environ, NETSPEC_PUREPYTHON="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "saving\n"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    temporaries = sorted(p.name for p in tmp_path.glob(".model-*.npz.tmp"))
    assert len(temporaries) == 1
    assert remove_stale_temporaries(tmp_path) == [str(tmp_path / temporaries[0])]
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    model = netspec.load(tmp_path / "model.npz")  # the first save, intact
    expected = tiny_model()
    np.testing.assert_array_equal(model.params["dense1.W"], expected.params["dense1.W"])
    assert not np.any(model.params["dense1.W"] == 7.0)


def test_save_checkpoint_still_round_trips(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "run" / "model.npz", model)
    meta, arrays = read_checkpoint(path)
    assert meta["format"] == "netspec-checkpoint" and set(arrays) == {"param/dense1.W", "param/dense1.b"}
    assert os.listdir(tmp_path / "run") == ["model.npz"]


# --------------------------------------------- property tests: random damage

@st.composite
def damage(draw, size):
    """(cut, flips): keep the first ``cut`` bytes, xor some positions with non-zero masks."""
    cut = draw(st.integers(0, size))
    flips = draw(st.lists(st.tuples(st.integers(0, max(size - 1, 0)), st.integers(1, 255)), max_size=4))
    return cut, flips


def apply(data, cut, flips):
    out = bytearray(data[:cut])
    for pos, mask in flips:
        if pos < len(out):
            out[pos] ^= mask
    return bytes(out)


GOOD_IDX = idx_bytes(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))


@FUZZ
@given(damage(len(GOOD_IDX)))
def test_damaged_raw_idx_gives_data_error_or_an_array(tmp_path, hurt):
    data = apply(GOOD_IDX, *hurt)
    path = tmp_path / "f-idx3-ubyte"
    path.write_bytes(data)
    for read in (lambda: parse_idx(data), lambda: read_idx(path)):
        try:
            out = read()
        except DataError:
            continue
        assert out.nbytes == len(data) - 4 - 4 * out.ndim


GOOD_GZ = gzip.compress(GOOD_IDX, mtime=0)


@FUZZ
@given(damage(len(GOOD_GZ)))
def test_damaged_gzip_idx_gives_data_error_or_an_array(tmp_path, hurt):
    data = apply(GOOD_GZ, *hurt)
    path = tmp_path / "f-idx3-ubyte.gz"
    path.write_bytes(data)
    for read in (lambda: read_idx(path), lambda: parse_idx(decompress(data))):
        try:
            read()
        except DataError:
            pass


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_are_never_anything_but_our_errors(tmp_path, data):
    for name, read, error in (("r-idx", read_idx, DataError), ("r.npy", load_npy, DataError),
                              ("r.npz", read_checkpoint, CheckpointError), ("r.json", read_input_file, DataError)):
        path = tmp_path / name
        path.write_bytes(data)
        try:
            read(path)
        except error:
            pass


def _checkpoint_bytes(tmp_path, compressed):
    path = checkpoint_like(tmp_path / f"good{compressed}.npz", compressed,
                           **{"param/W": np.arange(6.0).reshape(2, 3), "optim/t": np.array(3)})
    return path.read_bytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_damaged_checkpoints_give_checkpoint_error_or_load(tmp_path, compressed):
    good = _checkpoint_bytes(tmp_path, compressed)
    meta, arrays = read_checkpoint(tmp_path / f"good{compressed}.npz")
    assert meta["format_version"] == 1 and arrays["param/W"].shape == (2, 3)

    @FUZZ
    @given(damage(len(good)))
    def check(hurt):
        path = tmp_path / "bad.npz"
        path.write_bytes(apply(good, *hurt))
        try:
            read_checkpoint(path)
        except CheckpointError:
            pass
    check()


GOOD_NPY = npy_bytes(np.arange(10, dtype="<i4").reshape(2, 5))


@FUZZ
@given(damage(len(GOOD_NPY)))
def test_damaged_npy_gives_data_error_or_an_array(tmp_path, hurt):
    path = tmp_path / "x.npy"
    path.write_bytes(apply(GOOD_NPY, *hurt))
    try:
        out = read_input_file(path, allow_nonfinite=True)
    except DataError:
        return
    assert out.size >= 1


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=3), max_leaves=12))
def test_any_json_value_gives_an_array_or_data_error(value):
    try:
        out = parse_json_input(json.dumps(value), "INPUT")
    except DataError:
        return
    assert out.dtype == np.float64


DESCRS = ["<f8", ">i2", "|u1", "|b1", "<c16", "|O", "<U3", "|S0", "|V0", "<M8[s]", "[('a', '<f8')]",
          "('<f8', (1000000, 1000000))", "[('x', '|O')]"]


@FUZZ
@given(st.one_of(
    st.builds(lambda d, s, f: repr({"descr": d if not d.startswith(("[", "(")) else ast.literal_eval(d),
                                    "fortran_order": f, "shape": tuple(s)}),
              st.sampled_from(DESCRS), st.lists(st.integers(-2, 2**40), max_size=4), st.booleans()),
    st.text(alphabet="{}()[]'\":, 0123456789<>fiuOSUVb|_shapedcrtno", max_size=60)),
    st.integers(0, 64))
def test_lying_npy_headers_give_data_error_or_an_array(tmp_path, header, data_size):
    text = header.encode("latin1", "replace")
    path = tmp_path / "h.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + bytes(data_size))
    try:
        out = load_npy(path)
    except DataError:
        return
    assert out.nbytes == data_size


@FUZZ
@given(st.sampled_from([0, 8, 12, 99]), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.booleans(), st.integers(0, 3))
def test_lying_zip_entries_give_checkpoint_error_or_load(tmp_path, method, crc, size, honest_size, cut):
    member = npy_bytes(np.arange(5.0))
    stored = deflated(member) if method == 8 else member
    meta = npy_bytes(np.array(json.dumps({"format": "netspec-checkpoint"})))
    data = zip_bytes([("meta.npy", meta, 0, zlib.crc32(meta), len(meta)),
                      ("param/w.npy", stored[:len(stored) - cut], method, crc,
                       len(member) if honest_size else size)])
    path = tmp_path / "z.npz"
    path.write_bytes(data)
    try:
        read_checkpoint(path)
    except CheckpointError:
        pass
