"""A run directory: the resolved spec, the metrics log and the checkpoint of one training run.

Layout of ``DIR/``:

- ``spec.resolved.json``  the spec as trained: every default filled in, names generated,
                          data paths absolute and data files' checksums recorded
- ``metrics.jsonl``       one JSON object per finished epoch (mirrors the checkpointed history)
- ``model.npz``           the checkpoint (see netspec.checkpoint)
- ``result.json``         the final numbers, written when the run ends: epochs, steps, seconds,
                          parameters, the last epoch's metrics and the test set's (when it was read)
- ``.lock``               the advisory lock of the process writing the run, and its PID
- plots (``*.png``) when matplotlib is installed

Design: one writer per directory. ``claim`` takes an exclusive ``flock`` on
``.lock`` before anything is written and keeps it until ``release`` (or the
process ends: the kernel drops the lock of a dead process, so a lock left by a
crash never blocks the next run; the PID in the file is only for the message).
A directory that already holds a run is refused unless the run is resumed or
``force`` replaces it. Text files are replaced atomically; every OS failure
(not a directory, read-only, disk full) becomes one RunDirError naming the file.
"""
import contextlib
import errno
import json
import os
import stat
import time

from . import jsonout
from .atomic import atomic_write, remove_stale_temporaries
from .errors import RunDirError, SpecError
from .safeio import open_regular
from .spec import spec_to_dict
from .spec.loader import MAX_DEPTH, MAX_SPEC_BYTES, check_depth

RUN_FILES = ("model.npz", "metrics.jsonl", "spec.resolved.json")
PLOTS = ("curves.png", "misclassified.png", "filters.png")
OUTPUTS = ("result.json",)  # written at the end; removed with the run by --force


def default_run_dir(spec):
    """runs/<name>-<YYYYmmdd-HHMMSS>, with -2, -3, ... if that exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", f"{spec.name}-{stamp}")
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


def _open_no_follow(path, flags):
    """os.open of a run directory's own regular file: a symlink, a FIFO or device, or a file with
    other hard links (whose content lives outside the run directory too) is refused."""
    try:
        # O_NONBLOCK: opening a FIFO to write fails at once instead of waiting for a reader
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symlink; a run directory holds only its own files "
                              "(remove the link)") from None
        if exc.errno == errno.ENXIO:
            raise RunDirError(f"{path} is not a regular file (a FIFO); remove it") from None
        raise
    st = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"has {st.st_nlink - 1} other hard link{'s' if st.st_nlink > 2 else ''} (its content is shared "
               "with a file outside the run directory)" if st.st_nlink > 1 else None)
    if problem:
        os.close(fd)
        raise RunDirError(f"{path} {problem}; a run directory holds only its own files (remove it)")
    return fd


@contextlib.contextmanager
def os_errors(what):
    """Turn an OSError while doing ``what`` into a RunDirError that says what failed and why."""
    try:
        yield
    except RunDirError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunDirError(f"cannot {what}: {reason}") from None


def atomic_text(path, text):
    """Replace ``path`` by ``text`` so that a crash leaves the old or the new file, never a mix."""
    with os_errors(f"write {path}"), atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


class RunDir:
    """The files of one run; ``claim`` before writing, ``release`` when done."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = None

    @property
    def checkpoint_path(self):
        return os.path.join(self.path, "model.npz")

    def file(self, name):
        return os.path.join(self.path, name)

    def holds_run(self):
        """The run files already here (empty when the directory is new or empty)."""
        return [f for f in RUN_FILES if os.path.exists(self.file(f))]

    # -- ownership ------------------------------------------------------------
    @property
    def claimed(self):
        return self._lock is not None

    def claim(self, *, resume=False, force=False):
        """Create the directory if needed, lock it, and check it may be written; returns the
        stale temporary files removed (left by a run killed while saving)."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(f"run directory {self.path} is a file, not a directory; choose another --out")
        with os_errors(f"create the run directory {self.path}"):
            os.makedirs(self.path, exist_ok=True)
        self._lock_or_fail()
        try:
            existing = self.holds_run()
            if resume and "model.npz" not in existing:
                stopped = " (its run stopped before the first checkpoint: start it again with --force)" \
                    if existing else ""
                raise RunDirError(f"{self.path} holds no checkpoint (model.npz) to resume{stopped}")
            if existing and not resume:
                if not force and "model.npz" not in existing:
                    raise RunDirError(
                        f"{self.path} holds a run that stopped before its first checkpoint ({', '.join(existing)}); "
                        "nothing to resume: start it again with --force")
                if not force:
                    raise RunDirError(
                        f"{self.path} already holds a run ({', '.join(existing)}); continue it with "
                        f"`netspec run --resume {self.path}`, or replace it with --force")
                for name in RUN_FILES + OUTPUTS + PLOTS:
                    with os_errors(f"remove the old {self.file(name)}"), contextlib.suppress(FileNotFoundError):
                        os.unlink(self.file(name))
            with os_errors(f"clean up {self.path}"):
                return remove_stale_temporaries(self.path)
        except BaseException:
            self.release()
            raise

    def _lock_or_fail(self):
        import fcntl
        path = self.file(".lock")
        with os_errors(f"write in the run directory {self.path}"):
            # never through a symlink: a run directory from elsewhere could point .lock at any file
            fd = _open_no_follow(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.path} is in use by another netspec run (pid {holder}); wait for it "
                              "to finish or choose another --out") from None
        try:
            with os_errors(f"write the lock file {path}"):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        except RunDirError:
            os.close(fd)
            raise
        self._lock = fd

    def release(self):
        """Drop the lock (the file stays: deleting it could let two writers lock different files)."""
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    # -- files ------------------------------------------------------------------
    def start(self, spec, history):
        """Write the resolved spec and restart metrics.jsonl from ``history`` (a resume redoes later epochs)."""
        atomic_text(self.file("spec.resolved.json"), jsonout.dumps(spec_to_dict(spec), indent=2) + "\n")
        atomic_text(self.file("metrics.jsonl"), "".join(jsonout.dumps(m) + "\n" for m in history))

    def resolved_spec(self):
        """The spec.resolved.json written by the run, or None when it is missing."""
        path = self.file("spec.resolved.json")
        if not os.path.lexists(path):
            return None
        # read as any file netspec did not write: a regular file of spec size (a FIFO would hang,
        # /dev/zero never end), nested no deeper than a spec may be
        f, _ = open_regular(path, "resolved spec", MAX_SPEC_BYTES, error=RunDirError)
        try:
            with f:
                data = json.loads(f.read().decode("utf-8"))
            check_depth(data, path)
            return data
        except (RecursionError, SpecError):
            raise RunDirError(f"{path} is nested more than {MAX_DEPTH} levels deep; a spec needs only a few: "
                              "restore it or delete it to resume") from None
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path} cannot be read ({exc}); restore it or delete it to resume") from None

    def write_result(self, result):
        """Replace result.json with the run's final numbers."""
        atomic_text(self.file("result.json"), jsonout.dumps(result, indent=2) + "\n")

    def append_metrics(self, metrics):
        path = self.file("metrics.jsonl")
        with os_errors(f"append to {path}"), \
                os.fdopen(_open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as f:
            f.write(jsonout.dumps(metrics) + "\n")
