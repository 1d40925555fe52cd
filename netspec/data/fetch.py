"""Download MNIST or Fashion-MNIST IDX files: verified, atomic, resumable.

Design: each file is downloaded to ``NAME.part`` beside its destination. A
transfer cut short keeps the ``.part`` so the next call resumes it with an
HTTP Range request (a server that ignores Range restarts it from zero). A
complete transfer is verified (checksum, gzip stream, IDX structure) and only
then renamed onto the final name with ``os.replace``; a file that fails
verification is deleted, so the data directory never holds a half or bad file
under a real name. Only ``urllib`` is used.

Checksums. A downloaded file passes if the MD5 of the ``.gz`` bytes equals the
dataset's published digest (MNIST: as listed with the original files and used
by torchvision; Fashion-MNIST: its README), or if the SHA-256 of the
decompressed IDX bytes equals the digest known for the content (so a mirror
that recompresses the files still verifies). Decompressed digests are known
for Fashion-MNIST (computed from Debian's ``dataset-fashion-mnist`` package,
whose .gz files are recompressed); for MNIST only the published .gz MD5s are
embedded, because we could not confirm the decompressed digests from a
published source: a recompressed MNIST mirror therefore fails verification,
and ``checksums=`` (or ``--no-verify`` on the CLI) is the way around it.
Either way the IDX structure is checked too.
"""

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from netspec.atomic import replace
from netspec.data.idx import GZIP_MAGIC, decompress, parse_idx
from netspec.data.sources import default_data_root
from netspec.errors import DataError

CHUNK = 64 * 1024
TIMEOUT = 30.0

