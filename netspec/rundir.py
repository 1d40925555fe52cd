"""A run directory: the resolved spec, the metrics log and the checkpoint of one training run.

Layout of ``DIR/``:

- ``spec.resolved.json``  the spec as trained: every default filled in, names generated
- ``metrics.jsonl``       one JSON object per finished epoch (mirrors the checkpointed history)
- ``model.npz``           the checkpoint (see netspec.checkpoint)
- plots (``*.png``) when matplotlib is installed

Text files are replaced atomically (written to a temporary name, then renamed).
"""
import os
import time

from . import jsonout
from .spec import spec_to_dict


def default_run_dir(spec):
    """runs/<name>-<YYYYmmdd-HHMMSS>, with -2, -3, ... if that exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", f"{spec.name}-{stamp}")
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}-{k}"
    return path


def atomic_text(path, text):
    """Replace ``path`` by ``text`` so that a crash leaves the old or the new file, never a mix."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class RunDir:
    """The files of one run; ``path`` is created on ``start``."""

    def __init__(self, path):
        self.path = os.fspath(path)

    @property
    def checkpoint_path(self):
        return os.path.join(self.path, "model.npz")

    def file(self, name):
        return os.path.join(self.path, name)

    def start(self, spec, history):
        """Write the resolved spec and restart metrics.jsonl from ``history`` (a resume redoes later epochs)."""
        os.makedirs(self.path, exist_ok=True)
        atomic_text(self.file("spec.resolved.json"), jsonout.dumps(spec_to_dict(spec), indent=2) + "\n")
        atomic_text(self.file("metrics.jsonl"), "".join(jsonout.dumps(m) + "\n" for m in history))

    def append_metrics(self, metrics):
        with open(self.file("metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(jsonout.dumps(metrics) + "\n")
