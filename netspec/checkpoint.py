"""Checkpoints: plain arrays in one ``.npz``, written atomically, read without pickle.

Layout of ``model.npz`` (every entry a plain numeric or string array):

- ``param/<layer>.<name>``   learned parameters, as in ``model.params``
- ``buffer/<layer>.<name>``  non-learned state (batchnorm running statistics)
- ``optim/<slot>/<param>``, ``optim/t``   optimizer state
- ``sampler/perm``           the shuffled order of the current epoch, if any
- ``split/validation``       the training samples held out for validation, if any
- ``meta``                   a JSON string: format and netspec version, the resolved
                             spec, trainer state, RNG states, the training history

The file is written to a temporary name in the same folder, flushed to disk and
renamed over the old one, so a crash at any moment leaves either the old or the
new checkpoint, never a broken one.
"""
import json
import os

import numpy as np

from . import jsonout
from ._version import __version__
from .atomic import atomic_write, remove_dead_temporaries
from .compiler import compile
from .errors import CheckpointError, DataError, NetspecError
from .safeio import load_npz
from .spec import load_spec, spec_to_dict

FORMAT = "netspec-checkpoint"
FORMAT_VERSION = 1
def save_checkpoint(path, model, optimizer=None, trainer_state=None, extra_arrays=None):
    """Write model (and training) state to ``path`` atomically."""
    arrays = {f"param/{k}": v for k, v in model.params.items()}
    arrays.update({f"buffer/{k}": v for k, v in model.buffers.items()})
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    for k, v in (extra_arrays or {}).items():
        arrays[k] = v
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "netspec_version": __version__,
        "dtype": str(model.dtype),
        "spec": spec_to_dict(model.spec),
        "spec_source": model.spec.source,
        "trainer": trainer_state,
    }
    arrays["meta"] = np.array(jsonout.dumps(meta))
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_dead_temporaries(folder)   # left by a writer killed here earlier (a kill -9 mid-save)
    with atomic_write(path, "wb", prefix=".model-", suffix=".npz.tmp") as f:
        np.savez(f, **arrays)
    return path


def read_checkpoint(path):
    """Return (meta dict, {name: array}) after checking the file thoroughly.

    Only a regular file is opened (a FIFO would hang, /dev/zero never ends), and
    every entry's declared size is checked against the bytes really there
    before it is allocated; see ``netspec.safeio``.
    """
    path = os.fspath(path)
    arrays = load_npz(path, what="checkpoint", error=CheckpointError)
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not a netspec checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{path}: not a netspec checkpoint (format is {str(found)[:80]!r}, "
                              f"expected {FORMAT!r})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata: format_version is {version!r}, "
                              "expected an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer netspec (checkpoint format "
                              f"{meta['format_version']}, this netspec reads up to {FORMAT_VERSION})")
    for k, v in arrays.items():
        if v.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: entry {k!r} has dtype {v.dtype}; checkpoints hold only numbers")
    return meta, arrays


def _group(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def model_from_checkpoint(meta, arrays, path="", dtype=None):
    if not isinstance(meta.get("spec"), dict):  # never a path: a checkpoint names no file to read
        raise CheckpointError(f"{path}: the checkpoint holds no embedded spec (a mapping under meta.spec)")
    if dtype is None and meta.get("dtype") not in (None, "float16", "float32", "float64"):
        raise CheckpointError(f"{path}: meta.dtype is {str(meta.get('dtype'))[:40]!r}; expected float16, "
                              "float32 or float64")
    try:
        spec = load_spec(meta["spec"], source=f"{path} (embedded spec)")
        model = compile(spec, dtype=dtype or meta.get("dtype"))
    except NetspecError as exc:
        raise CheckpointError(f"{path}: the embedded spec is invalid: {exc}") from None
    weights = {**_group(arrays, "param/"), **_group(arrays, "buffer/")}
    try:
        model.load_arrays(weights)
    except DataError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model


def load_model(path, dtype=None):
    """A ready model from a checkpoint; ``dtype`` casts it (e.g. float16 for inference)."""
    meta, arrays = read_checkpoint(path)
    return model_from_checkpoint(meta, arrays, os.fspath(path), dtype)


def optimizer_state(arrays):
    return _group(arrays, "optim/")
