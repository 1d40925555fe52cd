"""netspec tune on Optuna: trials are run directories that never read the test set; the budget holds
over several workers (SQLite here, PostgreSQL in test_tune_postgres.py); a signal or a killed worker
loses no finished trial and the same command resumes; a diverging trial fails and the study goes on."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from extras import need

import netspec
from netspec import cli
from netspec.spec import load_spec

optuna = need("optuna")

SPEC = """\
netspec: 1
name: tiny
seed: 3
input: {{shape: [784]}}
layers:
  - {{type: dense, name: hidden, units: {units}}}
  - {{type: relu}}
  - {{type: dense, name: out, units: 10}}
loss: softmax_cross_entropy
train:
  data: {data}
  optimizer: {{type: sgd, lr: 0.1}}
  epochs: {epochs}
  batch_size: {batch}
tune:
  trials: {trials}
  space:
{space}
"""
SPACE = ("train.optimizer.lr: {log_uniform: [0.01, 1.0]}", "layers.hidden.units: {choice: [8, 16]}")


def write(tmp_path, name="spec.yaml", *, units=16, epochs=2, batch=60, trials=4, space=SPACE,
          data="{source: mnist-5k, flatten: true, limit_train: 300, validation: 0.2}"):
    """A tiny spec with a tune section (240 training and 60 validation digits: trials of milliseconds)."""
    path = tmp_path / name
    path.write_text(SPEC.format(units=units, epochs=epochs, batch=batch, trials=trials, data=data,
                                space="".join(f"    {s}\n" for s in space)))
    return path


# trials of a few seconds (6 epochs of 3,200 digits): long enough to be stopped in the middle
SLOW = dict(units=300, epochs=6, batch=50, data="{source: mnist-5k, flatten: true, validation: 0.2}",
            space=["train.optimizer.lr: {log_uniform: [0.01, 1.0]}"])


def study_of(out, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def table(out):
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def tune_cli(*args):
    return subprocess.Popen([sys.executable, "-m", "netspec", "tune", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(proc, out, trial, timeout=120):
    """Wait until ``trial`` runs and has reported at least one epoch."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if (out / "trials" / f"{trial:04d}").exists():  # the study exists: reading it races with nothing
            try:
                t = next((t for t in study_of(out).trials if t.number == trial), None)
            except Exception:  # the study is being created
                t = None
            if t is not None and t.state.name == "RUNNING" and t.intermediate_values:
                return
        time.sleep(0.05)
    raise AssertionError(f"trial {trial} did not start within {timeout} s")


def ended(study):
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def test_a_study_of_run_directories(tmp_path, capsys):
    spec = write(tmp_path)
    out = tmp_path / "t"
    assert cli.main(["tune", str(spec), "--out", str(out), "--quiet"]) == 0
    summary = capsys.readouterr().out
    rows = table(out)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    # trial 0 trains the spec as written: the same val_acc as netspec run of it
    assert (rows[0]["baseline"], rows[0]["train.optimizer.lr"], rows[0]["layers.hidden.units"]) == ("True", "0.1", "16")
    plain = netspec.train(str(spec))
    assert float(rows[0]["val_acc"]) == plain[-1]["val_acc"]
    for r in rows:  # every trial an ordinary run directory, trained on its values, never on the test set
        run = out / "trials" / f"{int(r['number']):04d}"
        assert r["run_dir"] == str(run)
        resolved = json.loads((run / "spec.resolved.json").read_text())
        assert resolved["train"]["optimizer"]["lr"] == float(r["train.optimizer.lr"])
        assert resolved["layers"][0]["units"] == int(r["layers.hidden.units"]) and "tune" not in resolved
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["val_acc"] == float(r["val_acc"]) and not any("test_acc" in m for m in metrics)
        assert "test_acc" not in json.loads((run / "result.json").read_text())
        assert (run / "model.npz").exists()
    # the best trial's spec trains with netspec run as is, to the same validation accuracy
    info = json.loads((out / "trials.json").read_text())
    best = info["best"]
    assert best["val_acc"] == max(float(r["val_acc"]) for r in rows if r["state"] == "COMPLETE")
    assert f"best: trial {best['number']}, val_acc {best['val_acc']:.4f}" in summary
    again = netspec.train(str(out / "best.yaml"))
    assert again[-1]["val_acc"] == best["val_acc"] and again.test_acc is not None
    assert load_spec(out / "best.yaml").tune is None
    # the same command again: nothing left to run; a larger --trials extends the study
    assert cli.main(["tune", str(spec), "--out", str(out), "--quiet"]) == 0
    assert len(study_of(out).trials) == 4
    assert cli.main(["tune", str(spec), "--out", str(out), "--quiet", "--trials", "5"]) == 0
    assert [t.number for t in ended(study_of(out))] == [0, 1, 2, 3, 4]
    assert "5 of 5 trials ended" in capsys.readouterr().out


