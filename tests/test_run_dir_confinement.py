"""Nothing outside the run directory (or an explicit -o path) is created or changed.

A run directory can come from someone else (a tarball of a colleague's run), so it
may hold symlinks, FIFOs or hard links where netspec expects its own files. Every
command that reads or writes one (run --resume, evaluate, predict, export) is run
here against a hostile run directory, and every file outside it (the working
directory, HOME, the targets of the links) is compared byte for byte, with its
modification time, before and after.
"""
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from extras import has

SPEC = {"name": "confined", "seed": 1, "input": {"shape": [1, 28, 28]},
        "layers": [{"type": "conv2d", "filters": 4, "kernel": 3}, {"type": "relu"}, {"type": "maxpool2d", "size": 2},
                   {"type": "dense", "units": 10}],
        "loss": "softmax_cross_entropy",
        "train": {"data": {"source": "mnist-5k", "limit_train": 200, "limit_test": 50},
                  "optimizer": {"type": "sgd", "lr": 0.1}, "epochs": 1, "batch_size": 50}}


def snapshot(root, skip=()):
    """{path relative to root: what it is}: type, size, mtime and content hash (or a link's target)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skip]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if path in skip:
                continue
            st = os.lstat(path)
            if os.path.islink(path):
                what = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    what = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
            else:
                what = ("other", st.st_mode, st.st_mtime_ns)
            found[os.path.relpath(path, root)] = what
    return found


def cli(*argv, cwd, env):
    return subprocess.run([sys.executable, "-m", "netspec", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture
def world(tmp_path):
    """tmp_path/{cwd, home, outside}: a trained run in cwd/run, and files a hostile run could aim at."""
    for d in ("cwd", "home", "outside", "mpl"):
        (tmp_path / d).mkdir()
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"),
               MPLCONFIGDIR=str(tmp_path / "mpl"))   # matplotlib's own font cache is not netspec's file
    (tmp_path / "cwd" / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    done = cli("run", "spec.yaml", "--out", "run", "--quiet", cwd=tmp_path / "cwd", env=env)
    assert done.returncode == 0, done.stderr
    return tmp_path, env


def test_a_hostile_run_directory_changes_nothing_outside_it(world):
    root, env = world
    cwd, run, outside = root / "cwd", root / "cwd" / "run", root / "outside"
    # every file the run directory holds becomes a link to a file outside (with the right content,
    # where netspec must read it), and more links wait under the names netspec writes
    for name in ("model.npz", "spec.resolved.json", "metrics.jsonl"):
        shutil.copyfile(run / name, outside / name)
        (run / name).unlink()
        (run / name).symlink_to(outside / name)
    for name in ("curves.png", "misclassified.png", "filters.png", "model.onnx", ".netspec-1_abcdefgh.tmp",
                 ".model-2_abcdefgh.npz.tmp", ".netspec-k1ll3d0x.tmp"):
        target = outside / f"victim-{name.strip('.')}"
        target.write_text("KEEP\n")
        if (run / name).exists() or (run / name).is_symlink():
            (run / name).unlink()
        (run / name).symlink_to(target)
    (run / "subdir-link").symlink_to(outside, target_is_directory=True)
    np.save(cwd / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    before = snapshot(root, skip={str(run), str(root / "mpl")})

    done = cli("run", "--resume", "run", "--epochs", "2", "--quiet", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    for name in ("model.npz", "spec.resolved.json", "metrics.jsonl"):
        assert not (run / name).is_symlink() and (run / name).is_file(), name   # replaced, not written through
    commands = [("evaluate", "run/model.npz"), ("evaluate", "run/model.npz", "--json"),
                ("predict", "run/model.npz", "x.npy"), ("predict", "run/model.npz", "x.npy", "--json")]
    if has("onnx"):
        commands += [("export", "run/model.npz"), ("export", "run/model.npz", "-o", "run/other.onnx")]
    for argv in commands:
        done = cli(*argv, cwd=cwd, env=env)
        assert done.returncode == 0, (argv, done.stderr)
    assert snapshot(root, skip={str(run), str(root / "mpl")}) == before
    if has("onnx"):
        assert not (run / "model.onnx").is_symlink() and (run / "other.onnx").is_file()
    if has("matplotlib"):
        assert not (run / "curves.png").is_symlink()


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl"])
def test_a_hard_link_in_the_run_directory_is_refused_and_its_other_name_untouched(world, name):
    """A hard link shares its content with a file outside: writing the PID into .lock (or appending
    metrics) through it would change that file. The lock is taken before anything is written."""
    root, env = world
    run = root / "cwd" / "run"
    victim = root / "outside" / "victim.txt"
    victim.write_text("KEEP\n")
    (run / name).unlink()
    os.link(victim, run / name)
    before = snapshot(root / "outside")
    done = cli("run", "--resume", "run", "--epochs", "2", "--quiet", cwd=root / "cwd", env=env)
    if name == ".lock":
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.splitlines() == [f"error: run/{name} has 1 other hard link (its content is shared with "
                                            "a file outside the run directory); a run directory holds only its own "
                                            "files (remove it)"]
    else:   # metrics.jsonl is rewritten by an atomic rename when the run starts: the link is dropped, not written
        assert done.returncode == 0, done.stderr
        assert os.stat(run / name).st_nlink == 1
    assert snapshot(root / "outside") == before and victim.read_text() == "KEEP\n"


def test_a_fifo_where_the_lock_goes_is_refused_at_once(world):
    root, env = world
    run = root / "cwd" / "run"
    (run / ".lock").unlink()
    os.mkfifo(run / ".lock")
    done = cli("run", "--resume", "run", "--epochs", "2", "--quiet", cwd=root / "cwd", env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == ["error: run/.lock is not a regular file; a run directory holds only "
                                        "its own files (remove it)"]
