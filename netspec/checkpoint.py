"""Checkpoints: plain arrays in one ``.npz``, written atomically, read without pickle.

Layout of ``model.npz`` (every entry a plain numeric or string array):

- ``param/<layer>.<name>``   learned parameters, as in ``model.params``
- ``buffer/<layer>.<name>``  non-learned state (batchnorm running statistics)
- ``optim/<slot>/<param>``, ``optim/t``   optimizer state
- ``sampler/perm``           the shuffled order of the current epoch, if any
- ``meta``                   a JSON string: format and netspec version, the resolved
                             spec, trainer state, RNG states, the training history

The file is written to a temporary name in the same folder, flushed to disk and
renamed over the old one, so a crash at any moment leaves either the old or the
new checkpoint, never a broken one.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from ._version import __version__
from .errors import CheckpointError

FORMAT = "netspec-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path, model, optimizer=None, trainer_state=None, extra_arrays=None):
    """Write model (and training) state to ``path`` atomically."""
    from .spec import spec_to_dict
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
    arrays["meta"] = np.array(json.dumps(meta))
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".npz.tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_checkpoint(path):
    """Return (meta dict, {name: array}) after checking the file thoroughly."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise CheckpointError(f"{path}: refused: the file holds pickled Python objects, "
                                  "which netspec never loads (they can run code)") from None
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: not a netspec checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a netspec checkpoint (format is {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer netspec (checkpoint format "
                              f"{meta['format_version']}, this netspec reads up to {FORMAT_VERSION})")
    for k, v in arrays.items():
        if v.dtype.kind not in "biuf":
            raise CheckpointError(f"{path}: entry {k!r} has dtype {v.dtype}; checkpoints hold only numbers")
    return meta, arrays


def _group(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def model_from_checkpoint(meta, arrays, path="", dtype=None):
    from .compile import compile
    from .spec import load_spec
    from .errors import NetspecError
    try:
        spec = load_spec(meta["spec"], source=f"{path} (embedded spec)")
        model = compile(spec, dtype=dtype or meta.get("dtype"))
    except (NetspecError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the embedded spec is invalid: {exc}") from None
    weights = {**_group(arrays, "param/"), **_group(arrays, "buffer/")}
    try:
        model.load_arrays(weights)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    for k, v in weights.items():
        if not np.all(np.isfinite(v)):
            raise CheckpointError(f"{path}: parameter {k} holds NaN or infinite values")
    return model


def load_model(path, dtype=None):
    """A ready model from a checkpoint; ``dtype`` casts it (e.g. float16 for inference)."""
    meta, arrays = read_checkpoint(path)
    return model_from_checkpoint(meta, arrays, os.fspath(path), dtype)


def optimizer_state(arrays):
    return _group(arrays, "optim/")
