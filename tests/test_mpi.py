"""Data-parallel training under mpiexec: same answer as one process, one writer, no hangs.

Each test launches real MPI jobs (``mpiexec -n K``) of tests/mpi/worker.py or of
the ``netspec`` command; they skip where mpi4py or mpiexec is missing
(``pip install ".[mpi]"`` brings both).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from extras import need, need_program

import netspec
from netspec.checkpoint import read_checkpoint
from netspec.distributed import Serial, share, world
from netspec.runner import trainer_for

need("mpi4py")
MPIEXEC = need_program("mpiexec", "pip install \".[mpi]\" brings mpich")

WORKER = str(Path(__file__).resolve().parent / "mpi" / "worker.py")
NETSPEC = [sys.executable, "-m", "netspec.cli"]
TIMEOUT = 120


def base_spec(**train):
    spec = {"netspec": 1, "name": "mpi_eq", "seed": 3, "dtype": "float64", "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "conv2d", "filters": 4, "kernel": 5, "stride": 2}, {"type": "relu"},
                       {"type": "maxpool2d", "size": 2}, {"type": "dense", "units": 32}, {"type": "tanh"},
                       {"type": "dense", "units": 10}],
            "loss": "softmax_cross_entropy",
            "train": {"data": {"source": "mnist-5k", "normalize": True},
                      "optimizer": {"type": "momentum", "lr": 0.05}, "steps": 20, "steps_per_epoch": 10,
                      "batch_size": 10, "eval_samples": 101}}
    spec["train"].update(train)
    return spec


def write_spec(tmp_path, spec, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(spec))
    return p


def mpirun(k, *args, env=None, timeout=TIMEOUT):
    e = dict(os.environ)
    e.pop("OMP_NUM_THREADS", None)   # each test says what it wants
    e.update(env or {})
    return subprocess.run([MPIEXEC, "-n", str(k), *args], capture_output=True, text=True, timeout=timeout, env=e)


def trained(path):
    z = np.load(path)
    params = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
    return params, json.loads(str(z["history"]))


def relative_difference(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-300)) for k in a)


def test_shares_of_a_batch():
    assert [share(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [share(2, 3, r) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]   # a rank may get nothing
    assert sum(hi - lo for lo, hi in (share(128, 5, r) for r in range(5))) == 128


def test_without_mpiexec_nothing_imports_mpi4py():
    code = ("import sys, netspec\nfrom netspec.distributed import world\n"
            "assert type(world()).__name__ == 'Serial'\n"
            "netspec.train({'input': {'shape': [1]}, 'layers': [{'type': 'dense', 'units': 1}], 'loss': 'mse',"
            " 'train': {'data': {'source': 'function', 'coefficients': [1, 0], 'n_train': 8, 'n_test': 4},"
            " 'epochs': 1, 'batch_size': 4}})\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert isinstance(world(), Serial)


@pytest.mark.parametrize("k", [2, 3])
def test_k_ranks_give_the_parameters_of_one_process(tmp_path, k):
    """Float64, no dropout or augmentation: 20 steps of a batch of 10 (uneven shares for K = 3)."""
    path = write_spec(tmp_path, base_spec())
    out = mpirun(k, sys.executable, WORKER, "train", str(path), str(tmp_path / "k.npz"))
    assert out.returncode == 0, out.stderr
    mine, history = trained(tmp_path / "k.npz")
    h = trainer_for(str(path), save=False, quiet=True, progress=False).run()
    one = {k: v for k, v in h.model.params.items()}
    assert history[-1]["step"] == 20
    assert relative_difference(one, mine) <= 1e-10
    for a, b in zip(list(h), history):   # losses and (split, summed) evaluation agree too
        for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-10)


def test_dropout_and_augmentation_are_reproducible_for_a_fixed_k(tmp_path):
    spec = base_spec(augment={"shift": 2}, optimizer={"type": "adam", "lr": 0.003})
    spec["layers"].insert(4, {"type": "dropout", "ratio": 0.3})
    path = write_spec(tmp_path, spec)
    runs = []
    for name in ("a", "b"):
        out = mpirun(2, sys.executable, WORKER, "train", str(path), str(tmp_path / f"{name}.npz"))
        assert out.returncode == 0, out.stderr
        runs.append(trained(tmp_path / f"{name}.npz")[0])
    for key in runs[0]:
        np.testing.assert_array_equal(runs[0][key], runs[1][key])
    # each rank draws its own masks and shifts: not the single-process stream
    one = trainer_for(str(path), save=False, quiet=True, progress=False).run().model.params
    assert relative_difference(one, runs[0]) > 1e-6


def test_a_stop_asked_on_one_rank_stops_every_rank(tmp_path):
    """Callbacks may decide per rank (a CPU-time budget): the ranks agree at the epoch's end."""
    path = write_spec(tmp_path, base_spec())
    out = mpirun(2, sys.executable, WORKER, "train", str(path), str(tmp_path / "k.npz"), "--stop-on-rank", "1",
                 timeout=60)
    assert out.returncode == 0, out.stderr
    _, history = trained(tmp_path / "k.npz")
    assert [m["step"] for m in history] == [10]