def test_no_trial_reads_the_test_set(tmp_path, capsys):
    """Test arrays of the wrong shape: netspec run fails on them, netspec tune never meets them."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.random((100, 784)), t_train=rng.integers(0, 10, 100),
             x_test=rng.random((20, 3)), t_test=rng.integers(0, 10, 20))
    spec = write(tmp_path, trials=2, data="{source: npz, path: d.npz, validation: 0.2}")
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "(test)" in capsys.readouterr().err
    assert cli.main(["tune", str(spec), "--out", str(tmp_path / "t"), "--quiet"]) == 0
    assert [t.state.name for t in study_of(tmp_path / "t").trials] == ["COMPLETE", "COMPLETE"]


def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path, capsys):
    spec = write(tmp_path, trials=2, space=["train.optimizer.lr: {choice: [1.0e+30, 0.1]}"])
    spec.write_text(spec.read_text().replace("  trials: 2\n", "  sampler: grid\n"))
    assert cli.main(["tune", str(spec), "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    rows = {float(r["train.optimizer.lr"]): r for r in table(tmp_path / "t")}
    assert rows[1e30]["state"] == "FAIL" and rows[1e30]["note"].startswith("training diverged: loss is nan")
    assert rows[0.1]["state"] == "COMPLETE"
    assert "2 of 2 trials ended: 1 complete, 0 pruned, 1 failed" in out


def test_two_workers_share_one_sqlite_study(tmp_path):
    spec = write(tmp_path, trials=6, epochs=3)
    out = tmp_path / "t"
    rc, stdout, err = finish(tune_cli(spec, "--workers", "2", "--out", out))
    assert rc == 0, err
    trials = study_of(out).trials
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert sorted(t.number for t in counted) == list(range(6))  # none lost, none duplicated
    # Both workers may start a trial for the last place at once: the later one is recorded as
    # failed and never trained ("not run", netspec.tuning.Worker._check_place), after the six.
    for t in trials:
        if t not in counted:
            assert t.state.name == "FAIL" and t.number >= 6, (t.number, t.state.name)
            assert t.user_attrs["note"] == "not run: the study has its 6 trials" and "run_dir" not in t.user_attrs
    assert len({t.user_attrs["run_dir"] for t in counted}) == 6
    assert sorted(os.listdir(out / "trials")) == [f"{n:04d}" for n in range(6)]
    assert len({t.user_attrs["pid"] for t in counted}) == 2, stdout  # both workers ran trials
    assert "6 of 6 trials ended" in stdout


POP = """\
import sys, time
import optuna
from netspec.tuning import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="race", storage=open_storage(sys.argv[1]))
while time.time() < float(sys.argv[2]):
    pass
taken = []
while (trial_id := study._pop_waiting_trial_id()) is not None:
    taken.append(trial_id)