DATASETS = {
    "mnist": {
        "mirror": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "mirror_env": "NETSPEC_MNIST_MIRROR",
        "files": {
            "train-images-idx3-ubyte.gz": {"md5_gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "sha256": None},
            "train-labels-idx1-ubyte.gz": {"md5_gz": "d53e105ee54ea40749a09fcbcd1e9432", "sha256": None},
            "t10k-images-idx3-ubyte.gz": {"md5_gz": "9fb629c4189551a2d022fa330f9573f3", "sha256": None},
            "t10k-labels-idx1-ubyte.gz": {"md5_gz": "ec29112dd5afa0611ce80d1b7f02629c", "sha256": None},
        },
    },
    "fashion-mnist": {
        "mirror": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "mirror_env": "NETSPEC_FASHION_MNIST_MIRROR",
        "files": {
            "train-images-idx3-ubyte.gz": {
                "md5_gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "sha256": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            },
            "train-labels-idx1-ubyte.gz": {
                "md5_gz": "25c81989df183df01b3e8a0aad5dffbe",
                "sha256": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            },
            "t10k-images-idx3-ubyte.gz": {
                "md5_gz": "bef4ecab320f06d8554ea6380940ec79",
                "sha256": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            },
            "t10k-labels-idx1-ubyte.gz": {
                "md5_gz": "bb300cfdad3c16e7a12a480ee83cd310",
                "sha256": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
        },
    },
}


def mirror_for(name, mirror=None):
    """The base URL files of ``name`` are fetched from: the argument, else its env variable, else the default."""
    info = _dataset(name)
    url = mirror or os.environ.get(info["mirror_env"]) or info["mirror"]
    return url if url.endswith("/") else url + "/"


def target_dir(name, data_dir=None):
    """Where ``fetch`` writes: ``data_dir`` itself if given, else $NETSPEC_DATA/NAME or ~/.cache/netspec/NAME."""
    _dataset(name)
    return Path(data_dir).expanduser() if data_dir is not None else default_data_root() / name


def fetch(name, *, data_dir=None, mirror=None, progress=True, checksums=None, verify=True, timeout=TIMEOUT):
    """Download the four IDX .gz files of ``name`` ('mnist' or 'fashion-mnist'); return their directory.

    ``checksums`` maps file name -> SHA-256 of the decompressed content and
    replaces the built-in digests (for other mirrors and for tests). Files
    already present and valid are kept. Raises ``DataError`` on any failure.
    """
    info = _dataset(name)
    base = mirror_for(name, mirror)
    directory = target_dir(name, data_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the data directory {directory} ({err.strerror}); "
                        "choose another with --dir or NETSPEC_DATA") from None
    for filename, digests in info["files"].items():
        if checksums is not None:
            if filename not in checksums:
                raise DataError(f"checksums given for {', '.join(checksums)} but not for {filename}")
            digests = {"md5_gz": None, "sha256": checksums[filename]}
        if not verify:
            digests = None
        dest = directory / filename
        if dest.is_file():
            try:
                _verify(dest.read_bytes(), digests, dest)
                continue
            except DataError:
                pass  # a bad file from earlier: download again, replace atomically
        download(base + filename, dest, digests=digests, progress=progress, timeout=timeout)
    return directory


def download(url, dest, *, digests=None, progress=True, timeout=TIMEOUT):
    """Download ``url`` to ``dest`` through ``dest.part`` (resumed if present), verify, rename."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    try:
        _transfer(url, part, have, progress, timeout)
    except DataError:
        raise
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # our .part is not a prefix the server knows: start over
            part.unlink()
            return download(url, dest, digests=digests, progress=progress, timeout=timeout)
        raise DataError(f"{url}: the server answered HTTP {err.code} {err.reason}; check the mirror URL "
                        "(--mirror or the NETSPEC_*_MIRROR variable)") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        kept = (f" The {part.stat().st_size} bytes received are kept in {part}; run the command again to resume."
                if part.is_file() and part.stat().st_size else "")
        raise DataError(f"{url}: download failed ({reason}).{kept} Offline? Copy the files into {dest.parent} "
                        "by hand.") from None

    data = part.read_bytes()
    try:
        _verify(data, digests, url)
    except DataError:
        _discard(part)
        raise
    replace(part, dest)
    return dest


def _transfer(url, part, have, progress, timeout):
    """Append the rest of ``url`` to ``part`` (from byte ``have``), or rewrite it if the server restarts."""
    request = urllib.request.Request(url, headers={"User-Agent": "netspec"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if have and status == 206 and _range_start(response.headers.get("Content-Range")) == have:
            mode, start = "ab", have
        else:  # no resume possible: the server sent the whole file
            mode, start = "wb", 0
        total = start + length if length is not None else None
        received = 0
        bar = _progress_bar(total, start, part.name, progress)
        try:
            with open(part, mode) as f:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        finally:
            bar.close()
    if length is not None and received < length:
        raise DataError(f"{url}: the connection closed after {start + received} of {total} bytes. "
                        f"The partial download is kept in {part}; run the command again to resume.")


def _range_start(content_range):
    """First byte of a ``Content-Range: bytes A-B/T`` header, or None."""
    try:
        unit, spec = content_range.split(" ", 1)
        return int(spec.split("-", 1)[0]) if unit == "bytes" else None
    except (AttributeError, ValueError):
        return None


def _progress_bar(total, initial, desc, enabled):
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, disable=not enabled, leave=False)


def _verify(data, digests, source):
    """DataError unless ``data`` (a .gz file's bytes) is a valid IDX file matching ``digests``."""
    if data[:2] != GZIP_MAGIC:
        raise DataError(f"{source}: expected a gzip file, found {len(data)} bytes without a gzip header "
                        "(an HTML error page from the mirror?); check the mirror URL")
    md5_ok = bool(digests and digests.get("md5_gz")) and hashlib.md5(data).hexdigest() == digests["md5_gz"]
    raw = decompress(data, source=str(source))
    parse_idx(raw, source=str(source))
    if digests is None or md5_ok:
        return
    expected = digests.get("sha256")
    if expected is None:
        raise DataError(f"{source}: MD5 of the .gz is {hashlib.md5(data).hexdigest()}, expected the published "
                        f"{digests['md5_gz']}; the file differs from the original (a recompressing mirror?). "
                        "Use another mirror, or skip verification with --no-verify if you trust this one.")
    found = hashlib.sha256(raw).hexdigest()
    if found != expected:
        raise DataError(f"{source}: checksum mismatch: SHA-256 of the decompressed content is {found}, "
                        f"expected {expected}; the file is corrupt or not the expected dataset")


def _discard(path):
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _dataset(name):
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} to fetch; expected one of {', '.join(DATASETS)} "
                        "(mnist-5k ships with netspec and needs no download)")
    return DATASETS[name]
