"""The few error types netspec raises, rendered for people.

Every user-facing failure is a ``NetspecError``; each also inherits the builtin
that best describes it, so ``except ValueError`` keeps working for callers who
do not know netspec. The CLI prints ``str(err)`` and exits 2, no traceback.
"""
import difflib


class NetspecError(Exception):
    """Base of every error netspec raises on bad user input."""


class SpecError(NetspecError, ValueError):
    """A spec file is malformed or invalid; ``issues`` lists every problem found.

    Each issue is a dict with ``file``, ``line``, ``column`` (1-based, or None),
    ``path`` (e.g. ``layers[3].units``) and ``message``.
    """

    def __init__(self, issues, file=None):
        if isinstance(issues, str):
            issues = [{"file": file, "line": None, "column": None, "path": "", "message": issues}]
        self.issues = list(issues)
        self.file = file
        super().__init__("\n".join(format_issue(i) for i in self.issues))


class UsageError(NetspecError, ValueError):
    """Command-line options that do not go together (the CLI exits 2, as for any user error)."""


class ShapeError(NetspecError, ValueError):
    """Shapes do not fit: a layer cannot accept the shape it is given."""


class DataError(NetspecError, ValueError):
    """A data file or data source is missing, corrupt or does not fit the spec."""


class CheckpointError(NetspecError, ValueError):
    """A checkpoint file is missing, corrupt, or unsafe to load."""


class TrainingDiverged(NetspecError, ArithmeticError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunDirError(NetspecError, OSError):
    """A run directory cannot be used: it holds another run, another process holds its lock,
    or it cannot be written (not a directory, read-only, disk full)."""


class OutOfMemory(NetspecError, MemoryError):
    """A step needed more memory than the machine has; the last checkpoint is kept."""


def printable(name):
    """A file name as one line of output may show it: control characters (a newline would start a
    line of its own) escaped as in a Python string literal."""
    name = str(name)
    return name if name.isprintable() else repr(name)[1:-1]


def did_you_mean(word, options):
    """'; did you mean 'x'?' for the closest option, or '' when none is close."""
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def format_issue(issue):
    """``file:line:col: path: message`` with the parts that are known."""
    where = []
    if issue.get("file"):
        where.append(str(issue["file"]))
    if issue.get("line") is not None:
        where.append(str(issue["line"]))
        if issue.get("column") is not None:
            where.append(str(issue["column"]))
    prefix = ":".join(where)
    path = issue.get("path") or ""
    parts = [p for p in (prefix, path) if p]
    return ": ".join(parts + [issue["message"]])
