"""Writing a file so that a crash leaves the old version or the new one, never a mix.

Design: the new content goes to a temporary file created exclusively (``mkstemp``:
a fresh name, never an existing file or a symlink) in the destination's folder;
it is flushed and fsynced, renamed over the destination with ``os.replace``, and
the folder is fsynced so the rename itself survives a power cut. A temporary
left by a killed process keeps its recognisable name (``TEMP_NAME``), which
carries the writer's process id: ``remove_stale_temporaries`` clears them in a
run directory (under its lock), and ``remove_dead_temporaries`` clears, in any
folder, those whose writer is no longer running (a ``kill -9`` during export).
"""
import contextlib
import os
import re
import stat
import tempfile

# mkstemp's names: ".netspec-" (".model-" for checkpoints), the writer's pid and "_", characters of
# [a-z0-9_], ".tmp" (".npz.tmp"). Names written before the pid was added lack it: group "pid" is None.
TEMP_NAME = re.compile(r"(?=\.netspec-[a-z0-9_]+\.tmp$|\.model-[a-z0-9_]+\.npz\.tmp$)\.[a-z]+-(?:(?P<pid>[0-9]+)_)?.*")


def fsync_dir(folder):
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace(src, dst):
    """``os.replace(src, dst)``, then fsync the destination's folder."""
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


@contextlib.contextmanager
def atomic_write(path, mode="wb", *, prefix=".netspec-", suffix=".tmp", encoding=None):
    """Context manager yielding a file object whose content replaces ``path`` on success.

    On any exception (KeyboardInterrupt included) the temporary is removed and
    ``path`` is untouched. The new file gets the usual permissions (0666 less the umask).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}_", suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; these are ordinary files
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder):
    """Delete the temporaries killed writers left in ``folder``; return their paths.

    Only regular files whose whole name matches ``TEMP_NAME`` are removed, never a
    symlink or anything else. Call it only while holding the run directory's lock:
    a write running concurrently in the same folder would lose its temporary.
    """
    return _remove_temporaries(folder, lambda pid: True)


def remove_dead_temporaries(folder):
    """Delete the temporaries in ``folder`` whose writer (the pid in the name) has exited.

    For folders no lock guards (``export -o``): a temporary of a running process,
    or one without a pid in its name, is left alone. The pid is checked on this
    machine only, so on a folder shared between machines a temporary of a writer
    on another machine whose pid is free here would be removed; export writes
    take well under a second, and the rename finds its temporary gone and fails loudly.
    """
    return _remove_temporaries(folder, lambda pid: pid is not None and not _running(int(pid)))


def _running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True   # exists (another user's) or cannot tell: keep its file
    return True


def _remove_temporaries(folder, stale):
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in sorted(entries, key=lambda e: e.name):
        match = TEMP_NAME.fullmatch(entry.name)
        if not match or not stale(match.group("pid")):
            continue
        try:
            if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                continue
            os.unlink(entry.path)
        except FileNotFoundError:  # removed by someone else meanwhile
            continue
        removed.append(entry.path)
    return removed


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
