"""Starting runs: a Trainer from a spec, or one restored from a run directory, and ``train()``.

This is the layer between the command line (or a script) and ``netspec.trainer``:
it compiles the spec, loads its data (relative paths are relative to the spec
file), chooses the run directory, and restores a checkpoint on resume.
"""
import math
import os

from .checkpoint import model_from_checkpoint, read_checkpoint
from .compile import compile
from .errors import SpecError
from .rundir import default_run_dir
from .spec import load_spec
from .trainer import Trainer


def load_spec_data(spec, dtype):
    """The spec's train.data as a Dataset in ``dtype``; relative paths start at the spec's folder."""
    from .data import load_data
    base_dir = os.path.dirname(os.path.abspath(spec.source)) if spec.source and os.path.exists(spec.source) else None
    return load_data(spec.train.data, seed=spec.seed, dtype=dtype, base_dir=base_dir)


def trainer_for(spec, *, out=None, epochs=None, dtype=None, quiet=False, progress=None, callbacks=(),
                save=True, data=None):
    """A fresh Trainer for a spec (path, dict or NetSpec); writes to ``out`` (or runs/...) when ``save``."""
    spec = load_spec(spec)
    if spec.train is None:
        raise SpecError(f"{spec.source}: the spec has no 'train' section; add one to train it", file=spec.source)
    model = compile(spec, dtype=dtype)
    data = data if data is not None else load_spec_data(spec, model.dtype)
    run_dir = (out or default_run_dir(spec)) if save else None
    return Trainer(model, data, run_dir=run_dir, epochs=epochs, quiet=quiet, progress=progress,
                   callbacks=callbacks)


def resume_trainer(run_dir, *, epochs=None, quiet=False, progress=None, callbacks=()):
    """A Trainer restored from ``run_dir/model.npz``, ready to continue."""
    path = os.path.join(run_dir, "model.npz")
    meta, arrays = read_checkpoint(path)
    model = model_from_checkpoint(meta, arrays, path)
    data = load_spec_data(model.spec, model.dtype)
    st = meta.get("trainer") or {}
    tr = Trainer(model, data, run_dir=run_dir, epochs=epochs, quiet=quiet, progress=progress,
                 callbacks=callbacks)
    if epochs is None and "total_steps" in st:
        tr.total_steps = st["total_steps"]
        tr.epochs = math.ceil(tr.total_steps / tr.steps_per_epoch)
    tr.restore(meta, arrays)
    return tr


def train(spec, *, out=None, epochs=None, dtype=None, quiet=True, progress=False, callbacks=(), save=False):
    """Train a spec (path, dict or NetSpec) and return its History (``.model`` holds the model).

    Nothing is written unless ``save=True`` or ``out`` is given.
    """
    tr = trainer_for(spec, out=out, epochs=epochs, dtype=dtype, quiet=quiet, progress=progress,
                     callbacks=callbacks, save=save or out is not None)
    return tr.run()
