"""``netspec compare``: the curves and final numbers of run directories, side by side.

Design: a run directory is read, never trusted: only its regular files
``metrics.jsonl``, ``spec.resolved.json`` and ``result.json`` (the last one is
optional: a run stopped early, or written before netspec had it), each of bounded
size and parsed as strict JSON; a line that is not a JSON object is an error
naming the file and line. Parameter counts come from result.json, or from the
spec's shapes (no weights are built). Runs are labelled by their directory
name, or by as much of the path as tells them apart (tune trials are all
``trials/NNNN``).
"""
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

from .errors import NetspecError, RunDirError
from .plots import plot_comparison
from .safeio import open_regular
from .shapes import infer_layers
from .spec import load_spec

MAX_RUN_FILE = 64 * 2**20  # metrics of a million epochs fit


@dataclass
class Run:
    """What a run directory says about its run."""
    path: str
    label: str
    spec: dict
    metrics: list
    result: Optional[dict]


def _read_json_file(path, what):
    f, _ = open_regular(path, what, MAX_RUN_FILE, error=RunDirError)
    with f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path}: the {what} is not UTF-8 text ({exc})") from None


def _parse(text, path, line=None):
    try:
        value = json.loads(text, parse_constant=lambda c: None)
    except ValueError as exc:
        at = f" line {line}" if line else ""
        raise RunDirError(f"{path}:{at} not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path}{f' line {line}' if line else ''}: expected a JSON object, found "
                          f"{type(value).__name__}")
    return value


def read_run(path, label=None):
    """A Run from a run directory; RunDirError when it is not one."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise RunDirError(f"{path}: not a run directory ({'not a directory' if os.path.exists(path) else 'no such directory'})")
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not os.path.lexists(metrics_path):
        raise RunDirError(f"{path}: not a run directory (no metrics.jsonl)")
    text = _read_json_file(metrics_path, "metrics file")
    metrics = [_parse(line, metrics_path, i) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    spec = _parse(_read_json_file(os.path.join(path, "spec.resolved.json"), "resolved spec"),
                  os.path.join(path, "spec.resolved.json"))
    result_path = os.path.join(path, "result.json")
    result = _parse(_read_json_file(result_path, "result file"), result_path) if os.path.lexists(result_path) else None
    return Run(path, label or os.path.basename(os.path.normpath(path)), spec, metrics, result)


def read_runs(paths):
    """Runs of ``paths``, labelled apart: the directory names, or longer path tails where they repeat."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts) and len({tuple(p[-depth:]) for p in parts}) < len(parts):
        depth += 1
    return [read_run(p, "/".join(q[-depth:])) for p, q in zip(paths, parts)]


def _flat(node, prefix="", out=None):
    """{dotted path: value} of a resolved spec in its order, layers keyed by name (other lists stay whole)."""
    out = {} if out is None else out
    if isinstance(node, dict):
        for k, v in node.items():
            _flat(v, f"{prefix}{k}.", out)
    elif prefix == "layers." and isinstance(node, list):
        for i, layer in enumerate(node):
            _flat(layer, f"layers.{layer.get('name', i) if isinstance(layer, dict) else i}.", out)
    else:
        out[prefix[:-1]] = node
    return out


def differences(runs, limit=3):
    """Per run, {path: value} of the spec values that differ between the runs (paths every run has;
    at most ``limit``, in the order of the spec): what tells the curves apart."""
    flats = [_flat(r.spec) for r in runs]
    if len(flats) < 2:
        return [{} for _ in flats]
    common = [k for k in flats[0] if all(k in f for f in flats[1:])]
    differ = [k for k in common if len({json.dumps(f[k], sort_keys=True) for f in flats}) > 1][:limit]
    return [{k: f[k] for k in differ} for f in flats]


def params_of(spec):
    """Parameters of a resolved spec, from its shapes (None when the spec does not load)."""
    try:
        layers = infer_layers(load_spec(spec, source="spec.resolved.json"))
    except NetspecError:
        return None
    return sum(math.prod(shape) for layer in layers for shape, _, _ in layer.param_specs().values())


def summary(run):
    """One row of the table: the run's last epoch, its final test numbers (if read), time and size."""
    last = run.metrics[-1] if run.metrics else {}
    result = run.result or {}
    opt = (run.spec.get("train") or {}).get("optimizer") or {}
    seconds = result.get("seconds")
    if seconds is None:
        seconds = round(sum(m.get("seconds") or 0 for m in run.metrics), 4)
    params = result.get("params")
    return {
        "run": run.label, "path": run.path, "name": run.spec.get("name"),
        "optimizer": opt.get("type"), "lr": opt.get("lr"),
        "epochs": last.get("epoch"), "steps": last.get("step"),
        "train_loss": last.get("train_loss"), "train_acc": last.get("train_acc"),
        "val_loss": last.get("val_loss"), "val_acc": last.get("val_acc"),
        "epoch_test_acc": last.get("test_acc"),
        "test_acc": result.get("test_acc"), "test_loss": result.get("test_loss"),
        "seconds": seconds, "params": params if params is not None else params_of(run.spec),
    }


def _cell(v, fmt):
    if v is None:
        return "-"
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


COLUMNS = [("run", "run", "s"), ("optimizer", "optimizer", "s"), ("lr", "lr", "g"), ("epochs", "epochs", "d"),
           ("train_loss", "train loss", ".4f"), ("val_acc", "val acc", ".4f"),
           ("epoch_test_acc", "test acc (epoch)", ".4f"), ("test_acc", "test acc", ".4f"),
           ("seconds", "seconds", ".1f"), ("params", "params", ",d")]


def format_table(rows):
    """The rows as an aligned text table; columns no run has are left out."""
    cols = [c for c in COLUMNS if c[0] == "run" or any(r.get(c[0]) is not None for r in rows)]
    body = [[_cell(r.get(k), fmt) for k, _, fmt in cols] for r in rows]
    head = [title for _, title, _ in cols]
    widths = [max(len(x) for x in column) for column in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def compare(paths, figure=None):
    """(rows, figure path or None) for the run directories ``paths``."""
    runs = read_runs(paths)
    rows = [summary(r) for r in runs]
    for row, run, diff in zip(rows, runs, differences(runs)):
        row["differs"] = diff
        if diff:  # the figure's legend says what each run changed
            run.label += " (" + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in diff.items()) + ")"
    written = plot_comparison(runs, figure) if figure else None
    return rows, written
