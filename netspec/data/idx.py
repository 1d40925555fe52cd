"""Reader and writer for the IDX format of the MNIST files.

An IDX file is a 4-byte magic number ``0 0 dtype ndim``, then ``ndim``
big-endian uint32 sizes, then the array in C order, big-endian. Every check
below turns a malformed file into a ``DataError`` naming what was wrong, since
these files come from downloads and hand copies. Sizes are computed with
Python ints from the header and checked against the file (or, for gzip, the
inflated stream is cut off at the declared end) before anything is allocated.
"""

import gzip
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from netspec.errors import DataError
from netspec.safeio import DEFLATE_MAX_RATIO, open_regular, read_into

# IDX type code -> numpy dtype (big-endian where it matters)
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt.newbyteorder(">") if dt.itemsize > 1 else dt: code for code, dt in IDX_DTYPES.items()}

GZIP_MAGIC = b"\x1f\x8b"
# The largest IDX payload read by default: about 45x Fashion-MNIST's training images.
MAX_IDX_BYTES = 2 * 2**30


def _header(read, source):
    """(dtype, dims, header bytes) from ``read(n)``, the start of an IDX stream; DataError if malformed."""
    head = read(4)
    if len(head) < 4:
        raise DataError(f"{source}: expected an IDX file of at least 4 bytes, found {len(head)} bytes")
    if head[0] != 0 or head[1] != 0:
        hint = " (it looks gzip-compressed: give it a .gz name)" if head[:2] == GZIP_MAGIC else ""
        raise DataError(f"{source}: not an IDX file: expected the magic number to start with two zero bytes, "
                        f"found {head.hex()}{hint}")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{source}: unknown IDX type code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions; expected at least 1")
    sizes = read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(f"{source}: truncated IDX header: {ndim} dimensions need {4 + 4 * ndim} bytes, "
                        f"found {4 + len(sizes)} bytes")
    dims = struct.unpack(f">{ndim}I", sizes)
    return IDX_DTYPES[code], dims, head + sizes


def _size_error(source, dims, dtype, expected, found):
    what = "truncated" if found < expected else "has trailing bytes"
    return DataError(f"{source}: IDX file {what}: shape {dims} of {dtype.name} needs {expected} bytes, "
                     f"found {found} bytes; delete it and download it again")


def _check_limit(source, dims, dtype, payload, max_bytes, file_size):
    if payload > max_bytes:
        raise DataError(f"{source}: IDX header declares shape {dims} of {dtype.name} = {payload} bytes, more "
                        f"than the limit of {max_bytes} bytes (the file has {file_size} bytes); "
                        "the header is corrupt (or pass a larger max_bytes)")


def _array(payload, dtype, dims):
    """The native-endian array of ``payload`` (a bytearray the array may keep)."""
    array = np.frombuffer(payload, dtype=dtype).reshape(dims)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def parse_idx(data, source="data"):
    """Array from the bytes of an IDX file (raw, not gzip); DataError on any mismatch."""
    data = bytes(data)
    dtype, dims, head = _header(io.BytesIO(data).read, source)
    # Python ints: a header of 2**32-1 sized dimensions must not wrap around to a small number
    expected = len(head) + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise _size_error(source, dims, dtype, expected, len(data))
    return _array(bytearray(data[len(head):]), dtype, dims)


def _fill(stream, payload, source, dims, dtype, header):
    """Read exactly ``len(payload)`` bytes into ``payload``; DataError if the stream ends first."""
    done = read_into(stream, payload)
    if done < len(payload):
        raise _size_error(source, dims, dtype, header + len(payload), header + done)


