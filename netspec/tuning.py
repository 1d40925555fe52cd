"""``netspec tune``: a search over a spec's ``tune:`` section, with Optuna as the engine.

Design: Optuna draws the values (TPE, random or grid), compares the curves for
pruning (its median pruner) and keeps the study in an SQLAlchemy database: by
default an SQLite file in the tune directory, or any URL such as
``postgresql://``, which is how workers on several machines share one study.
netspec adds what a trial is and how a study survives its workers:

- A trial is an ordinary run directory, ``OUT/trials/NNNN``, trained from the
  spec its values give (netspec.spec.space). The test arrays are dropped before
  the trainer sees them: no trial reads the test set.
- The budget counts the trials that ended on their own (complete, pruned, or
  failed by their values: a diverged loss, an invalid spec) and the trials
  running. A trial stopped by a signal or by a dead worker does not count: the
  same command runs another in its place. Each worker checks the count before it
  asks for a trial, and again after (a trial numbered past the budget by a race
  between workers is recorded as failed, not run).
- A worker writes its host, process id and process start time on its trial. A
  trial left RUNNING by a process of this host that no longer exists is failed
  at once; one of another host only when Optuna's heartbeat is older than the
  grace period, since that machine may still be working on it.
- SIGINT and SIGTERM stop the running trial at a step boundary (its checkpoint
  saved) and record it as failed; finished trials stay. Workers in other
  processes get the signal forwarded.
"""
import contextlib
import csv
import importlib.util
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import yaml

from . import jsonout
from .errors import (CheckpointError, DataError, NetspecError, OutOfMemory, RunDirError, ShapeError, SpecError,
                     TrainingDiverged, UsageError)
from .data.split import without_test
from .interrupt import Interrupted, StopSignals
from .plots import save_study_plots
from .rundir import atomic_text
from .runner import first_difference, load_spec_data, pin_data, trainer_for
from .spec import searchable, spec_to_dict
from .threads import limit_blas_threads

HEARTBEAT_INTERVAL = 10   # seconds between the heartbeats of a running trial
GRACE_PERIOD = 60         # a RUNNING trial of another host with an older heartbeat is failed
CONNECT_TIMEOUT = 10      # seconds to reach a database server before giving up
SQLITE_BUSY_TIMEOUT = 60  # seconds an SQLite writer waits for another one
# a trial whose values fail like this has run: it counts towards the budget, and the study goes on
ENDED_BY_VALUES = (TrainingDiverged, SpecError, ShapeError, DataError, OutOfMemory, CheckpointError)


class TuneError(NetspecError, RuntimeError):
    """The study cannot be opened or run: storage unreachable, another spec's study, a missing engine."""


@dataclass
class Job:
    """What one ``netspec tune`` command asks for; workers in other processes get it as JSON."""
    spec: str
    out: str
    storage: Optional[str] = None     # None: sqlite in OUT
    study: Optional[str] = None       # None: the spec's name
    trials: Optional[int] = None      # None: the spec's tune.trials
    workers: int = 1
    quiet: bool = False

    @property
    def url(self):
        return self.storage or f"sqlite:///{os.path.abspath(os.path.join(self.out, 'study.db'))}"

    @property
    def shared(self):
        """Whether the storage may be shared with other commands (and machines)."""
        return self.storage is not None


def require_optuna():
    """The optuna module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise TuneError("netspec tune needs Optuna, which is not installed: pip install 'netspec[tune]' "
                        "(optuna, sqlalchemy, and psycopg for PostgreSQL)") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # netspec prints one line per trial itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# -- storage ------------------------------------------------------------------------------------
def shown(url):
    """The URL as messages show it: the password hidden."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: the error about it says so
        return url.split("@")[-1] if "@" in url else url


