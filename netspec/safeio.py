"""Reading files netspec did not write: checkpoints, data arrays and inputs from anywhere.

Every reader here refuses, with one ``NetspecError`` naming the file and saying
what was expected and what was found, anything that is not a plain array in a
regular file: FIFOs and devices (which hang or never end), pickled objects
(which run code), and headers whose declared size does not match the bytes
really there (which would make numpy allocate terabytes or read garbage).

Design: a file is checked with ``os.stat`` before it is opened, so a FIFO is
refused without blocking, then opened non-blocking and checked again with
``fstat`` in case it was swapped in between. ``.npy`` headers are parsed with
``numpy.lib.format``; the declared size (shape x itemsize, in Python ints so it
cannot overflow) must equal the bytes available (the file size, or a zip
member's uncompressed size, which zipfile also enforces while inflating) before
a single array byte is allocated. Callers choose the error type (``DataError``
for data, ``CheckpointError`` for checkpoints) and a word for the file.
"""
import json
import math
import os
import stat
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from netspec.errors import DataError

# Deflate cannot expand one byte into more than 1032 bytes (a 258-byte match
# costs at least two bits), so an entry claiming more was never written by zlib.
DEFLATE_MAX_RATIO = 1032
# Default cap on the arrays read from one .npz (checkpoint or data set): far above
# anything netspec trains on, far below what a small compressed file can claim.
MAX_NPZ_BYTES = 4 * 2**30
# dtype kinds a plain array may have: bool, ints, floats, complex, bytes, str.
PLAIN_KINDS = "biufcSU"
# Inputs to `netspec predict` are small; this caps what a mistaken path can cost.
MAX_INPUT_BYTES = 256 * 2**20
_CHUNK = 16 * 2**20  # read arrays in slices so a zip member never needs a second full-size buffer


# ------------------------------------------------------------ regular files

def file_kind(mode):
    """A word for the kind of file ``mode`` (an ``st_mode``) describes: 'FIFO (named pipe)', 'directory', ..."""
    kinds = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
    for test, word in kinds:
        if test(mode):
            return word
    return "special file"