def _inflate_idx(stream, compressed_size, source, max_bytes):
    """(dtype, dims, header, payload) from a gzip stream, inflating no more than the header declares.

    Design: gzip.GzipFile decompresses in bounded slices as it is read, so reading
    the header, then exactly the declared payload, then one more byte costs at
    most the declared size however much the stream would expand (a bomb is
    caught after one byte past the declared end, in microseconds).
    """
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as gz:
            dtype, dims, head = _header(gz.read, source)
            size = math.prod(dims) * dtype.itemsize
            _check_limit(source, dims, dtype, size, max_bytes, compressed_size)
            if size > DEFLATE_MAX_RATIO * compressed_size:
                raise DataError(f"{source}: IDX header declares shape {dims} of {dtype.name} = {size} bytes, "
                                f"but {compressed_size} bytes of gzip can inflate to at most "
                                f"{DEFLATE_MAX_RATIO * compressed_size}; the file is corrupt")
            payload = bytearray(size)
            _fill(gz, payload, source, dims, dtype, len(head))
            if gz.read(1):
                raise DataError(f"{source}: the gzip stream inflates to more than the {len(head) + size} bytes "
                                f"its IDX header declares (shape {dims} of {dtype.name}); the file is corrupt "
                                "or a decompression bomb: delete it and download it again")
    except EOFError:
        raise DataError(f"{source}: the gzip stream is truncated (ended before its end marker); "
                        "the file is incomplete: delete it and download it again") from None
    except (OSError, zlib.error) as err:
        raise DataError(f"{source}: the gzip stream is corrupt ({err}); delete it and download it again") from None
    return dtype, dims, head, payload


def decompress(data, source="data", max_bytes=MAX_IDX_BYTES):
    """The IDX file inside a gzip stream (``data``: its bytes), inflated no further than its header declares.

    DataError if the stream is truncated, corrupt, or inflates to more or less
    than the IDX header says.
    """
    _, _, head, payload = _inflate_idx(io.BytesIO(data), len(data), source, max_bytes)
    return bytes(head) + bytes(payload)


def _read_raw_idx(stream, file_size, source, max_bytes):
    dtype, dims, head = _header(stream.read, source)
    size = math.prod(dims) * dtype.itemsize
    _check_limit(source, dims, dtype, size, max_bytes, file_size)
    if len(head) + size != file_size:  # checked against the file's size before allocating
        raise _size_error(source, dims, dtype, len(head) + size, file_size)
    payload = bytearray(size)
    _fill(stream, payload, source, dims, dtype, len(head))
    return dtype, dims, payload


def read_idx(path, max_bytes=MAX_IDX_BYTES):
    """Array from an IDX file on disk, gzip-compressed (by content, not name) or raw.

    Only regular files are read (a FIFO or /dev/zero is refused by its type), and
    no more than the header declares, which must fit the file and ``max_bytes``.
    """
    path = Path(path)
    stream, st = open_regular(path, "IDX file", error=DataError)
    with stream:
        try:
            magic = stream.read(2)
            stream.seek(0)
            if magic == GZIP_MAGIC:
                dtype, dims, _, payload = _inflate_idx(stream, st.st_size, str(path), max_bytes)
            elif path.suffix == ".gz":
                raise DataError(f"{path}: expected a gzip file (name ends in .gz), found no gzip header; "
                                "the file is corrupt: delete it and download it again")
            else:
                dtype, dims, payload = _read_raw_idx(stream, st.st_size, str(path), max_bytes)
        except OSError as err:
            raise DataError(f"{path}: cannot read the file ({err.strerror or err})") from None
    return _array(payload, dtype, dims)


def idx_bytes(array):
    """The IDX encoding of ``array`` (uint8, int8, int16, int32, float32 or float64)."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in _CODE_OF:
        raise DataError(f"cannot write {array.dtype} as IDX; expected one of "
                        f"{', '.join(dt.name for dt in IDX_DTYPES.values())}")
    if array.ndim == 0 or array.ndim > 255:
        raise DataError(f"cannot write a {array.ndim}-dimensional array as IDX; expected 1 to 255 dimensions")
    head = bytes([0, 0, _CODE_OF[dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return head + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_idx(path, array, compress=None):
    """Write ``array`` as IDX to ``path``; gzip-compressed when the name ends in .gz (or ``compress``)."""
    path = Path(path)
    data = idx_bytes(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
