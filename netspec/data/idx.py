"""Reader and writer for the IDX format of the MNIST files.

An IDX file is a 4-byte magic number ``0 0 dtype ndim``, then ``ndim``
big-endian uint32 sizes, then the array in C order, big-endian. Every check
below turns a malformed file into a ``DataError`` naming what was wrong, since
these files come from downloads and hand copies.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np

from netspec.errors import DataError

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


def decompress(data, source="data"):
    """The bytes inside a gzip stream; DataError if it is truncated or corrupt."""
    try:
        return gzip.decompress(data)
    except EOFError:
        raise DataError(f"{source}: the gzip stream is truncated (ended before its end marker); "
                        "the file is incomplete: delete it and download it again") from None
    except (OSError, zlib.error) as err:
        raise DataError(f"{source}: the gzip stream is corrupt ({err}); delete it and download it again") from None


def parse_idx(data, source="data"):
    """Array from the bytes of an IDX file (raw, not gzip); DataError on any mismatch."""
    data = bytes(data)
    if len(data) < 4:
        raise DataError(f"{source}: expected an IDX file of at least 4 bytes, found {len(data)} bytes")
    if data[0] != 0 or data[1] != 0:
        hint = " (it looks gzip-compressed: give it a .gz name)" if data[:2] == GZIP_MAGIC else ""
        raise DataError(f"{source}: not an IDX file: expected the magic number to start with two zero bytes, "
                        f"found {data[:4].hex()}{hint}")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{source}: unknown IDX type code 0x{code:02X}; expected one of {known}")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header: {ndim} dimensions need {header} bytes, "
                        f"found {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{source}: IDX file {what}: shape {dims} of {dtype.name} needs {expected} bytes, "
                        f"found {len(data)} bytes; delete it and download it again")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path):
    """Array from an IDX file on disk, gzip-compressed (by content, not name) or raw."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror})") from None
    if data[:2] == GZIP_MAGIC:
        data = decompress(data, source=str(path))
    elif path.suffix == ".gz":
        raise DataError(f"{path}: expected a gzip file (name ends in .gz), found no gzip header; "
                        "the file is corrupt: delete it and download it again")
    return parse_idx(data, source=str(path))


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
