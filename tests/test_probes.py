"""The hostile-input probes, swept together under a 1 GiB address-space limit.

Every probe below is a file a hostile or careless user could hand netspec: specs and
includes (FIFOs, devices, huge or deeply nested files, expansion bombs, files that
are not specs), images (huge, bomb-sized, misnamed special files) and checkpoints
(damaged or lying metadata). Each runs as ``python -m netspec ...`` under
``ulimit -v 1 GiB`` and must end, within 5 seconds of CPU time, in a clean answer:
an error is one ``error:`` line and exit 2, never a traceback; an image that can be
decoded within the limit is predicted (one line per input).

The individual behaviours have their own tests (test_reliability, test_untrusted,
test_blocks, test_images); this file holds them to the memory and time bounds all at once.
"""
import json
import os
import resource
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from extras import has

LIMIT = 1 << 30          # ulimit -v 1 GiB
CPU_SECONDS = 5.0
LINE = "input: {shape: [2]}\nlayers: [{type: dense, units: 1}]\nloss: mse\n"


def png(path, width, height, channels, rows=None):
    """Write a valid 8-bit PNG of zeros (grey, grey+alpha) without Pillow, streaming the rows;
    ``rows`` < height writes only that many (a truncated image: Pillow stops at the header's size)."""
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + width * channels)
    body = b"".join(z.compress(row * min(256, height - r)) for r in range(0, rows if rows is not None else height, 256))
    body += z.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
                + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def spec_probes(tmp):
    """name -> argv; the files they need are written into ``tmp``."""
    probes = {}
    os.mkfifo(tmp / "fifo.yaml")
    probes["spec is a FIFO"] = ["validate", "fifo.yaml"]
    probes["spec is /dev/zero"] = ["validate", "/dev/zero"]
    (tmp / "folder.yaml").mkdir()
    probes["spec is a folder"] = ["validate", "folder.yaml"]
    with open(tmp / "huge.yaml", "wb") as f:        # 1 GB, sparse: costs no disk
        f.truncate(1 << 30)
    (tmp / "big_include.yaml").write_text("include: [huge.yaml]\n" + LINE)
    probes["1 GB include"] = ["validate", "big_include.yaml"]
    (tmp / "repeat.yaml").write_text("input: {shape: [2]}\nblocks: {b: {layers: [{type: tanh}]}}\n"
                                     "layers: [{type: b, repeat: 1000000000}, {type: dense, units: 1}]\nloss: mse\n")
    probes["repeat 1e9"] = ["validate", "repeat.yaml"]
    values = json.dumps([[0.25]] * 100_000)
    (tmp / "copies.json").write_text(
        '{"blocks": {"b": {"layers": [{"type": "dense", "units": 1, "init": {"values": %s}}]}}, '
        '"input": {"shape": [100000]}, "layers": [{"type": "b", "repeat": 1000}], "loss": "mse"}' % values)
    probes["500 KB body x 1000"] = ["validate", "copies.json"]
    defs = "".join(f"  b{k}: {{layers: [{{type: {'b' + str(k + 1) if k < 399 else 'tanh'}}}]}}\n" for k in range(400))
    (tmp / "nested_blocks.yaml").write_text(f"input: {{shape: [2]}}\nblocks:\n{defs}layers: [{{type: b0}}]\nloss: mse\n")
    probes["blocks nested 400 deep (validate)"] = ["validate", "nested_blocks.yaml"]
    probes["blocks nested 400 deep (expand)"] = ["expand", "nested_blocks.yaml"]
    (tmp / "nul.yaml").write_text('include: ["a\\0b.yaml"]\n' + LINE)
    probes["include path with NUL"] = ["validate", "nul.yaml"]
    (tmp / "deep.yaml").write_text("input: {shape: [2]}\nlayers: [{type: dense, units: 1, init: "
                                   + "{x: " * 900 + "1" + "}" * 900 + "}]\nloss: mse\n")
    probes["mapping nested 900 deep"] = ["validate", "deep.yaml"]
    (tmp / "shadow").write_text("root:$y$j9T$s3cr3t:19000:0:99999:7:::\n")
    (tmp / "shadow_include.yaml").write_text("include: [shadow]\n" + LINE)
    probes["include of a file that is not a spec"] = ["validate", "shadow_include.yaml"]
    layers = [{"type": "dense", "units": 1, "name": f"l{i}", **({"inputs": [f"zz{i}"]} if i else {})}
              for i in range(10_000)]
    (tmp / "refs.json").write_text(json.dumps({"input": {"shape": [1]}, "layers": layers, "loss": "mse"}))
    probes["10,000 bad references"] = ["validate", "refs.json"]
    return probes


