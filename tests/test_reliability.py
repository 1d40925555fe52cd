"""Nothing lost, nothing half-written, never a traceback: signals, run directories, hostile flags.

Each test is a regression test for a failure a user hit: a second Ctrl-C saving a
checkpoint one batch ahead of its step, SIGTERM ending a run silently, ``--out``
replacing a finished run, two runs writing one directory, relative data paths
changing meaning on resume, and flags or inputs that printed a traceback.
Subprocess tests run ``python -m netspec`` as a user would.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from extras import has

import netspec
from netspec.checkpoint import read_checkpoint
from netspec.cli import main
from netspec.errors import RunDirError
from netspec.rundir import RunDir


def spec_dict(epochs=24, **train):
    """A conv net whose steps take tens of milliseconds, so signals can land inside one; 48 steps
    leave over a second between the second epoch (when the signal tests signal) and the end."""
    cfg = {"data": {"source": "mnist-5k", "limit_train": 400, "limit_test": 100},
           "optimizer": {"type": "adam", "lr": 0.002}, "epochs": epochs, "batch_size": 200}
    cfg.update(train)
    return {"name": "sig", "seed": 5, "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "conv2d", "filters": 16, "kernel": 3, "pad": 1}, {"type": "relu"},
                       {"type": "maxpool2d", "size": 2}, {"type": "dense", "units": 32}, {"type": "relu"},
                       {"type": "dropout", "ratio": 0.3}, {"type": "dense", "units": 10}],
            "loss": "softmax_cross_entropy", "train": cfg}


def write(tmp_path, spec, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def arrays_of(run_dir):
    _, arrays = read_checkpoint(os.path.join(run_dir, "model.npz"))
    return {k: v for k, v in arrays.items() if k.startswith(("param/", "buffer/", "optim/"))}


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def netspec_cli(*argv, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "netspec", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same spec trained start to finish."""
    tmp = tmp_path_factory.mktemp("ref")
    netspec.train(write(tmp, spec_dict()), out=tmp / "full")
    return arrays_of(tmp / "full")


# --- signals -------------------------------------------------------------------------