def check_regular_file(path, what, max_bytes=None, error=DataError):
    """``os.stat`` of ``path`` if it is a regular file of at most ``max_bytes``; ``error`` otherwise.

    Uses stat, never open, so a FIFO or device is refused without blocking or
    reading. Symlinks are followed: a link to /dev/zero is a character device.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: expected a {what} (a regular file), found a {file_kind(st.st_mode)}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{path}: the {what} is {st.st_size} bytes, more than the limit of {max_bytes} bytes")
    return st


def open_regular(path, what, max_bytes=None, error=DataError):
    """``(binary file, stat)`` for a regular file, checked before and after opening.

    Opened with O_NONBLOCK so that a FIFO swapped in after the stat cannot hang
    the open; ``fstat`` then confirms the opened file is still a regular one.
    """
    check_regular_file(path, what, max_bytes, error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise error(f"{path}: cannot open the {what} ({err.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (max_bytes is not None and st.st_size > max_bytes):
        os.close(fd)
        raise error(f"{path}: expected a {what} (a regular file), found a {file_kind(st.st_mode)} "
                    f"of {st.st_size} bytes (it changed while being opened)")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st


# ------------------------------------------------------------- .npy arrays

class _Counter:
    """A read-only view of a stream that counts the bytes read (the header's length)."""

    def __init__(self, stream):
        self.stream, self.count = stream, 0

    def read(self, n=-1):
        data = self.stream.read(n)
        self.count += len(data)
        return data


def _read_npy_header(stream, source, error):
    """(shape, fortran_order, dtype, header bytes) from the start of a .npy stream."""
    counter = _Counter(stream)
    magic = counter.read(len(npy_format.MAGIC_PREFIX) + 2)
    if not magic:
        raise error(f"{source}: expected a .npy array, found an empty file")
    if not npy_format.MAGIC_PREFIX.startswith(magic[:6]):
        raise error(f"{source}: not a .npy array: expected the magic bytes {npy_format.MAGIC_PREFIX!r}, "
                    f"found {magic[:6]!r}")
    if len(magic) < 8:
        raise error(f"{source}: truncated .npy header: expected at least 8 bytes, found {len(magic)}")
    version = (magic[6], magic[7])
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        raise error(f"{source}: unsupported .npy format version {version[0]}.{version[1]}; "
                    "expected 1.0 or 2.0 (what numpy writes for plain arrays)")
    try:
        shape, fortran, dtype = readers[version](counter)
    except Exception as err:  # numpy raises ValueError, but a hostile header may trip literal_eval in other ways
        text = str(err).split("\n")[0]
        if text.startswith("EOF"):
            raise error(f"{source}: truncated .npy header ({text})") from None
        raise error(f"{source}: invalid .npy header ({type(err).__name__}: {text[:200]})") from None
    return shape, fortran, dtype, counter.count


def _check_dtype_and_shape(shape, dtype, source, error):
    if dtype.hasobject:
        raise error(f"{source}: refused: its header declares dtype {dtype}, so it holds pickled Python objects; "
                    "netspec never unpickles them (unpickling can run arbitrary code). "
                    "Save plain numeric arrays instead.")
    if dtype.kind not in PLAIN_KINDS or dtype.itemsize == 0:
        raise error(f"{source}: unsupported dtype {dtype}; expected a plain numeric or string array")
    if any(d < 0 for d in shape):
        raise error(f"{source}: invalid .npy header: negative size in shape {shape}")


def read_into(stream, buffer):
    """Fill ``buffer`` (bytes-like, writable) from ``stream`` in chunks; return how many bytes
    arrived (fewer than ``len(buffer)`` only if the stream ended first)."""
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        n = stream.readinto(view[done:done + _CHUNK])
        if not n:
            break
        done += n
    return done


def _read_exactly(stream, array, source, error, declared):
    """Fill ``array`` (C-contiguous) from ``stream``; ``error`` if the stream ends early."""
    done = read_into(stream, array.reshape(-1).view(np.uint8))
    if done < array.nbytes:
        raise error(f"{source}: truncated: its header declares {declared} bytes of data, found {done} bytes")


def read_npy_stream(stream, available, source, error=DataError, max_bytes=None):
    """An array from a .npy stream holding ``available`` bytes in all (header included).

    The declared size must equal what is available, and stay under
    ``max_bytes`` when given, before anything is allocated.
    """
    shape, fortran, dtype, header = _read_npy_header(stream, source, error)
    _check_dtype_and_shape(shape, dtype, source, error)
    declared = math.prod(shape) * dtype.itemsize  # Python ints: a hostile shape cannot overflow
    found = available - header
    what = f"shape {shape} of {dtype}"
    if declared > found:
        raise error(f"{source}: truncated: its header declares {what} = {declared} bytes of data, "
                    f"but only {found} bytes follow the header")
    if declared < found:
        raise error(f"{source}: {found - declared} unexpected bytes after the array: its header declares "
                    f"{what} = {declared} bytes of data, but {found} bytes follow the header")
    if max_bytes is not None and declared > max_bytes:
        raise error(f"{source}: {what} = {declared} bytes, more than the limit of {max_bytes} bytes")
    # Fortran order: the bytes are the transpose of a C array, as numpy.lib.format writes them.
    try:
        array = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    except (ValueError, MemoryError) as err:  # e.g. (0, 2**30, 2**30): no bytes, but too many elements
        raise error(f"{source}: cannot hold {what} ({err})") from None
    _read_exactly(stream, array, source, error, declared)
    return array.T if fortran else array


def load_npy(path, what=".npy file", error=DataError, max_bytes=None):
    """The array in a .npy file, refusing pickles, special files and sizes that do not match."""
    stream, st = open_regular(path, what, max_bytes, error)
    with stream:
        try:
            return read_npy_stream(stream, st.st_size, str(path), error, max_bytes)
        except OSError as err:
            raise error(f"{path}: cannot read the {what} ({err})") from None


# ------------------------------------------------------------- .npz archives

def _describe_start(stream, size):
    head = stream.read(8)
    return "an empty file" if not head else f"{size} bytes starting with {head!r}"


def _open_zip(stream, size, path, what, error):
    """A ZipFile over ``stream``, or ``error`` saying whether this is a zip at all."""
    try:
        return zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, NotImplementedError):
        pass
    stream.seek(0)
    head = stream.read(4)
    stream.seek(0)
    if head == b"PK\x03\x04":
        raise error(f"{path}: corrupt or truncated {what}: it starts like a zip archive (.npz) but its "
                    "central directory (at the end) is missing or damaged; expected a complete .npz file")
    raise error(f"{path}: not a readable {what}: it is not a zip archive (.npz); expected .npy arrays "
                f"zipped as numpy.savez writes them, found {_describe_start(stream, size)}")


def _members(archive, path, what, error):
    """{array name: ZipInfo}, each name once, without the .npy suffix (as np.load names them)."""
    members = {}
    for info in archive.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if name in members:
            raise error(f"{path}: corrupt {what}: it holds two entries named {info.filename!r}")
        members[name] = info
    return members


def _check_member(info, size, source, what, error):
    """``error`` unless a zip member's declared sizes are possible for an archive of ``size`` bytes."""
    if info.flag_bits & 0x1:
        raise error(f"{source}: the entry is encrypted; expected a plain {what}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise error(f"{source}: compression method {info.compress_type}; expected stored or deflated "
                    "(as numpy.savez and numpy.savez_compressed write)")
    if info.header_offset + info.compress_size > size:
        raise error(f"{source}: truncated {what}: the entry declares {info.compress_size} bytes at offset "
                    f"{info.header_offset}, but the file has only {size} bytes")
    limit = info.compress_size if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO * info.compress_size
    if info.file_size > limit:
        raise error(f"{source}: corrupt {what}: the entry declares {info.file_size} bytes uncompressed, but "
                    f"its {info.compress_size} stored bytes can hold at most {limit}")