def test_cli_run_writes_one_run_directory_and_resumes_with_another_k(tmp_path):
    path = write_spec(tmp_path, base_spec())
    run = tmp_path / "run"
    out = mpirun(2, *NETSPEC, "run", str(path), "--out", str(run), "--epochs", "1", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("training mpi_eq") == 1 and "data-parallel on 2 ranks x 1 thread" in out.stdout
    assert out.stdout.count("saved ") == 1 and out.stdout.count("epoch 1/1") == 1
    assert sorted(p.name for p in run.iterdir() if p.suffix in (".npz", ".json", ".jsonl")) == [
        "metrics.jsonl", "model.npz", "result.json", "spec.resolved.json"]  # rank 0 alone writes
    assert not list(tmp_path.glob("runs")) and not list(Path.cwd().glob("runs/mpi_eq*"))
    # continue with 3 ranks: the same result as 20 steps on one process
    out = mpirun(3, *NETSPEC, "run", "--resume", str(run), "--epochs", "2", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stdout and "epoch 2/2" in out.stdout
    resumed = netspec.load(run / "model.npz").params
    one = trainer_for(str(path), save=False, quiet=True, progress=False).run().model.params
    assert relative_difference(one, resumed) <= 1e-10
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_a_spec_error_is_reported_once_with_exit_2(tmp_path):
    path = write_spec(tmp_path, {**base_spec(), "layers": [{"type": "dense", "unts": 3}]})
    out = mpirun(2, *NETSPEC, "run", str(path), "--out", str(tmp_path / "r"))
    assert out.returncode == 2
    assert out.stderr.count("unknown key 'unts'") == 1 and "Traceback" not in out.stderr


def test_divergence_on_all_ranks_stops_them_together(tmp_path):
    spec = {"name": "diverge", "input": {"shape": [1]},
            "layers": [{"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dense", "units": 1}],
            "loss": "mse",
            "train": {"data": {"source": "function", "coefficients": [1, 0, 0, 0], "n_train": 64, "n_test": 16},
                      "optimizer": {"type": "sgd", "lr": 1e6}, "epochs": 50, "batch_size": 8, "steps_per_epoch": 1}}
    path = write_spec(tmp_path, spec)
    out = mpirun(2, *NETSPEC, "run", str(path), "--out", str(tmp_path / "r"), "--no-progress")
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("training diverged") == 1 and "parameters were not updated" in out.stderr
    netspec.load(tmp_path / "r" / "model.npz")   # the last good checkpoint is intact


@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_one_failing_rank_ends_the_job(tmp_path, fault):
    """An exception (reported, then MPI Abort) or a SIGKILL on rank 1 ends every rank in seconds."""
    path = write_spec(tmp_path, base_spec(steps=100000))
    out = mpirun(2, sys.executable, WORKER, "cli", fault, "3", "1", "--", "run", str(path), "--out",
                 str(tmp_path / "r"), "--no-progress", timeout=60)
    assert out.returncode != 0
    if fault == "raise":
        assert "rank 1 of 2 failed: RuntimeError: injected failure at step 3; ending every rank" in out.stderr
    else:
        assert "KILLED" in out.stdout + out.stderr or "signal 9" in out.stdout + out.stderr


def test_ctrl_c_to_mpiexec_stops_every_rank_at_one_step_and_saves(tmp_path):
    """mpiexec forwards SIGINT; the ranks agree on the step (the stop flag rides in the Allreduce)."""
    import signal
    import time
    # log_every: 1 prints "step 1: ..." from inside the training loop, after the signal
    # handlers are installed (metrics.jsonl is written before): the signal goes only then.
    path = write_spec(tmp_path, base_spec(steps=10**6, steps_per_epoch=50, log_every=1))
    run, log = tmp_path / "r", tmp_path / "stdout.txt"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with open(log, "w") as stdout:
        proc = subprocess.Popen([MPIEXEC, "-n", "2", *NETSPEC, "run", str(path), "--out", str(run), "--no-progress"],
                                stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 60
        while "step 1: loss" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the run did not start training: {proc.communicate()}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    out = log.read_text()
    assert proc.returncode == 130, err
    assert out.count("SIGINT: stopped at step") == 1 and "continue with: netspec run --resume" in out
    step = int(out.split("SIGINT: stopped at step ")[1].split(";")[0])
    meta = read_checkpoint(run / "model.npz")[0]
    assert meta["trainer"]["step"] == step > 0


def rank_infos(tmp_path, env=None):
    """`netspec info --json` of each of 2 ranks (each rank writes its own file: stdout would interleave)."""
    for old in tmp_path.glob("info.*.json"):
        old.unlink()
    out = mpirun(2, sys.executable, WORKER, "info", str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("info.*.json"))]


def test_info_shows_rank_size_and_threads(tmp_path):
    infos = rank_infos(tmp_path)
    assert [i["mpi_rank"] for i in infos] == [0, 1]
    cores = len(os.sched_getaffinity(0))
    for i in infos:
        assert i["mpi_size"] == 2 and i["mpi_omp_num_threads"] == str(max(1, cores // 2))
        if "openmp_max_threads" in i:   # the compiled kernels (the numpy fallback has no OpenMP)
            assert i["openmp_max_threads"] == max(1, cores // 2)
    # the user's choice wins
    assert [i["mpi_omp_num_threads"] for i in rank_infos(tmp_path, env={"OMP_NUM_THREADS": "3"})] == ["3", "3"]


@pytest.mark.slow
def test_simple_convnet_on_two_ranks_matches_one_process(tmp_path):
    """The acceptance run: `mpiexec -n 2 netspec run specs/simple_convnet.yaml` within 0.5 points of one process."""
    spec = str(Path(__file__).resolve().parent.parent / "specs" / "simple_convnet.yaml")
    out = mpirun(2, *NETSPEC, "run", spec, "--out", str(tmp_path / "two"), "--no-progress", timeout=3600)
    assert out.returncode == 0, out.stderr
    two = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    one = subprocess.run([*NETSPEC, "run", spec, "--out", str(tmp_path / "one"), "--no-progress"],
                         capture_output=True, text=True, timeout=3600)
    assert one.returncode == 0, one.stderr
    acc = {k: float(netspec.load(tmp_path / k / "model.npz").accuracy(*_test_set(spec))) for k in ("one", "two")}
    assert abs(acc["one"] - acc["two"]) <= 0.005, (acc, two)


def _test_set(spec_path):
    from netspec.runner import load_spec_data
    spec = netspec.load_spec(spec_path)
    d = load_spec_data(spec, np.float32)
    return d.x_test, d.t_test


def mpirun_mpmd(first, second, env=None, timeout=TIMEOUT):
    """One rank runs ``first``, the other ``second`` (MPI's multiple-program launch)."""
    e = dict(os.environ)
    e.pop("OMP_NUM_THREADS", None)
    e.update(env or {})
    return subprocess.run([MPIEXEC, "-n", "1", *first, ":", "-n", "1", *second], capture_output=True, text=True,
                          timeout=timeout, env=e)


def test_ranks_given_different_specs_refuse_to_start_with_one_line(tmp_path):
    """A mismatched spec on one rank ended in a raw MPI_Abort stack (exit 142)."""
    a = write_spec(tmp_path, base_spec(steps=4), "a.yaml")
    other = base_spec(steps=4)
    other["layers"][3]["units"] = 16
    b = write_spec(tmp_path, other, "b.yaml")
    run = tmp_path / "r"
    out = mpirun_mpmd([*NETSPEC, "run", str(a), "--out", str(run), "--no-progress"],
                      [*NETSPEC, "run", str(b), "--out", str(run), "--no-progress"])
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.splitlines() == ["error: rank 1 of 2 was given a different spec than rank 0 (first at "
                                       "layers[3].units): every rank must run the same spec"]
    assert not (run / "model.npz").exists() and not (run / "metrics.jsonl").exists()


def test_ranks_that_load_different_data_refuse_to_start_with_one_line(tmp_path):
    """Ranks whose data file differed (another host's copy) trained silently on the mix. The same
    spec with its relative data path in two folders: the specs agree, the data does not."""
    rng = np.random.default_rng(0)
    specs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        x = rng.random((20, 1, 28, 28)).astype(np.float32)
        t = rng.integers(0, 10, 20)
        np.savez(tmp_path / folder / "data.npz", x_train=x, t_train=t, x_test=x[:5], t_test=t[:5])
        spec = base_spec(steps=4)
        spec["train"]["data"] = {"source": "npz", "path": "data.npz"}
        specs.append(write_spec(tmp_path / folder, spec))
    run = tmp_path / "r"
    out = mpirun_mpmd([*NETSPEC, "run", str(specs[0]), "--out", str(run), "--no-progress"],
                      [*NETSPEC, "run", str(specs[1]), "--out", str(run), "--no-progress"])
    assert (out.returncode, out.stdout) == (2, "")
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 of 2 loaded different data than rank 0 (checksum ")
    assert lines[0].endswith("): every rank must read the same dataset; check the data files on each host")
    assert not (run / "model.npz").exists()
    # the same data in both folders: the two specs train together
    (tmp_path / "b" / "data.npz").write_bytes((tmp_path / "a" / "data.npz").read_bytes())
    out = mpirun_mpmd([*NETSPEC, "run", str(specs[0]), "--out", str(run), "--no-progress"],
                      [*NETSPEC, "run", str(specs[1]), "--out", str(run), "--no-progress"])
    assert out.returncode == 0, out.stderr
    assert (run / "model.npz").exists()