def _start_and_wait(tmp_path, out, epochs_done=2):
    spec = write(tmp_path, spec_dict())
    proc = subprocess.Popen([sys.executable, "-m", "netspec", "run", str(spec), "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    metrics = out / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= epochs_done):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 120, "the run did not start"
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize("gap", [0.005, 0.03, 0.06])
def test_two_ctrl_c_save_a_consistent_checkpoint(tmp_path, uninterrupted, gap):
    """A second SIGINT while stopping never saves a checkpoint ahead of its step."""
    out = tmp_path / "cut"
    proc = _start_and_wait(tmp_path, out)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"saved {out / 'model.npz'}; continue with: netspec run --resume {out}" in stdout + stderr
    meta, _ = read_checkpoint(out / "model.npz")
    assert 0 < meta["trainer"]["step"] < 48
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert_same(uninterrupted, arrays_of(out))


def test_sigterm_stops_at_a_step_boundary_and_says_so(tmp_path, uninterrupted):
    out = tmp_path / "term"
    proc = _start_and_wait(tmp_path, out)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopped at step" in stdout + stderr and "Traceback" not in stderr
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert_same(uninterrupted, arrays_of(out))


# --- run directories -----------------------------------------------------------------

def test_out_never_replaces_a_run_silently(tmp_path, capsys):
    spec = write(tmp_path, spec_dict(epochs=1))
    out = tmp_path / "over"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    before = arrays_of(out)
    other = write(tmp_path, spec_dict(epochs=1, optimizer={"type": "sgd", "lr": 0.1}), "other.yaml")
    capsys.readouterr()
    assert main(["run", str(other), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {out} already holds a run (model.npz, metrics.jsonl, spec.resolved.json); continue "
                   f"it with `netspec run --resume {out}`, or replace it with --force\n")
    assert_same(before, arrays_of(out))
    assert main(["run", str(other), "--out", str(out), "--quiet", "--force"]) == 0
    assert json.loads((out / "spec.resolved.json").read_text())["train"]["optimizer"]["type"] == "sgd"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    spec = write(tmp_path, spec_dict(epochs=1))
    out = tmp_path / "locked"
    holder = RunDir(out)
    holder.claim()
    try:
        assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
        assert capsys.readouterr().err == (f"error: {out} is in use by another netspec run (pid {os.getpid()}); "
                                           "wait for it to finish or choose another --out\n")
        assert not (out / "model.npz").exists()
    finally:
        holder.release()
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0


def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path):
    out = tmp_path / "stale"
    code = (f"from netspec.rundir import RunDir; import os; RunDir({str(out)!r}).claim(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (out / ".lock").read_text().strip().isdigit()
    h = netspec.train(spec_dict(epochs=1), out=out)
    assert h.test_acc is not None


def test_concurrent_runs_on_one_directory(tmp_path):
    """Two real processes: exactly one trains, the other exits 2 naming the holder; nothing interleaves."""
    spec = write(tmp_path, spec_dict(epochs=3))
    out = tmp_path / "both"
    procs = [subprocess.Popen([sys.executable, "-m", "netspec", "run", str(spec), "--out", str(out), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert ("is in use by another netspec run (pid" in loser) or ("already holds a run" in loser), loser
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]


@pytest.mark.parametrize("make", ["file", "under_a_file"])
def test_out_that_cannot_be_a_directory(tmp_path, capsys, make):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    out = blocker if make == "file" else blocker / "run"
    assert main(["run", str(write(tmp_path, spec_dict(epochs=1))), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    if make == "file":
        assert err == f"error: run directory {out} is a file, not a directory; choose another --out\n"
    else:
        assert err == f"error: cannot create the run directory {out}: Not a directory\n"


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    spec = write(tmp_path, spec_dict(epochs=1))
    out = tmp_path / "full"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    before = (out / "model.npz").read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", no_space)
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: cannot write the checkpoint {out / 'model.npz'} (the previous checkpoint, if any, is "
                   "intact): No space left on device\n")
    assert (out / "model.npz").read_bytes() == before
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_stale_temporaries_are_removed_on_resume(tmp_path):
    spec = write(tmp_path, spec_dict(epochs=1))
    out = tmp_path / "stale"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    (out / ".model-k1ll3d.npz.tmp").write_bytes(b"half a checkpoint")
    assert main(["run", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert not (out / ".model-k1ll3d.npz.tmp").exists()


def test_resume_refuses_flags_it_would_ignore(tmp_path, capsys):
    spec = write(tmp_path, spec_dict(epochs=1))
    out = tmp_path / "r"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--dtype", "float64", "--out", str(tmp_path / "elsewhere")]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume {out} continues that run with its own spec, dtype and directory; drop --dtype, --out "
        "(only --epochs, --quiet and --no-progress apply)\n")
    assert main(["run", "--resume", str(out), "--out", str(out), "--epochs", "2", "--quiet"]) == 0


def test_resume_refuses_a_hand_edited_resolved_spec(tmp_path, capsys):
    spec = write(tmp_path, spec_dict(epochs=1))
    out = tmp_path / "edited"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    resolved = json.loads((out / "spec.resolved.json").read_text())
    resolved["train"]["batch_size"] = 7
    (out / "spec.resolved.json").write_text(json.dumps(resolved))
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "spec.resolved.json differs from the spec stored in" in err and "(first at train.batch_size)" in err
    assert json.loads((out / "spec.resolved.json").read_text())["train"]["batch_size"] == 7  # not overwritten


# --- data paths are pinned at training time ---------------------------------------------

def _npz(path, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    t = (x.sum(axis=1) > 0).astype(np.int64)
    np.savez(path, x_train=x, t_train=t, x_test=x[:10], t_test=t[:10])


def test_relative_data_paths_keep_their_meaning_on_resume_and_evaluate(tmp_path):
    spec_dir, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    spec_dir.mkdir()
    elsewhere.mkdir()
    _npz(spec_dir / "data.npz", 0)
    _npz(elsewhere / "data.npz", 1)          # a different file with the same name in the cwd
    spec = {"name": "npz", "input": {"shape": [3]}, "loss": "softmax_cross_entropy",
            "layers": [{"type": "dense", "units": 2}],
            "train": {"data": {"source": "npz", "path": "data.npz"}, "epochs": 1, "batch_size": 10}}
    path = write(spec_dir, spec)
    out = tmp_path / "run"
    done = netspec_cli("run", path, "--out", out, "--quiet", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "spec.resolved.json").read_text())["train"]["data"]
    assert data["path"] == str(spec_dir / "data.npz")
    assert len(data["sha256"]) == 64
    ev = netspec_cli("evaluate", out / "model.npz", "--json", cwd=elsewhere)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["samples"] == 10
    assert netspec_cli("run", "--resume", out, "--epochs", "2", "--quiet", cwd=elsewhere).returncode == 0
    _npz(spec_dir / "data.npz", 2)           # the data changes after training
    ev = netspec_cli("evaluate", out / "model.npz", cwd=elsewhere)
    assert ev.returncode == 2
    assert "the file's contents changed since training" in ev.stderr and "Traceback" not in ev.stderr


# --- flags and inputs that used to print tracebacks ----------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["run", "simple_convnet", "--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["run", "simple_convnet", "--epochs", "-1"], "argument --epochs: must be >= 1, got -1"),
    (["evaluate", "m.npz", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["gradcheck", "simple_net", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
    (["gradcheck", "simple_net", "--eps", "0"], "argument --eps: must be a finite number > 0, got 0"),
    (["gradcheck", "simple_net", "--eps", "nan"], "argument --eps: must be a finite number > 0, got nan"),
])
def test_nonsense_numbers_on_the_command_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "run"
    netspec.train(spec_dict(epochs=1), out=out)
    return out / "model.npz"


def test_predict_refuses_non_finite_input_unless_asked(model_path, tmp_path, capsys):
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[1, 0, 3, 4] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(model_path), str(tmp_path / "x.npy")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'x.npy'}: expected finite numbers, found nan at index (1, 0, 3, 4)\n"
    assert main(["predict", str(model_path), str(tmp_path / "x.npy"), "--json", "--allow-nonfinite"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["outputs"][1] == [None] * 10 and doc["argmax"][0] in range(10)


def test_out_of_memory_in_a_step_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from netspec.model import Model

    def no_memory(self, x, t):
        raise MemoryError

    monkeypatch.setattr(Model, "gradient", no_memory)
    assert main(["run", str(write(tmp_path, spec_dict(epochs=1))), "--out", str(tmp_path / "oom"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory at step 1 (epoch 1, batch of 200); no checkpoint was written yet. "
                          "Try a smaller batch_size")


def test_everything_netspec_writes_is_strict_json(tmp_path, model_path):
    run_dir = model_path.parent
    strict = dict(parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line, **strict)
    json.loads((run_dir / "spec.resolved.json").read_text(), **strict)
    from netspec.jsonout import dumps
    assert dumps({"loss": float("nan"), "acc": np.float32(np.inf), "x": [1.5, -np.inf]}) == \
        '{"loss": null, "acc": null, "x": [1.5, null]}'


def test_run_dir_error_is_an_os_error_and_a_netspec_error():
    assert issubclass(RunDirError, OSError) and issubclass(RunDirError, netspec.NetspecError)


def test_special_files_on_the_command_line_are_refused_quickly(model_path, tmp_path):
    """A FIFO as MODEL used to hang, /dev/zero as INPUT read until memory ran out."""
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    t0 = time.time()
    done = netspec_cli("predict", fifo, "[1, 2]", timeout=60)
    assert done.returncode == 2 and "found a FIFO (named pipe)" in done.stderr, done.stderr
    done = netspec_cli("predict", model_path, "/dev/zero", timeout=60)
    assert done.returncode == 2 and "found a character device" in done.stderr, done.stderr
    empty = tmp_path / "no-images"
    empty.mkdir()
    done = netspec_cli("predict", model_path, f"{empty}/", timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert time.time() - t0 < 60


# --- files that are not specs (issue: reliability round 2) --------------------------------

@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "nul"])
def test_spec_arguments_that_are_not_regular_files_end_in_one_line_at_once(tmp_path, kind):
    """A FIFO named like a spec used to hang validate; /dev/zero read until memory ran out;
    a NUL in a path was a ValueError traceback."""
    if kind == "fifo":
        path = tmp_path / "f.yaml"
        os.mkfifo(path)
        expected = f"error: {path}: expected a spec file (a regular file), found a FIFO (named pipe)"
    elif kind == "device":
        path = "/dev/zero"
        expected = "error: /dev/zero: expected a spec file (a regular file), found a character device"
    elif kind == "folder":
        path = tmp_path
        expected = f"error: {tmp_path}: expected a spec file (a regular file), found a directory"
    else:
        path = "a\0b.yaml"
        expected = "error: 'a\\x00b.yaml': a file name cannot contain a NUL byte"
    for command in ("validate", "expand", "summary", "run"):
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "netspec", command, str(path)] if kind != "nul" else
                              [sys.executable, "-c", f"import sys; from netspec.cli import main; "
                               f"sys.exit(main([{command!r}, 'a\\0b.yaml']))"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert (done.returncode, done.stdout) == (2, ""), (command, done.stderr)
        assert done.stderr.splitlines()[-1] == expected or done.stderr.strip().endswith(expected[len("error: "):]), \
            (command, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and time.monotonic() - t0 < 30


def test_an_include_larger_than_any_spec_is_refused_before_it_is_read(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(17 * 2**20)   # sparse: 17 MiB of nothing, over the 16 MiB limit
    spec = tmp_path / "s.yaml"
    spec.write_text("include: [big.yaml]\ninput: {shape: [2]}\nlayers: [{type: dense, units: 1}]\nloss: mse\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{big}: the spec file is {17 * 2**20} bytes, more than the limit of {16 * 2**20} bytes" in err


def test_an_include_path_with_a_nul_byte_is_a_spec_error(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text('include: ["a\\x00b.yaml"]\ninput: {shape: [2]}\nlayers: [{type: dense, units: 1}]\nloss: mse\n')
    assert main(["validate", str(spec)]) == 2
    assert capsys.readouterr().err == (f"error: {spec}:1:11: include[0]: an include path cannot contain "
                                       "a NUL byte: 'a\\x00b.yaml'\n")


def test_thousands_of_bad_references_are_counted_not_each_spelled_out():
    """2,000 unknown inputs took 39 s of "did you mean" look-ups; past 50 problems they are counted."""
    layers = [{"type": "dense", "units": 1, "name": f"l{i}"} for i in range(10_000)]
    for i in range(1, 10_000):
        layers[i]["inputs"] = [f"zz{i}"]
    start = time.process_time()
    with pytest.raises(netspec.SpecError) as exc:
        netspec.load_spec({"input": {"shape": [1]}, "layers": layers, "loss": "mse"})
    assert time.process_time() - start < 5
    lines = str(exc.value).splitlines()
    assert len(lines) == 51 and lines[0].startswith("<dict>: layers[1].inputs[0]: unknown input 'zz1'")
    assert lines[-1] == "<dict>: layers: and 9949 more problems with names and inputs (only the first 50 are listed)"


def test_a_deeply_nested_spec_dict_or_embedded_spec_is_one_error(tmp_path):
    """Dict specs skipped the depth check files get: a checkpoint whose embedded spec nested
    a value 900 deep ended in a RecursionError traceback."""
    deep = v = {}
    for _ in range(900):
        v["x"] = {}
        v = v["x"]
    spec = {"input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1, "init": deep}], "loss": "mse"}
    with pytest.raises(netspec.SpecError, match=r"<dict>: nested more than 64 levels deep"):
        netspec.load_spec(spec)
    model = netspec.compile({"input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}], "loss": "mse"})
    from netspec.checkpoint import save_checkpoint
    path = tmp_path / "m.npz"
    save_checkpoint(path, model)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["spec"]["layers"][0]["init"] = deep
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    done = netspec_cli("evaluate", path, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"error: {path}: the embedded spec is invalid: {path} (embedded spec): "
                                        "nested more than 64 levels deep; a spec needs only a few (at most 64)"]


def test_a_symlinked_lock_or_metrics_file_is_refused_and_its_target_untouched(tmp_path, capsys):
    """A run directory from elsewhere could point .lock (or metrics.jsonl) at any file the
    user can write: --resume truncated it and wrote a PID into it."""
    spec = write(tmp_path, spec_dict(epochs=1))
    out = tmp_path / "r"
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("KEEP\n")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(victim)
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--epochs", "2", "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: {out / '.lock'} is a symlink; a run directory holds only its own "
                                       "files (remove the link)\n")
    assert victim.read_text() == "KEEP\n"
    (out / ".lock").unlink()
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(victim)
    assert main(["run", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert victim.read_text() == "KEEP\n" and not (out / "metrics.jsonl").is_symlink()
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_run_that_stopped_before_its_first_checkpoint_says_to_use_force(tmp_path, capsys):
    spec = write(tmp_path, spec_dict(epochs=1))
    out = tmp_path / "r"
    out.mkdir()
    (out / "spec.resolved.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: {out} holds a run that stopped before its first checkpoint "
                                       "(metrics.jsonl, spec.resolved.json); nothing to resume: start it again "
                                       "with --force\n")
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"error: {out} holds no checkpoint (model.npz) to resume (its run stopped "
                                       "before the first checkpoint: start it again with --force)\n")
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--force"]) == 0


def test_a_full_disk_when_the_lock_is_written_is_one_error_line(tmp_path):
    """No space for the PID in .lock was an OSError traceback (here: a file size limit of 0)."""
    spec = write(tmp_path, spec_dict(epochs=1))
    child = ("import resource, signal, sys\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
             "from netspec.cli import main\n"
             f"sys.exit(main(['run', {str(spec)!r}, '--out', {str(tmp_path / 'r')!r}, '--quiet']))\n")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [f"error: cannot write the lock file {tmp_path / 'r' / '.lock'}: "
                                        "File too large"]


def _rewrite_meta(path, change):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("case", ["int8", "no spec", "spec is a path"])
def test_a_checkpoint_with_a_bad_meta_is_one_error_line_and_names_no_file(tmp_path, case):
    """meta.dtype int8 was a ValueError traceback; meta.spec as a string was read as a path."""
    model = netspec.compile({"input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}], "loss": "mse"})
    from netspec.checkpoint import save_checkpoint
    path = tmp_path / "m.npz"
    save_checkpoint(path, model)
    secret = tmp_path / "secret.yaml"
    secret.write_text("input: {shape: [2]}\nlayers: [{type: dense, units: 1}]\nloss: mse\n")
    change = {"int8": lambda m: m.update(dtype="int8"), "no spec": lambda m: m.pop("spec"),
              "spec is a path": lambda m: m.update(spec=str(secret))}[case]
    _rewrite_meta(path, change)
    expected = {"int8": f"error: {path}: meta.dtype is 'int8'; expected float16, float32 or float64",
                "no spec": f"error: {path}: the checkpoint holds no embedded spec (a mapping under meta.spec)",
                "spec is a path": f"error: {path}: the checkpoint holds no embedded spec (a mapping under meta.spec)"}
    for command in (["evaluate", path], ["predict", path, "[1, 2]"], ["export", path]):
        done = netspec_cli(*command, timeout=60)
        assert done.returncode == 2 and done.stderr.splitlines() == [expected[case]], (command, done.stderr)


def test_expand_escapes_control_characters_in_file_names(tmp_path, capsys):
    """An include named with a newline printed it raw in an origin comment: the output, itself
    a spec, gained lines."""
    lib = tmp_path / "a\nlayers: [{type: relu}]\n#.yaml"
    lib.write_text("blocks:\n  b: {layers: [{type: tanh}]}\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"include": [lib.name], "input": {"shape": [2]},
                                "layers": [{"type": "b"}, {"type": "dense", "units": 1}], "loss": "mse"}))
    assert main(["expand", str(spec)]) == 0
    out = capsys.readouterr().out
    comments = [l for l in out.splitlines() if l.lstrip().startswith("#")]
    assert any("a\\nlayers: [{type: relu}]\\n#.yaml:2: block b" in c for c in comments)
    flat = yaml.safe_load(out)
    assert [l["type"] for l in flat["layers"]] == ["tanh", "dense"]


def test_predict_names_an_input_type_it_does_not_read(model_path, tmp_path, capsys):
    """x.gif got "expected UTF-8 JSON text ... arrays go in .npy files"."""
    gif = tmp_path / "x.gif"
    gif.write_bytes(b"GIF89a\x01\x00\x01\x00")
    assert main(["predict", str(model_path), str(gif)]) == 2
    assert capsys.readouterr().err == (f"error: {gif}: '.gif' images are not an input netspec reads; give image "
                                       "files (.png, .jpg, .jpeg, .bmp) or folders of them, one .npy array, or a "
                                       "JSON list (inline or .json)\n")


def _killed_writer(folder, prefix, suffix):
    """The temporary a process killed with SIGKILL in the middle of an atomic write leaves, and its pid."""
    child = ("import os, signal, sys\n"
             "from netspec.atomic import atomic_write\n"
             f"with atomic_write(os.path.join(sys.argv[1], 'out'), 'wb', prefix={prefix!r}, suffix={suffix!r}) as f:\n"
             "    f.write(b'half a file'); f.flush()\n"
             "    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = set(os.listdir(folder))
    done = subprocess.run([sys.executable, "-c", child, str(folder)], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    left = sorted(set(os.listdir(folder)) - before)
    assert len(left) == 1 and left[0].endswith(suffix)
    return folder / left[0]


def test_a_kill_during_export_or_save_leaves_a_temporary_the_next_write_removes(tmp_path):
    """kill -9 during export left hidden .netspec-*.tmp files in the -o folder that nothing removed.
    Temporaries carry their writer's pid; a write removes those of writers no longer running, and
    leaves alone a running writer's, one without a pid, and files that merely look alike."""
    from netspec.atomic import TEMP_NAME
    from netspec.checkpoint import save_checkpoint
    dead_export = _killed_writer(tmp_path, ".netspec-", ".tmp")
    dead_save = _killed_writer(tmp_path, ".model-", ".npz.tmp")
    assert TEMP_NAME.fullmatch(dead_export.name).group("pid") is not None
    live = tmp_path / f".netspec-{os.getpid()}_abcd1234.tmp"     # this test's own process is running
    no_pid = tmp_path / ".netspec-k1ll3d0x.tmp"                  # written before temporaries named their pid
    lookalike = tmp_path / "notes-123_x.tmp"
    for p in (live, no_pid, lookalike):
        p.write_text("keep")
    model = netspec.compile({"input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}], "loss": "mse"})
    save_checkpoint(tmp_path / "m.npz", model)
    assert not dead_export.exists() and not dead_save.exists()
    assert all(p.read_text() == "keep" for p in (live, no_pid, lookalike))
    assert sorted(os.listdir(tmp_path)) == sorted(["m.npz", live.name, no_pid.name, lookalike.name])
    if has("onnx"):
        again = _killed_writer(tmp_path, ".netspec-", ".tmp")
        done = netspec_cli("export", tmp_path / "m.npz", "-o", tmp_path / "m.onnx", timeout=120)
        assert done.returncode == 0, done.stderr
        assert not again.exists()
        assert sorted(os.listdir(tmp_path)) == sorted(["m.npz", "m.onnx", live.name, no_pid.name, lookalike.name])


def test_an_include_of_a_file_that_is_not_a_spec_echoes_none_of_its_content(tmp_path):
    """include: [/etc/shadow] printed its password hashes back as 'unknown key' errors."""
    secret = "root:$y$j9T$s3cr3th4sh:19000:0:99999:7:::\nadmin:*:19000:0:99999:7:::\n"
    (tmp_path / "shadow").write_text(secret)
    (tmp_path / "shadow.yaml").write_text(secret)
    body = "input: {shape: [2]}\nlayers: [{type: dense, units: 1}]\nloss: mse\n"
    for target, message in [
            ("shadow", "s.yaml:1:11: include[0]: include 'shadow' is not a spec file: expected a name ending "
                       "in .yaml, .yml, .json"),
            ("shadow.yaml", "shadow.yaml:1:1: an included file must be a mapping with a 'blocks' key (it has "
                            "none) (included via s.yaml -> shadow.yaml)")]:
        (tmp_path / "s.yaml").write_text(f"include: [{target}]\n" + body)
        for command in ("validate", "expand", "run"):
            done = netspec_cli(command, "s.yaml", cwd=tmp_path, timeout=60)
            assert (done.returncode, done.stdout) == (2, ""), (command, done.stdout)
            assert done.stderr.splitlines() == [f"error: {message}"], (command, done.stderr)
            assert "s3cr3t" not in done.stderr and "admin" not in done.stderr
