"""Reliability round 2: the sub-cases of the 23 defects no other test reproduced.

tests/README.md maps every defect of the issue to its tests; most live in
test_reliability, test_blocks, test_images, test_probes, test_run_dir_confinement,
test_model, test_passes, test_mpi and test_export. The tests here fill the gaps:
where the defect is about the command line, they run ``python -m netspec`` as a
user would (other tests of the same defect call ``netspec.cli.main`` in-process).

Each test names its defect number (#N) from the issue.
"""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from extras import need

import netspec
from netspec.checkpoint import save_checkpoint

# A run of two steps on four inline samples: a whole `netspec run` takes about a second.
TINY = {"name": "tiny", "seed": 1, "input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}], "loss": "mse",
        "train": {"data": {"source": "inline", "x": [[0, 1], [1, 0], [1, 1], [0, 0]], "t": [[1], [1], [2], [0]]},
                  "optimizer": {"type": "sgd", "lr": 0.1}, "epochs": 1, "batch_size": 2}}
LINE = "input: {shape: [2]}\nlayers: [{type: dense, units: 1}]\nloss: mse\n"


def cli(*argv, cwd, timeout=60, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "netspec", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, preexec_fn=preexec_fn,
                          env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))


def one_error(done, line):
    """The command failed the way a user error must: exit 2, nothing on stdout, exactly this one line."""
    assert (done.returncode, done.stdout) == (2, ""), (done.returncode, done.stdout, done.stderr)
    assert done.stderr.splitlines() == [line], done.stderr


def tiny_run(tmp_path, **train):
    """A finished run directory tmp_path/r (trained in-process: only the attack runs the CLI)."""
    spec = dict(TINY, train={**TINY["train"], **train})
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    netspec.train(path, out=tmp_path / "r", quiet=True)
    return path, tmp_path / "r"