print(" ".join(map(str, taken)))
"""


def test_two_workers_never_take_the_same_queued_trial_from_sqlite(tmp_path):
    """Optuna takes a queued trial (the baseline) by reading it waiting, then marking it running.
    On SQLite that was not atomic between processes: two workers both took the trial and both
    trained it in trials/0000 (measured before the fix: two processes popping 40 queued trials at
    once took 7-11 of them twice, in each of 3 runs). Every trial must go to exactly one."""
    from netspec.tuning import open_storage
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    for i in range(40):
        study.enqueue_trial({"x": float(i)})
    start = time.time() + 3   # both processes load the study first, then race from the same moment
    procs = [subprocess.Popen([sys.executable, "-c", POP, url, str(start)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    taken = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(taken[0] + taken[1], key=int) == [str(t._trial_id) for t in study.get_trials()]
    assert not set(taken[0]) & set(taken[1])


def test_an_sqlite_claim_of_a_queued_trial_takes_the_write_lock_first(tmp_path):
    """The mechanism behind the test above, checked directly: the transaction that marks a queued
    trial running starts with a write (SQLite's write lock), before it reads the trial's state;
    other transactions (reads, a finished trial's state) are as sqlite3 makes them."""
    from sqlalchemy import event
    from netspec.tuning import _TAKE_WRITE_LOCK, open_storage
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 1.0})
    seen = []
    event.listen(storage.engine, "before_cursor_execute", lambda conn, cur, sql, *a: seen.append(sql))
    trial_id = study._pop_waiting_trial_id()
    assert trial_id is not None
    assert seen.count(_TAKE_WRITE_LOCK) == 1
    lock = seen.index(_TAKE_WRITE_LOCK)
    update = next(i for i, sql in enumerate(seen) if sql.lstrip().upper().startswith("UPDATE TRIALS"))
    assert lock < update and any("FROM trials" in sql for sql in seen[lock + 1:update])   # lock, read, mark
    seen.clear()
    study.get_trials()
    study.tell(study.trials[0].number, 1.0)
    assert seen and _TAKE_WRITE_LOCK not in seen


def test_sigterm_fails_the_running_trial_and_the_same_command_resumes(tmp_path):
    spec = write(tmp_path, trials=2, **SLOW)
    out = tmp_path / "t"
    proc = tune_cli(spec, "--out", out)
    wait_for(proc, out, 1)
    proc.send_signal(signal.SIGTERM)
    rc, stdout, err = finish(proc)
    assert rc == 143, err
    assert "interrupted: finished trials are kept in the study; run the same command to continue" in err
    first = study_of(out).trials
    assert [t.state.name for t in first] == ["COMPLETE", "FAIL"]
    assert first[1].user_attrs["note"] == "stopped by SIGTERM"
    assert (out / "trials" / "0001" / "model.npz").exists()  # stopped at a step boundary, checkpointed
    rc, stdout, err = finish(tune_cli(spec, "--out", out))
    assert rc == 0, err
    study = study_of(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert (study.trials[0].value, study.trials[0].params) == (first[0].value, first[0].params)


def test_a_worker_killed_mid_trial_loses_no_finished_trial(tmp_path):
    spec = write(tmp_path, trials=2, **SLOW)
    out = tmp_path / "t"
    proc = tune_cli(spec, "--out", out)
    wait_for(proc, out, 1)
    proc.kill()
    proc.communicate()
    first = study_of(out).trials
    assert [t.state.name for t in first] == ["COMPLETE", "RUNNING"]  # SIGKILL: nobody told the study
    rc, stdout, err = finish(tune_cli(spec, "--out", out))
    assert rc == 0, err
    assert "trial 1: its worker on this machine is gone; recorded as failed" in stdout
    study = study_of(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert (study.trials[0].value, study.trials[0].params) == (first[0].value, first[0].params)
    assert table(out)[1]["note"] == "the worker stopped before the trial ended (killed, or its machine lost)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_storage_is_one_line(tmp_path, capsys):
    spec = write(tmp_path)
    url = f"postgresql://netspec:secret@127.0.0.1:{free_port()}/db"
    t0 = time.monotonic()
    assert cli.main(["tune", str(spec), "--storage", url, "--out", str(tmp_path / "t")]) == 2
    assert time.monotonic() - t0 < 30
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "secret" not in err
    assert err.startswith(f"error: cannot open the study storage postgresql+psycopg://netspec:***@127.0.0.1:")
    assert not (tmp_path / "t").exists()  # nothing created for a study that could not be opened
    assert cli.main(["tune", str(spec), "--storage", "nosuch://x", "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot open the study storage nosuch://x: ")


def test_a_study_of_another_spec_is_refused(tmp_path, capsys):
    out = tmp_path / "t"
    assert cli.main(["tune", str(write(tmp_path, trials=1)), "--out", str(out), "--quiet"]) == 0
    other = write(tmp_path, "other.yaml", trials=1, space=["train.optimizer.lr: {log_uniform: [0.01, 0.5]}"])
    capsys.readouterr()
    assert cli.main(["tune", str(other), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: study 'tiny' in sqlite:///{out / 'study.db'} was started from another spec (first at "
        "tune.space.layers.hidden.units); give another --study, or the spec it was started from\n")