def _read_member(archive, info, size, source, what, error):
    """The array in one zip member, with every size checked before allocating."""
    _check_member(info, size, source, what, error)
    try:
        with archive.open(info) as stream:  # zipfile stops inflating at file_size and checks the CRC
            return read_npy_stream(stream, info.file_size, source, error)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as err:
        raise error(f"{source}: corrupt or truncated {what} ({type(err).__name__}: {err})") from None


def load_npz(path, names=None, what=".npz file", error=DataError, max_bytes=MAX_NPZ_BYTES, hint=""):
    """{name: array} from a .npz file: all arrays, or exactly ``names`` (``error`` lists any missing).

    ``max_bytes`` caps the entries read, together (None: no cap); ``hint`` ends
    the message about missing names. Refuses pickled objects, special files,
    encrypted or oddly compressed entries, and sizes that do not add up.
    """
    stream, st = open_regular(path, what, None, error)
    with stream:
        archive = _open_zip(stream, st.st_size, path, what, error)
        with archive:
            members = _members(archive, path, what, error)
            wanted = list(members) if names is None else list(names)
            missing = [n for n in wanted if n not in members]
            if missing:
                raise error(f"{path}: expected arrays {', '.join(wanted)}; missing {', '.join(missing)}; "
                            f"the file holds {', '.join(members) or 'no arrays'}{hint}")
            total = sum(members[n].file_size for n in wanted)
            if max_bytes is not None and total > max_bytes:
                raise error(f"{path}: the {what}'s entries declare {total} bytes uncompressed, more than the "
                            f"limit of {max_bytes} bytes")
            return {n: _read_member(archive, members[n], st.st_size, f"{path}: entry {n!r}", what, error)
                    for n in wanted}


# ------------------------------------------------------------------ inputs

def read_input_file(path, max_bytes=MAX_INPUT_BYTES, allow_nonfinite=False):
    """Samples for ``netspec predict``: a numeric .npy array, or a .json file of nested number lists.

    Returns an array of at least one dimension with at least one sample; a
    ``DataError`` names the file and the problem otherwise. JSON numbers become
    float64; strings, booleans and nulls are refused. NaN and infinities are
    refused unless ``allow_nonfinite``.
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        array = load_npy(path, ".npy input", DataError, max_bytes)
        if array.dtype.kind not in "biuf":
            raise DataError(f"{path}: expected a numeric array, found dtype {array.dtype}")
    else:
        stream, _ = open_regular(path, "JSON input", max_bytes, DataError)
        with stream:
            data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise DataError(f"{path}: the JSON input is more than the limit of {max_bytes} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: expected UTF-8 JSON text, found byte 0x{data[err.start]:02x} at offset "
                            f"{err.start} that is not UTF-8 (is it a binary file? arrays go in .npy files)") from None
        array = parse_json_input(text, path)
    return check_samples(array, path, allow_nonfinite)


def parse_json_input(text, source="INPUT"):
    """A float64 array from JSON text holding a number or nested lists of numbers (nothing else)."""
    try:
        value = json.loads(text)  # NaN and Infinity parse as floats; check_samples decides on them
    except RecursionError:
        raise DataError(f"{source}: the JSON input is nested too deeply; expected a list of samples") from None
    except ValueError as err:
        raise DataError(f"{source}: invalid JSON ({err})") from None
    _check_numbers(value, source, "", 0)
    try:
        array = np.array(value, dtype=np.float64)
    except OverflowError:
        raise DataError(f"{source}: a number is too large for float64") from None
    except ValueError:
        raise DataError(f"{source}: expected a rectangular list of samples (every row the same length), "
                        "found rows of different lengths") from None
    return array


def _check_numbers(value, source, where, depth):
    """``DataError`` unless ``value`` is a number or nested lists of numbers (strings refused: '1' is not 1)."""
    if depth > 32:
        raise DataError(f"{source}: the JSON input is nested more than 32 lists deep; expected a list of samples")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(item, source, f"{where}[{i}]", depth + 1)
    elif isinstance(value, str):
        raise DataError(f"{source}: input{where}: expected a number, found a string ({value[:40]!r}); "
                        "write numbers without quotes")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):  # bool is an int in Python
        raise DataError(f"{source}: input{where}: expected a number, found {json.dumps(value)[:40]}")


def check_samples(array, source, allow_nonfinite=False):
    """``array`` if it holds at least one sample of finite numbers (``DataError`` otherwise)."""
    if array.ndim == 0:
        raise DataError(f"{source}: expected an array of samples (N, ...), found a single number (0-d array)")
    if array.size == 0:
        raise DataError(f"{source}: the array is empty (shape {array.shape}); expected at least one sample")
    if not allow_nonfinite and array.dtype.kind in "fc" and not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise DataError(f"{source}: expected finite numbers, found {array[tuple(bad)]} at index {tuple(bad.tolist())}")
    return array