def _driver_url(url):
    """postgresql:// means psycopg2 to SQLAlchemy; with only psycopg (3) installed, use that."""
    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_storage(url):
    """Optuna's RDB storage at ``url``, with bounded waits and heartbeats; TuneError if it cannot be opened."""
    optuna = require_optuna()
    url = _driver_url(url)
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    elif url.startswith(("postgresql", "mysql")):
        engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}, "pool_pre_ping": True}
    else:
        engine = {}
    for attempt in range(3):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_INTERVAL,
                                                 grace_period=GRACE_PERIOD)
            if url.startswith("sqlite"):
                _serialize_sqlite(storage)
            return storage
        except ImportError as exc:
            raise TuneError(f"cannot open the study storage {shown(url)}: its database driver is not installed "
                            f"({exc}); for PostgreSQL: pip install 'netspec[tune]'") from None
        except Exception as exc:  # SQLAlchemy's errors: a bad URL, a server that cannot be reached, a refusal
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
            # two commands creating the tables of a new database at once: the second finds them half made
            if attempt < 2 and any(w in reason.lower() for w in ("already exists", "unique", "locked", "duplicate")):
                time.sleep(1 + attempt)
                continue
            raise TuneError(f"cannot open the study storage {shown(url)}: {reason[:300]}") from None


_claiming = threading.local()   # active while this thread claims a queued trial (_serialize_sqlite)

# A write that changes nothing: SQLite takes the database's write lock when the statement starts.
_TAKE_WRITE_LOCK = "UPDATE studies SET study_name = study_name WHERE 0 = 1"


def _serialize_sqlite(storage):
    """Make Optuna's claim of a queued trial atomic on SQLite.

    Optuna claims a queued trial (the baseline) by reading that it is waiting and then marking it
    running, in one transaction, with SELECT ... FOR UPDATE. SQLite has no row locks, and Python's
    sqlite3 module only opens a transaction at the first write, so two workers could both read
    "waiting" and both run the trial (measured: 2 processes popping 60 queued trials took 7-11 of
    them twice). So a claim's transaction starts with a write that changes nothing, which takes
    the database's write lock first: the second worker waits for the first to commit, then reads
    "running". Every other transaction is left as it was (taking the lock in all of them made a
    reader of the study wait on the workers' every read)."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "begin")
    def _lock_claims(conn):
        if getattr(_claiming, "active", False):
            conn.exec_driver_sql(_TAKE_WRITE_LOCK)

    claim = storage.set_trial_state_values

    def set_trial_state_values(trial_id, state, values=None):
        from optuna.trial import TrialState
        if state != TrialState.RUNNING:
            return claim(trial_id, state, values)
        _claiming.active = True
        try:
            return claim(trial_id, state, values)
        finally:
            _claiming.active = False

    storage.set_trial_state_values = set_trial_state_values


# -- this process ----------------------------------------------------------------------------------
def _host():
    """This machine: its name and its kernel's boot id (two machines may share a name; containers of
    one machine share a boot id, not a name)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def _started(pid):
    """When process ``pid`` started (clock ticks since boot, as text), and whether it is a zombie;
    (None, False) where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19], fields[0] == "Z"
    except (OSError, IndexError):
        return None, False


def _alive(pid, started):
    """Whether the process that wrote a trial still exists (a reused pid with another start is not it)."""
    if not isinstance(pid, int) or isinstance(pid, bool):
        return True  # unknown: left to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now, zombie = _started(pid)
    return not zombie and (started is None or now is None or now == started)


HOST = _host()


# -- the study -------------------------------------------------------------------------------------
def _fingerprint(search):
    """What makes two commands the same search: the resolved spec and the tune section, no paths of this
    machine (a relative data path is kept as written)."""
    return jsonout.dumps({"spec": spec_to_dict(search.spec), "tune": search.spec.tune.model_dump(mode="json")},
                         sort_keys=True)


def _direction(tune):
    return "maximize" if tune.objective == "val_acc" else "minimize"


def _sampler(optuna, tune, seed, liar):
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler({p: d.grid() for p, d in tune.space.items()}, seed=seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=liar)


def _pruner(optuna, tune):
    p = tune.pruning
    if not p.enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.min_epochs)


def open_study(job, search, storage, index=0, create=True):
    """(study, created): the job's study, created (with the baseline trial queued) or loaded; TuneError
    when a study of that name holds another search."""
    optuna = require_optuna()
    tune = search.spec.tune
    name = job.study or search.spec.name
    kw = dict(study_name=name, storage=storage, pruner=_pruner(optuna, tune))
    study, created = None, False
    if create:
        with contextlib.suppress(optuna.exceptions.DuplicatedStudyError):
            study = optuna.create_study(direction=_direction(tune), load_if_exists=False, **kw)
            created = True
    if study is None:
        try:
            study = optuna.load_study(**kw)
        except KeyError:
            raise TuneError(f"no study '{name}' in {shown(job.url)}") from None
    if study.direction.name.lower() != _direction(tune):
        raise TuneError(f"study '{name}' in {shown(job.url)} {study.direction.name.lower()}s its objective; this "
                        f"spec's {tune.objective} is to {_direction(tune)}: give another --study")
    mine, theirs = _fingerprint(search), study.user_attrs.get("netspec.search")
    if theirs is None:
        study.set_user_attr("netspec.search", mine)
    elif theirs != mine:
        where = first_difference(json.loads(theirs), json.loads(mine))
        raise TuneError(f"study '{name}' in {shown(job.url)} was started from another spec{where}; give "
                        "another --study, or the spec it was started from")
    # each worker draws from its own stream: the spec's seed, the trials so far, the worker (and, for a
    # storage other commands may share, the process: two commands must not draw the same values)
    entropy = [search.spec.seed, len(study.get_trials(deepcopy=False)), index]
    if job.shared:
        entropy += [zlib.crc32(HOST.encode()), os.getpid()]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    study.sampler = _sampler(optuna, tune, seed, liar=job.workers > 1 or job.shared)
    if created and tune.baseline and tune.sampler != "grid":
        values, _ = search.baseline()
        if values is not None:
            study.enqueue_trial(values, user_attrs={"baseline": True})
    return study, created


def _counts(trials):
    """(trials that count towards the budget and have ended, trials running)."""
    from optuna.trial import TrialState
    ended = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and t.user_attrs.get("counts")))
    return ended, sum(1 for t in trials if t.state == TrialState.RUNNING)


def fail_dead_trials(study):
    """Fail the RUNNING trials of this host whose process is gone; returns their numbers."""
    from optuna.trial import TrialState
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get("host") == HOST and not _alive(a.get("pid"), a.get("pid_started")):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
    return failed


class _Surplus(Exception):
    """This trial's number is past the budget: another worker took the last place first."""


