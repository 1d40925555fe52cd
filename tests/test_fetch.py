"""The downloader against a local HTTP server on 127.0.0.1 (never any other address)."""

import gzip
import hashlib
import http.server
import io
import threading

import numpy as np
import pytest

from netspec.data import fetch, load_data
from netspec.cli import build_parser
from netspec.data.fetch import DATASETS, _verify
from netspec.data.idx import idx_bytes
from netspec.data.sources import DEBIAN_FASHION_MNIST
from netspec.errors import DataError

FILES = list(DATASETS["mnist"]["files"])


def make_files():
    """{name: gz bytes} of a tiny MNIST-like dataset, and {name: sha256 of decompressed bytes}."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 20).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 6).astype(np.uint8),
    }
    raw = {name: idx_bytes(a) for name, a in arrays.items()}
    return ({name: gzip.compress(r, mtime=0) for name, r in raw.items()},
            {name: hashlib.sha256(r).hexdigest() for name, r in raw.items()})


GZ, SHA = make_files()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves /MODE/FILE. Modes: good (honours Range), trunc, corrupt, html, drop (the first answer
    for the first file is cut in half, then Range is honoured), norange (first answer cut, Range ignored)."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        server = self.server
        _, mode, name = self.path.split("/", 2)
        with server.lock:
            server.requests.append((mode, name, self.headers.get("Range")))
            count = server.counts[(mode, name)] = server.counts.get((mode, name), 0) + 1
        body = GZ.get(name)
        if body is None:
            self.send_error(404)
            return
        if mode == "trunc":
            body = body[: len(body) * 2 // 3]
        elif mode == "corrupt":
            body = bytearray(body)
            body[len(body) // 2] ^= 0x55
            body = bytes(body)
        elif mode == "html":
            body = b"<html>Not here</html>"
        cut = mode in ("drop", "norange") and count == 1 and name == FILES[0]
        start = 0
        rng = self.headers.get("Range")
        if rng and mode in ("good", "drop"):
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2] if cut else payload)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.requests, srv.counts = [], {}
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60.0, srv.shutdown)  # stops by itself even if a test hangs
    watchdog.daemon = True
    watchdog.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    watchdog.cancel()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("NETSPEC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # a mistake in a test must not reach the internet: point the default mirrors at a closed port
    monkeypatch.setenv("NETSPEC_MNIST_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("NETSPEC_FASHION_MNIST_MIRROR", "http://127.0.0.1:9/")


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_fetch_good_then_load(server, tmp_path):
    out = fetch("mnist", mirror=server.url + "/good", progress=False, checksums=SHA)
    assert out == tmp_path / "data" / "mnist"
    assert leftovers(out) == sorted(FILES)
    for name in FILES:
        assert (out / name).read_bytes() == GZ[name]
    data = load_data({"source": "mnist"})
    assert data.x_train.shape == (20, 1, 28, 28) and data.t_test.shape == (6,)
    # second call: everything present and valid, nothing downloaded
    before = len(server.requests)
    fetch("mnist", mirror=server.url + "/good", progress=False, checksums=SHA)
    assert len(server.requests) == before


def test_fetch_with_progress_bar_and_env_mirror(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NETSPEC_FASHION_MNIST_MIRROR", server.url + "/good/")
    out = fetch("fashion-mnist", data_dir=tmp_path / "fm", progress=True, checksums=SHA)
    assert out == tmp_path / "fm" and leftovers(out) == sorted(FILES)
    assert "B" in capsys.readouterr().err  # tqdm wrote its bar to stderr


@pytest.mark.parametrize("mode, reason", [
    ("trunc", "truncated"),
    ("corrupt", "corrupt|checksum mismatch"),
    ("html", "expected a gzip file"),
])
def test_bad_download_fails_clearly_and_leaves_nothing(server, tmp_path, mode, reason):
    target = tmp_path / "d"
    with pytest.raises(DataError, match=reason):
        fetch("mnist", data_dir=target, mirror=f"{server.url}/{mode}", progress=False, checksums=SHA)
    assert leftovers(target) == []  # no final file, no .part


def test_checksum_mismatch_of_valid_idx(server, tmp_path):
    wrong = dict(SHA, **{FILES[0]: "0" * 64})
    with pytest.raises(DataError, match="checksum mismatch.*expected 0000"):
        fetch("mnist", data_dir=tmp_path / "d", mirror=server.url + "/good", progress=False, checksums=wrong)
    assert leftovers(tmp_path / "d") == []


def test_builtin_digests_reject_other_files(server, tmp_path):
    # our generated files are not the real MNIST: the published MD5s must refuse them
    with pytest.raises(DataError, match="MD5 of the .gz is .* expected the published f68b3c2d"):
        fetch("mnist", data_dir=tmp_path / "d", mirror=server.url + "/good", progress=False)
    assert leftovers(tmp_path / "d") == []
    # without verification the structure check still passes them
    fetch("mnist", data_dir=tmp_path / "d", mirror=server.url + "/good", progress=False, verify=False)
    assert leftovers(tmp_path / "d") == sorted(FILES)


def test_interrupted_download_resumes_with_range(server, tmp_path):
    target = tmp_path / "d"
    with pytest.raises(DataError, match="resume"):
        fetch("mnist", data_dir=target, mirror=server.url + "/drop", progress=False, checksums=SHA)
    first = FILES[0]
    part = target / (first + ".part")
    assert leftovers(target) == [first + ".part"]  # the partial is kept, under a name no loader reads
    assert 0 < part.stat().st_size < len(GZ[first])
    fetch("mnist", data_dir=target, mirror=server.url + "/drop", progress=False, checksums=SHA)
    assert leftovers(target) == sorted(FILES)
    assert (target / first).read_bytes() == GZ[first]
    ranges = [r for mode, name, r in server.requests if name == first]
    assert ranges[0] is None and ranges[1] == f"bytes={len(GZ[first]) // 2}-"


def test_server_without_range_restarts_cleanly(server, tmp_path):
    target = tmp_path / "d"
    with pytest.raises(DataError):
        fetch("mnist", data_dir=target, mirror=server.url + "/norange", progress=False, checksums=SHA)
    fetch("mnist", data_dir=target, mirror=server.url + "/norange", progress=False, checksums=SHA)
    assert leftovers(target) == sorted(FILES)
    for name in FILES:
        assert (target / name).read_bytes() == GZ[name]  # not the old half with the whole appended


def test_stale_partial_that_does_not_verify_is_discarded(server, tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / (FILES[0] + ".part")).write_bytes(b"\x1f\x8b garbage from another file")
    with pytest.raises(DataError):
        fetch("mnist", data_dir=target, mirror=server.url + "/good", progress=False, checksums=SHA)
    assert leftovers(target) == []  # the bad partial is gone: the next call starts over
    fetch("mnist", data_dir=target, mirror=server.url + "/good", progress=False, checksums=SHA)
    assert leftovers(target) == sorted(FILES)


def test_bad_existing_file_is_replaced(server, tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / FILES[1]).write_bytes(b"broken")
    fetch("mnist", data_dir=target, mirror=server.url + "/good", progress=False, checksums=SHA)
    assert (target / FILES[1]).read_bytes() == GZ[FILES[1]]


def test_http_errors_and_bad_names(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        fetch("mnist", data_dir=tmp_path / "d", mirror=server.url + "/good/nothere/", progress=False,
              checksums={n: "x" for n in FILES})
    with pytest.raises(DataError, match="unknown dataset 'cifar10'.*mnist, fashion-mnist"):
        fetch("cifar10")


def test_unreachable_mirror_says_offline(tmp_path):
    with pytest.raises(DataError, match="download failed.*Offline"):
        fetch("mnist", data_dir=tmp_path / "d", progress=False, timeout=5)  # env points at 127.0.0.1:9
    assert leftovers(tmp_path / "d") == []


def test_cli_fetch_and_info(server, tmp_path):
    parser = build_parser()
    args = parser.parse_args(["data", "fetch", "mnist", "--dir", str(tmp_path / "cli"),
                              "--mirror", server.url + "/good", "--no-verify", "-q"])
    out = io.StringIO()
    assert args.func(args, out=out) == 0
    assert "4 files verified" in out.getvalue() and leftovers(tmp_path / "cli") == sorted(FILES)
    args = parser.parse_args(["data", "info"])
    out = io.StringIO()
    assert args.func(args, out=out) == 0
    text = out.getvalue()
    assert str(tmp_path / "data" / "mnist") in text and "mnist-5k (shipped)" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "fetch", "cifar10"])


DEBIAN = DATASETS["fashion-mnist"]["files"]


@pytest.mark.skipif(not all((DEBIAN_FASHION_MNIST / n).is_file() for n in DEBIAN),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_embedded_fashion_digests_match_debian_recompressed_files():
    for name, digests in DEBIAN.items():
        data = (DEBIAN_FASHION_MNIST / name).read_bytes()
        assert hashlib.md5(data).hexdigest() != digests["md5_gz"]  # recompressed by Debian ...
        _verify(data, digests, name)  # ... yet the decompressed content verifies
