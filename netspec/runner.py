"""Starting runs: a Trainer from a spec, or one restored from a run directory, and ``train()``.

This is the layer between the command line (or a script) and ``netspec.trainer``:
it compiles the spec, pins its data (relative paths become absolute, from the
spec file's folder, and an npz file's checksum is recorded), claims the run
directory (one writer at a time, see netspec.rundir) and restores a checkpoint
on resume.
"""
import math
import os

from .checkpoint import model_from_checkpoint, read_checkpoint
from .compiler import compile
from .data import load_data
from .data.sources import pin_paths
from .data.split import split_validation, without_test
from .distributed import agree, check_same_inputs, world
from .errors import RunDirError, SpecError
from .rundir import RunDir, default_run_dir
from .spec import first_difference, load_spec, spec_to_dict
from .trainer import Trainer


def _spec_dir(spec):
    """The folder of the spec file, where relative data paths start; None for a spec not from a file."""
    return os.path.dirname(os.path.abspath(spec.source)) if spec.source and os.path.exists(spec.source) else None


def pin_data(spec):
    """The spec with its train.data paths absolute and checksummed (a NetSpec copy)."""
    data = pin_paths(spec.train.data, _spec_dir(spec))
    if data is spec.train.data:
        return spec
    return spec.model_copy(update={"train": spec.train.model_copy(update={"data": data})})


def load_spec_data(spec, dtype, validation_index=None):
    """The spec's train.data as a Dataset in ``dtype``; relative paths start at the spec's folder.

    With ``train.data.validation`` the held-out samples move from the training arrays to the
    validation arrays (``validation_index``: those a checkpoint recorded, instead of a fresh draw).
    """
    data = load_data(spec.train.data, seed=spec.seed, dtype=dtype, base_dir=_spec_dir(spec))
    held = getattr(spec.train.data, "validation", None)
    if held is not None:
        data = split_validation(data, held, spec.seed, validation_index)
    return data


def trainer_for(spec, *, out=None, epochs=None, dtype=None, quiet=False, progress=None, callbacks=(),
                save=True, data=None, force=False, **options):
    """A fresh Trainer for a spec (path, dict or NetSpec); writes to ``out`` (or runs/...) when ``save``.

    An ``out`` that already holds a run is refused unless ``force`` replaces it. Options:
    ``test=False`` drops the test arrays before the Trainer sees them (a tuning trial never
    reads the test set), ``log`` and ``signals`` go to the Trainer.
    """
    comm = world()
    tr = agree(comm, lambda: _fresh_trainer(comm, spec, out, epochs, dtype, quiet, progress, callbacks,
                                            save, data, force, **options))
    return _same_everywhere(comm, tr)


def _same_everywhere(comm, tr):
    """The trainer, once every rank is known to hold the same spec and data (see check_same_inputs)."""
    try:
        check_same_inputs(comm, spec_to_dict(tr.model.spec), {
            "x_train": tr.x_train, "t_train": tr.t_train, "x_val": tr.x_val, "t_val": tr.t_val,
            "x_test": tr.x_test, "t_test": tr.t_test})
    except BaseException:
        if tr.files:
            tr.files.release()
        raise
    return tr


def _fresh_trainer(comm, spec, out, epochs, dtype, quiet, progress, callbacks, save, data, force, test=True,
                   log=None, signals=None):
    spec = load_spec(spec)
    if spec.train is None:
        raise SpecError(f"{spec.source}: the spec has no 'train' section; add one to train it", file=spec.source)
    spec = pin_data(spec)
    model = compile(spec, dtype=dtype)
    files = None
    if save and comm.rank == 0:  # data-parallel: rank 0 alone writes the run directory
        files = RunDir(out or default_run_dir(spec))
        files.claim(force=force)
    try:
        data = data if data is not None else load_spec_data(spec, model.dtype)
        if not test:
            data = without_test(data)
        return Trainer(model, data, run_dir=files, epochs=epochs, quiet=quiet, progress=progress,
                       callbacks=callbacks, comm=comm, log=log, signals=signals)
    except BaseException:
        if files:
            files.release()
        raise


def resume_trainer(run_dir, *, epochs=None, quiet=False, progress=None, callbacks=()):
    """A Trainer restored from ``run_dir/model.npz``, ready to continue (the directory is claimed).

    Data-parallel, rank 0 claims the directory and reads the checkpoint, and sends it to
    the other ranks; a checkpoint written with any number of ranks resumes with any other.
    """
    comm = world()
    files = RunDir(run_dir)

    def read():
        if comm.rank == 0:
            files.claim(resume=True)
            try:
                meta, arrays = read_checkpoint(files.checkpoint_path)
                _check_resolved_spec(files, meta)
            except BaseException:
                files.release()
                raise
            return meta, arrays
        return None

    meta, arrays = comm.bcast(agree(comm, read))
    mine = files if comm.rank == 0 else None
    try:
        tr = agree(comm, lambda: _restored_trainer(comm, mine, meta, arrays, epochs, quiet, progress, callbacks))
    except BaseException:
        if mine:
            mine.release()
        raise
    return _same_everywhere(comm, tr)


def _check_resolved_spec(files, meta):
    written = files.resolved_spec()
    if written is not None and written != meta.get("spec"):
        raise RunDirError(f"{files.file('spec.resolved.json')} differs from the spec stored in "
                          f"{files.checkpoint_path}{first_difference(written, meta.get('spec'))}: a resumed "
                          "run continues the checkpoint's spec. Restore the file (or delete it), or start "
                          "a new run from the edited spec with --out")


def _restored_trainer(comm, files, meta, arrays, epochs, quiet, progress, callbacks):
    model = model_from_checkpoint(meta, arrays, files.checkpoint_path if files else "the checkpoint")
    data = load_spec_data(model.spec, model.dtype, arrays.get("split/validation"))
    st = meta.get("trainer") or {}
    tr = Trainer(model, data, run_dir=files, epochs=epochs, quiet=quiet, progress=progress,
                 callbacks=callbacks, comm=comm)
    if epochs is None and "total_steps" in st:
        tr.total_steps = st["total_steps"]
        tr.epochs = math.ceil(tr.total_steps / tr.steps_per_epoch)
    tr.restore(meta, arrays)
    return tr


def train(spec, *, out=None, epochs=None, dtype=None, quiet=True, progress=False, callbacks=(), save=False,
          force=False):
    """Train a spec (path, dict or NetSpec) and return its History (``.model`` holds the model).

    Nothing is written unless ``save=True`` or ``out`` is given.
    """
    tr = trainer_for(spec, out=out, epochs=epochs, dtype=dtype, quiet=quiet, progress=progress,
                     callbacks=callbacks, save=save or out is not None, force=force)
    return tr.run()


__all__ = ["trainer_for", "resume_trainer", "train", "load_spec_data", "pin_data"]