class Worker:
    """Runs trials of one study until the budget is reached or a signal arrives."""

    def __init__(self, job, search, study, total, signals, name=""):
        self.job, self.search, self.study, self.total = job, search, study, total
        self.signals, self.name = signals, name
        self.tune = search.spec.tune
        self.pid_started = _started(os.getpid())[0]
        self._data = {}
        self.full = False

    def log(self, msg):
        if not self.job.quiet:
            print(f"{self.name}{msg}", flush=True)

    def work(self):
        """Run trials; returns the exit status (130/143 after a signal)."""
        optuna = require_optuna()
        while not self.signals.pending and not self.full:
            for n in fail_dead_trials(self.study):
                self.log(f"trial {n}: its worker on this machine is gone; recorded as failed")
            ended, running = _counts(self.study.get_trials(deepcopy=False))
            if ended + running >= self.total:
                break
            try:
                self.study.optimize(self._objective, n_trials=1, catch=ENDED_BY_VALUES + (_Surplus,),
                                    gc_after_trial=False)
            except Interrupted as exc:
                return exc.exit_code
            except optuna.exceptions.UpdateFinishedTrialError:
                self.log("a trial of this worker was failed by another worker (no heartbeat for "
                         f"{GRACE_PERIOD} s); going on")
        return 128 + self.signals.received[0] if self.signals.pending else 0

    # -- one trial ---------------------------------------------------------------------------------
    def _objective(self, trial):
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("pid_started", self.pid_started)
        self._check_place(trial)
        params = {path: _suggest(trial, path, dist) for path, dist in self.tune.space.items()}
        t0 = time.perf_counter()
        run_dir = os.path.join(self.job.out, "trials", f"{trial.number:04d}")
        trial.set_user_attr("run_dir", os.path.abspath(run_dir))
        self.pruned = None
        try:
            spec = self.search.spec_for(params)
            tr = trainer_for(spec, out=run_dir, quiet=True, progress=False, test=False, signals=self.signals,
                             data=self._data_for(spec), callbacks=[self._reporter(trial)],
                             log=lambda msg: self.log(f"trial {trial.number}: {msg}"))
            history = tr.run()
        except Interrupted as exc:
            trial.set_user_attr("note", f"stopped by {exc.args[0]}")
            self._line(trial, params, "FAIL", f"stopped by {exc.args[0]}", t0)
            raise
        except ENDED_BY_VALUES as exc:
            trial.set_user_attr("counts", True)
            trial.set_user_attr("note", " ".join(str(exc).split())[:500])
            self._line(trial, params, "FAIL", type(exc).__name__, t0)
            raise
        value = history[-1].get(self.tune.objective) if history else None
        epochs = len(history)
        trial.set_user_attr("epochs", epochs)
        if value is None or not math.isfinite(value):
            trial.set_user_attr("counts", True)
            trial.set_user_attr("note", f"{self.tune.objective} is {value} after epoch {epochs}")
            self._line(trial, params, "FAIL", f"{self.tune.objective} {value}", t0)
            raise TrainingDiverged(f"{self.tune.objective} is {value}")
        if self.pruned:
            trial.set_user_attr("note", self.pruned)
            self._line(trial, params, "PRUNED", f"{self.tune.objective} {value:.4f} at epoch {epochs}", t0)
            raise require_optuna().TrialPruned(self.pruned)
        self._line(trial, params, "COMPLETE", f"{self.tune.objective} {value:.4f}", t0)
        return value

    def _check_place(self, trial):
        """Raise _Surplus when the trials before this one already fill the budget."""
        before = [t for t in self.study.get_trials(deepcopy=False) if t.number < trial.number]
        ended, running = _counts(before)
        if ended + running >= self.total:
            self.full = True
            trial.set_user_attr("note", f"not run: the study has its {self.total} trials")
            raise _Surplus()

    def _reporter(self, trial):
        """The per-epoch callback: report the objective, stop the run when the pruner says so."""
        objective = self.tune.objective

        def report(trainer, metrics):
            value = metrics.get(objective)
            if value is None or not math.isfinite(value):
                return
            trial.report(value, metrics["epoch"])
            if trial.should_prune():
                self.pruned = (f"pruned at epoch {metrics['epoch']}: {objective} {value:.4f} is worse than the "
                               "median of earlier trials at that epoch")
                trainer.stop(self.pruned)
        return report

    def _data_for(self, spec):
        """The trial's data without its test arrays, loaded once per data section and seed."""
        key = jsonout.dumps([spec.train.data.model_dump(mode="json"), spec.seed, spec.dtype])
        if key not in self._data:
            self._data[key] = without_test(load_spec_data(pin_data(spec), spec.dtype))
        return self._data[key]

    def _line(self, trial, params, state, outcome, t0):
        values = ", ".join(f"{p.split('.')[-1]} {_fmt(v)}" for p, v in params.items())
        self.log(f"trial {trial.number}: {state:<8} {outcome}  ({values})  {time.perf_counter() - t0:.1f} s")