def epochs_logged(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- #1: writes outside the run directory -----------------------------------------------------------

def test_1_a_symlinked_lock_is_refused_by_resume_and_by_out_force_in_a_real_process(tmp_path):
    """#1, the issue's repro as a user runs it: `rm r/.lock; ln -s $PWD/v r/.lock; netspec run
    --resume r --epochs 2` wrote a PID into v. --out r --force must not write through it either."""
    spec, run = tiny_run(tmp_path)
    victim = tmp_path / "v"
    victim.write_text("KEEP\n")
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(victim)
    message = "error: r/.lock is a symlink; a run directory holds only its own files (remove the link)"
    one_error(cli("run", "--resume", "r", "--epochs", "2", "--quiet", cwd=tmp_path), message)
    one_error(cli("run", spec.name, "--out", "r", "--force", "--quiet", cwd=tmp_path), message)
    assert victim.read_text() == "KEEP\n" and os.readlink(run / ".lock") == str(victim)
    assert epochs_logged(run) == [1]


def test_1_links_where_the_old_temporaries_went_are_never_written_through(tmp_path):
    """#1: spec.resolved.json.tmp and metrics.jsonl.tmp were opened following symlinks; links
    planted under those names (and a resume through them) leave their targets untouched."""
    _, run = tiny_run(tmp_path)
    victims = {}
    for name in ("spec.resolved.json.tmp", "metrics.jsonl.tmp"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("KEEP\n")
        (run / name).symlink_to(victims[name])
    done = cli("run", "--resume", "r", "--epochs", "2", "--quiet", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    for name, victim in victims.items():
        assert victim.read_text() == "KEEP\n", name
    assert epochs_logged(run) == [1, 2]
    assert not (run / "spec.resolved.json").is_symlink() and not (run / "metrics.jsonl").is_symlink()
    assert json.loads((run / "spec.resolved.json").read_text())["name"] == "tiny"


# --- #2: hangs on a FIFO (the entry points test_reliability does not run) ------------------------------

@pytest.mark.parametrize("data", ["d.yaml", "d.json", '{"source": "npz", "path": "d.npz"}'])
def test_2_evaluate_data_that_is_a_fifo_is_refused_at_once(tmp_path, data):
    """#2: `netspec evaluate MODEL --data FIFO` (a data spec file, or an npz it names) never returned."""
    _, run = tiny_run(tmp_path)
    for name in ("d.yaml", "d.json", "d.npz"):
        os.mkfifo(tmp_path / name)
    t0 = time.monotonic()
    done = cli("evaluate", "r/model.npz", "--data", data, cwd=tmp_path, timeout=30)
    what = {"d.yaml": "d.yaml: expected a spec file", "d.json": "d.json: expected a spec file",
            }.get(data, "d.npz: expected a .npz data file")
    one_error(done, f"error: {what} (a regular file), found a FIFO (named pipe)")
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("command", [["evaluate", "m.npz"], ["predict", "m.npz", "[1, 2]"]])
def test_2_a_checkpoint_whose_meta_spec_names_a_fifo_is_not_opened(tmp_path, command):
    """#2 and #13: a checkpoint whose meta.spec was a string naming a FIFO hung evaluate and predict
    (the string was opened as a spec file). The FIFO is never opened: no writer is needed to end it."""
    model = netspec.compile({"input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}], "loss": "mse"})
    save_checkpoint(tmp_path / "m.npz", model)
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["spec"] = str(fifo)
    np.savez(tmp_path / "m.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    one_error(cli(*command, cwd=tmp_path, timeout=30),
              "error: m.npz: the checkpoint holds no embedded spec (a mapping under meta.spec)")


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "nested"])
def test_2_a_resolved_spec_that_is_not_a_small_regular_file_is_one_error_on_resume(tmp_path, kind):
    """#2: a run directory's spec.resolved.json that is a FIFO hung --resume. Also refused: a link
    to /dev/zero (read until memory ran out, #4) and JSON nested 100,000 deep (RecursionError, as #12).
    A FIFO opened for reading is released here by opening it for writing, so a regression fails
    fast (with "cannot be read (Expecting value ...)") instead of hanging the suite."""
    _, run = tiny_run(tmp_path)
    resolved = run / "spec.resolved.json"
    resolved.unlink()
    if kind == "fifo":
        os.mkfifo(resolved)
    elif kind == "dev-zero":
        resolved.symlink_to("/dev/zero")
    else:
        resolved.write_text("[" * 100_000 + "]" * 100_000)
    proc = subprocess.Popen([sys.executable, "-m", "netspec", "run", "--resume", "r", "--epochs", "2", "--quiet"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_limit_memory, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if kind == "fifo":
            try:   # succeeds only while a reader has the FIFO open: the child is blocked in open()/read()
                os.close(os.open(resolved, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    lines = err.splitlines()
    assert (proc.returncode, out) == (2, ""), (proc.returncode, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: r/spec.resolved.json"), err[-2000:]
    expected = {"fifo": ("FIFO", "not a regular file"), "dev-zero": ("character device", "not a regular file"),
                "nested": ("nested", "deep")}[kind]
    assert any(word in lines[0] for word in expected), lines[0]
    assert epochs_logged(run) == [1]


# --- #14, #15, #16: the command-line repros in a real process ---------------------------------------------

def test_14_expand_in_a_real_process_prints_an_include_name_with_a_newline_escaped(tmp_path):
    """#14: an include named with a newline was printed raw in an origin comment: the output of
    `netspec expand`, itself a spec, gained a layer."""
    lib = tmp_path / "a\nlayers: [{type: relu}]\n#.yaml"
    lib.write_text("blocks:\n  b: {layers: [{type: tanh}]}\n")
    (tmp_path / "s.json").write_text(json.dumps({"include": [lib.name], "input": {"shape": [2]},
                                                 "layers": [{"type": "b"}, {"type": "dense", "units": 1}],
                                                 "loss": "mse"}))
    done = cli("expand", "s.json", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "  # a\\nlayers: [{type: relu}]\\n#.yaml:2: block b" in done.stdout
    assert not any(line.startswith("layers: [{type: relu}]") for line in done.stdout.splitlines())
    flat = yaml.safe_load(done.stdout)
    assert [layer["type"] for layer in flat["layers"]] == ["tanh", "dense"]


def test_15_a_run_that_diverged_before_its_first_checkpoint_is_started_again_with_force(tmp_path):
    """#15 as a user meets it: the first epoch diverges, so no checkpoint is written; --out then
    said "continue it with --resume", and --resume said "holds no checkpoint". Both now point at --force."""
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(dict(TINY, train={**TINY["train"], "epochs": 3,
                                                                        "optimizer": {"type": "sgd", "lr": 1e30}})))
    done = cli("run", "bad.yaml", "--out", "r", "--quiet", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "") and "training diverged" in done.stderr, done.stderr
    assert not (tmp_path / "r" / "model.npz").exists()
    one_error(cli("run", "bad.yaml", "--out", "r", "--quiet", cwd=tmp_path),
              "error: r holds a run that stopped before its first checkpoint (metrics.jsonl, spec.resolved.json); "
              "nothing to resume: start it again with --force")
    one_error(cli("run", "--resume", "r", "--quiet", cwd=tmp_path),
              "error: r holds no checkpoint (model.npz) to resume (its run stopped before the first checkpoint: "
              "start it again with --force)")


def test_16_validate_and_summary_in_a_real_process_accept_a_merge_key_overridden_beside_it(tmp_path):
    """#16: `<<: *D` then `name: b` was reported as "duplicate key 'name'" by `netspec validate`."""
    (tmp_path / "m.yaml").write_text("input: {shape: [2]}\nlayers:\n  - &D {type: dense, units: 4, name: a}\n"
                                     "  - <<: *D\n    name: b\n  - {type: dense, units: 1}\nloss: mse\n")
    done = cli("validate", "m.yaml", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "m.yaml: ok\n", ""), done.stderr
    done = cli("summary", "m.yaml", "--json", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    rows = json.loads(done.stdout)["layers"]
    assert [(r["name"], r["params"]) for r in rows if r["name"] != "input"] == [("a", 12), ("b", 20), ("dense1", 5)]


# --- #17, #18: predict on files that are not images, in a real process -------------------------------------

@pytest.fixture
def image_model(tmp_path):
    need("PIL")
    model = netspec.compile({"input": {"shape": [1, 28, 28]}, "layers": [{"type": "dense", "units": 10}],
                             "loss": "softmax_cross_entropy",
                             "train": {"data": {"source": "mnist-5k"}, "optimizer": {"type": "sgd", "lr": 0.1},
                                       "epochs": 1, "batch_size": 10}})
    save_checkpoint(tmp_path / "img.npz", model)
    from PIL import Image
    Image.new("L", (28, 28), 0).save(tmp_path / "good.png")
    return tmp_path / "img.npz"


@pytest.mark.parametrize("name, message", [
    ("x.gif", "'.gif' images are not an input netspec reads; give image files (.png, .jpg, .jpeg, .bmp) or "
              "folders of them, one .npy array, or a JSON list (inline or .json)"),
    ("fifo.png", "not a regular file: a FIFO (named pipe)"),
    ("zero.png", "not a regular file: a character device"),
    ("loop_a.png", "cannot be read (Too many levels of symbolic links)"),
])
def test_17_predict_in_a_real_process_names_what_a_file_is(image_model, tmp_path, name, message):
    """#17: `predict x.gif` said "expected UTF-8 JSON text"; a FIFO or a /dev/zero symlink named .png
    was an "empty file (0 bytes)"; a symlink loop was "no such file"."""
    (tmp_path / "x.gif").write_bytes(b"GIF89a\x01\x00\x01\x00")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_b.png")
    (tmp_path / "loop_b.png").symlink_to(tmp_path / "loop_a.png")
    one_error(cli("predict", "img.npz", name, cwd=tmp_path, timeout=30), f"error: {name}: {message}")


def test_18_a_file_name_with_a_newline_cannot_forge_a_prediction_line_in_a_real_process(image_model, tmp_path):
    """#18: a file named "forged\\n3: 9 (100%).png" printed a second, made-up prediction line."""
    forged = tmp_path / "forged\n3: 9 (100%).png"
    forged.write_bytes((tmp_path / "good.png").read_bytes())
    done = cli("predict", "img.npz", forged.name, "good.png", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("forged\\n3: 9 (100%).png: ") and lines[1].startswith("good.png: ")
    assert not any(line.startswith("3: 9") for line in lines)


# --- #19: export's file names and the debris of a killed export, without onnx ------------------------------

class _Proto:
    """Stands in for an onnx.ModelProto: export's writer needs only its bytes."""
    def SerializeToString(self):
        return b"proto bytes"


def test_19_export_writes_a_255_character_name_and_removes_a_killed_exports_temporary(tmp_path):
    """#19 where onnx is not installed (test_export and test_reliability cover the CLI with it):
    a valid 236-255 character -o name failed "File name too long" (the temporary added ~20
    characters), and the .netspec-PID_*.tmp a kill -9 left was never removed."""
    from netspec.export import _write
    child = ("import os, signal, sys\nfrom netspec.atomic import atomic_write\n"
             "with atomic_write(os.path.join(sys.argv[1], 'm.onnx'), 'wb') as f:\n"
             "    f.write(b'half a model'); f.flush()\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    debris = [p.name for p in tmp_path.iterdir()]
    assert len(debris) == 1 and debris[0].startswith(".netspec-") and debris[0].endswith(".tmp")
    live = tmp_path / f".netspec-{os.getpid()}_abcd1234.tmp"     # a running writer's: kept
    live.write_text("keep")
    for length in (236, 255):
        out = tmp_path / ("n" * (length - len(".onnx")) + ".onnx")
        _write(_Proto(), out)
        assert out.read_bytes() == b"proto bytes" and len(out.name) == length
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "n" * 231 + ".onnx", "n" * 250 + ".onnx"])


# --- #21: Model.load_arrays checks every array before copying any ------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ("nan", "parameter dense2.b holds NaN or infinite values"),
    ("inf", "parameter dense2.b holds NaN or infinite values"),
    ("complex", "parameter dense2.b holds complex128 values; expected real numbers"),
    ("string", "parameter dense2.b holds <U3 values; expected real numbers"),
    ("shape", "parameter dense2.b is shaped [5], the model expects [1]"),
])
def test_21_load_arrays_refuses_a_bad_array_and_leaves_every_parameter_as_it_was(bad, message):
    """#21: load_arrays checked and copied in one loop, so a bad last array left the earlier
    parameters overwritten; NaN, complex and string arrays were accepted."""
    model = netspec.compile({"input": {"shape": [2]}, "layers": [{"type": "dense", "units": 3},
                                                                  {"type": "dense", "units": 1}], "loss": "mse"})
    before = {k: v.copy() for k, v in model.params.items()}
    arrays = {k: np.full_like(v, 7.0) for k, v in model.params.items()}
    assert list(arrays)[-1] == "dense2.b"      # the bad array comes after every good one
    arrays["dense2.b"] = {"nan": np.array([np.nan]), "inf": np.array([np.inf]), "complex": np.array([1 + 2j]),
                          "string": np.array(["1.0"]), "shape": np.zeros(5)}[bad]
    with pytest.raises(netspec.DataError) as exc:
        model.load_arrays(arrays)
    assert str(exc.value) == message
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    arrays["dense2.b"] = np.array([7.0])
    model.load_arrays(arrays)
    assert all(np.all(v == 7.0) for v in model.params.values())