def checkpoint_probes(tmp):
    import netspec
    from netspec.checkpoint import save_checkpoint
    model = netspec.compile({"input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}], "loss": "mse"})
    good = tmp / "good.npz"
    save_checkpoint(good, model)
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    def variant(name, change):
        meta = json.loads(str(arrays["meta"]))
        change(meta)
        np.savez(tmp / name, **{**arrays, "meta": np.array(json.dumps(meta))})
        return name

    deep = v = {}
    for _ in range(900):
        v["x"] = {}
        v = v["x"]
    files = {
        "meta.dtype int8": variant("int8.npz", lambda m: m.update(dtype="int8")),
        "meta without a spec": variant("nospec.npz", lambda m: m.pop("spec")),
        "meta.spec is a path": variant("path.npz", lambda m: m.update(spec=str(tmp / "secret.yaml"))),
        "embedded spec nested 900 deep": variant("deep.npz", lambda m: m["spec"]["layers"][0].update(init=deep)),
    }
    (tmp / "secret.yaml").write_text(LINE)
    (tmp / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    files["random bytes"] = "random.npz"
    blob = good.read_bytes()
    (tmp / "cut.npz").write_bytes(blob[:len(blob) // 2])
    files["truncated"] = "cut.npz"
    os.mkfifo(tmp / "fifo.npz")
    files["checkpoint is a FIFO"] = "fifo.npz"
    probes = {}
    for what, name in files.items():
        probes[f"{what} (evaluate)"] = ["evaluate", name]
        probes[f"{what} (predict)"] = ["predict", name, "[1, 2]"]
        if has("onnx"):
            probes[f"{what} (export)"] = ["export", name, "-o", "out.onnx"]
    return probes


def image_probes(tmp):
    """name -> (argv, lines expected on stdout, or None for an error)."""
    import netspec
    from netspec.checkpoint import save_checkpoint
    model = netspec.compile({"input": {"shape": [1, 28, 28]}, "layers": [{"type": "dense", "units": 10}],
                             "loss": "softmax_cross_entropy",
                             "train": {"data": {"source": "mnist-5k"}, "optimizer": {"type": "sgd", "lr": 0.1},
                                       "epochs": 1, "batch_size": 10}})
    save_checkpoint(tmp / "img.npz", model)
    png(tmp / "good.png", 28, 28, 1)
    png(tmp / "la4000.png", 4000, 4000, 2)
    png(tmp / "la6000.png", 6000, 6000, 2)
    png(tmp / "grey12000.png", 12000, 12000, 1)
    png(tmp / "bomb.png", 20000, 20000, 1, rows=0)      # the header alone: Pillow refuses it by size
    os.mkfifo(tmp / "fifo.png")
    os.symlink("/dev/zero", tmp / "zero.png")
    os.symlink(tmp / "loop_b.png", tmp / "loop_a.png")
    os.symlink(tmp / "loop_a.png", tmp / "loop_b.png")
    (tmp / "x.gif").write_bytes(b"GIF89a\x01\x00\x01\x00")
    png(tmp / "forged\n3: 9 (100%).png", 28, 28, 1)
    return {
        "4000x4000 grey+alpha": (["predict", "img.npz", "la4000.png"], 1),
        "6000x6000 grey+alpha beside a good image": (["predict", "img.npz", "la6000.png", "good.png"], 2),
        "12000x12000 grey (Pillow's warning size)": (["predict", "img.npz", "grey12000.png"], 1),
        "20000x20000 header (decompression bomb)": (["predict", "img.npz", "bomb.png"], None),
        "a FIFO named .png": (["predict", "img.npz", "fifo.png"], None),
        "/dev/zero named .png": (["predict", "img.npz", "zero.png"], None),
        "a symlink loop": (["predict", "img.npz", "loop_a.png"], None),
        "a .gif": (["predict", "img.npz", "x.gif"], None),
        "a file name with a newline": (["predict", "img.npz", "forged\n3: 9 (100%).png"], 1),
    }


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def run_probe(argv, cwd):
    """(exit code, stdout, stderr, CPU seconds) of ``python -m netspec argv`` under the limit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-m", "netspec", *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=60, preexec_fn=_limited, env=dict(os.environ, OMP_NUM_THREADS="1"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.returncode, done.stdout, done.stderr, cpu


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("probes")


def _error_probe(argv, cwd, max_lines=1):
    code, out, err, cpu = run_probe(argv, cwd)
    lines = err.splitlines()
    assert code == 2 and out == "", (argv, code, out, err)
    assert "Traceback" not in err and lines[0].startswith("error:") and 1 <= len(lines) <= max_lines, (argv, err)
    assert cpu < CPU_SECONDS, (argv, cpu)
    return lines


def test_spec_and_include_probes(folder):
    probes = spec_probes(folder)
    for name, argv in probes.items():
        # past 50 problems with names the rest are counted: 50 lines, then the count, after "error:"
        lines = _error_probe(argv, folder, max_lines=52 if name == "10,000 bad references" else 1)
        assert "s3cr3t" not in "\n".join(lines), name


def test_checkpoint_probes(folder):
    for name, argv in checkpoint_probes(folder).items():
        lines = _error_probe(argv, folder)
        assert argv[1] in lines[0], (name, lines)                  # names the checkpoint
        assert "secret.yaml" not in lines[0], name                 # never reads a path out of it
    assert not (folder / "out.onnx").exists()


def test_image_probes(folder):
    if not has("PIL"):
        pytest.skip("Pillow is not installed (the image extra)")
    for name, (argv, predictions) in image_probes(folder).items():
        if predictions is None:
            _error_probe(argv, folder)
            continue
        code, out, err, cpu = run_probe(argv, folder)
        assert (code, err) == (0, ""), (name, code, err)
        assert len(out.splitlines()) == predictions, (name, out)
        assert cpu < CPU_SECONDS, (name, cpu)