def _suggest(trial, path, dist):
    if dist.kind == "log_uniform":
        return trial.suggest_float(path, *dist.args, log=True)
    if dist.kind == "uniform":
        return trial.suggest_float(path, *dist.args)
    if dist.kind == "int":
        return trial.suggest_int(path, *dist.args)
    return trial.suggest_categorical(path, dist.choice)


def _fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# -- the command ------------------------------------------------------------------------------------
def default_out(spec):
    """runs/<name>-tune: the same every time, so the same command resumes the study."""
    return os.path.join("runs", f"{spec.name}-tune")


def _claim_out(job, name):
    """Create OUT and record which study its trials belong to; refuse one that holds another study's."""
    path = os.path.join(job.out, "tune.json")
    mine = {"study": name, "storage": shown(job.url)}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                theirs = json.load(f)
        except (OSError, ValueError) as exc:
            raise TuneError(f"{path} cannot be read ({exc}); restore it, or choose another --out") from None
        if not isinstance(theirs, dict) or {k: theirs.get(k) for k in mine} != mine:
            raise UsageError(f"{job.out} holds the trials of study {theirs.get('study')!r} in "
                             f"{theirs.get('storage')}; choose another --out for study {name!r} in {mine['storage']}")
        return
    try:
        os.makedirs(os.path.join(job.out, "trials"), exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create the tune directory {job.out}: {exc.strerror or exc}") from None
    atomic_text(path, jsonout.dumps({**mine, "spec": os.path.abspath(job.spec)}, indent=2) + "\n")


def tune(job):
    """Run ``netspec tune``; returns the exit status."""
    optuna = require_optuna()
    search = searchable(job.spec)
    job.out = job.out or default_out(search.spec)
    name = job.study or search.spec.name
    storage = open_storage(job.url) if job.shared else None  # a server first: nothing created if it fails
    _claim_out(job, name)
    storage = storage or open_storage(job.url)
    study, _ = open_study(job, search, storage)
    # the data once, up front: a missing file or a split that does not fit is one error, not N failed trials
    load_spec_data(pin_data(search.spec), search.spec.dtype)
    total = job.trials or search.spec.tune.trials
    ended, running = _counts(study.get_trials(deepcopy=False))
    if not job.quiet:
        print(f"tuning {search.spec.name} ({job.spec}): study '{name}' in {shown(job.url)}, "
              f"{search.spec.tune.objective} ({_direction(search.spec.tune)}), {ended} of {total} trials done"
              f"{f', {running} running elsewhere' if running else ''}; {job.workers} worker"
              f"{'s' if job.workers > 1 else ''}; trials in {os.path.join(job.out, 'trials')}", flush=True)
        if search.spec.tune.baseline and search.spec.tune.sampler != "grid":
            _, why = search.baseline()
            if why:
                print(f"no baseline trial: {why}", flush=True)
    if job.workers == 1:
        with StopSignals() as signals:
            code = Worker(job, search, study, total, signals).work()
    else:
        code = _run_workers(job, study)
    summary = write_outputs(job, search, study, total)
    if not job.quiet or code == 0:
        print(summary, flush=True)
    if code in (130, 143):
        print(f"interrupted: finished trials are kept in the study; run the same command to continue",
              file=sys.stderr, flush=True)
    return code


def _run_workers(job, study):
    """Start job.workers worker processes on this machine and wait for them, forwarding SIGINT and
    SIGTERM; returns 130/143 after a signal, 1 if a worker failed, else 0."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // job.workers)))  # K workers share the cores
    code = ("import sys; from netspec.tuning import worker_main; sys.exit(worker_main(sys.argv[1], "
            "int(sys.argv[2])))")
    spec = json.dumps(asdict(job))
    procs = [subprocess.Popen([sys.executable, "-c", code, spec, str(i)], env=env) for i in range(job.workers)]
    failed = []
    with StopSignals() as signals:
        forwarded = 0
        while any(p.poll() is None for p in procs):
            for sig in signals.received[forwarded:]:
                for p in procs:
                    if p.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            p.send_signal(sig)
            forwarded = len(signals.received)
            time.sleep(0.1)
        for i, p in enumerate(procs):
            if p.returncode < 0 or p.returncode not in (0, 2, 130, 143):
                how = f"killed by {signal.Signals(-p.returncode).name}" if p.returncode < 0 else \
                    f"exit status {p.returncode}"
                failed.append(f"worker {i} (pid {p.pid}) ended with {how}")
            elif p.returncode == 2:
                failed.append(f"worker {i} (pid {p.pid}) stopped on an error (above)")
    for n in fail_dead_trials(study):
        failed.append(f"its trial {n} is recorded as failed")
    for msg in failed:
        print(msg, file=sys.stderr, flush=True)
    if signals.received:
        return 128 + signals.received[0]
    return 1 if failed else 0


def worker_main(job_json, index):
    """A worker process of ``netspec tune --workers K``: run trials until the budget; returns the exit status."""
    job = Job(**json.loads(job_json))
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        limit_blas_threads(int(threads))
    try:
        with StopSignals() as signals:
            search = searchable(job.spec)
            study, _ = open_study(job, search, open_storage(job.url), index=index + 1, create=False)
            total = job.trials or search.spec.tune.trials
            return Worker(job, search, study, total, signals, name=f"[worker {index}] ").work()
    except NetspecError as exc:
        print(f"error: [worker {index}] {exc}", file=sys.stderr, flush=True)
        return 2


# -- outputs ------------------------------------------------------------------------------------------
def trial_rows(study, search):
    """One dict per trial: number, state, objective, the values, epochs, seconds, note, host, run_dir."""
    objective = search.spec.tune.objective
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        note = a.get("note") or ("the worker stopped before the trial ended (killed, or its machine lost)"
                                 if t.state.name == "FAIL" else "")
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                     if t.intermediate_values else None)
        rows.append({"number": t.number, "state": t.state.name, objective: value,
                     **{p: t.params.get(p) for p in search.spec.tune.space},
                     "epochs": a.get("epochs", len(t.intermediate_values) or None),
                     "seconds": round(seconds, 2) if seconds is not None else None,
                     "baseline": bool(a.get("baseline")), "note": note,
                     "host": a.get("host"), "run_dir": a.get("run_dir")})
    return rows


def write_outputs(job, search, study, total):
    """trials.csv, trials.json, best.yaml and (with matplotlib) the plots; returns a summary to print."""
    optuna = require_optuna()
    tune, out = search.spec.tune, job.out
    rows = trial_rows(study, search)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["number"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_text(os.path.join(out, "trials.csv"), buf.getvalue())
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    if complete:
        b = study.best_trial
        best = {"number": b.number, tune.objective: b.value, "params": b.params}
    ended, running = _counts(study.get_trials(deepcopy=False))
    info = {"study": job.study or search.spec.name, "storage": shown(job.url), "spec": os.path.abspath(job.spec),
            "objective": tune.objective, "direction": _direction(tune), "trials": total, "ended": ended,
            "best": best, "rows": rows}
    atomic_text(os.path.join(out, "trials.json"), jsonout.dumps(info, indent=2) + "\n")
    lines = [f"{ended} of {total} trials ended: {sum(r['state'] == 'COMPLETE' for r in rows)} complete, "
             f"{sum(r['state'] == 'PRUNED' for r in rows)} pruned, {sum(r['state'] == 'FAIL' for r in rows)} "
             f"failed{f', {running} running elsewhere' if running else ''}; table: {os.path.join(out, 'trials.csv')}"]
    if best:
        best_path = os.path.join(out, "best.yaml")
        write_best(best_path, search, study.best_trial, info)
        baseline = next((r for r in rows if r["baseline"] and r["state"] == "COMPLETE"), None)
        base = f" (the spec as written, trial {baseline['number']}: {baseline[tune.objective]:.4f})" if baseline else ""
        lines.append(f"best: trial {best['number']}, {tune.objective} {best[tune.objective]:.4f}{base}; "
                     + ", ".join(f"{p} {_fmt(v)}" for p, v in best["params"].items()))
        lines.append(f"best spec: {best_path} (train it with: netspec run {best_path})")
    importances = None
    if len(complete) >= 2:
        # too few distinct values to judge: no importance plot (and none of Optuna's warnings about it)
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    plots = save_study_plots(rows, tune, importances, out)
    if plots:
        lines.append("plots: " + ", ".join(plots))
    return "\n".join(lines)


def write_best(path, search, trial, info):
    """The best trial's spec as a flat spec file (defaults filled, data paths absolute) that netspec run trains."""
    spec = pin_data(search.spec_for(trial.params))
    head = [f"# best trial of study '{info['study']}' ({info['storage']}): trial {trial.number}, "
            f"{info['objective']} {trial.value:.6g}",
            f"# from {info['spec']}; values: " + ", ".join(f"{p}={v!r}" for p, v in trial.params.items()),
            "# a flat spec (blocks expanded, defaults filled): netspec run trains it as is"]
    body = yaml.safe_dump(spec_to_dict(spec), sort_keys=False, default_flow_style=None, width=120)
    atomic_text(path, "\n".join(head) + "\n" + body)
