"""netspec: describe small neural networks in YAML/JSON, compile them, train them on CPUs.

    import netspec
    spec = netspec.load_spec("specs/simple_convnet.yaml")
    model = netspec.compile(spec)            # float32 unless the spec or dtype= says otherwise
    model.predict(x); loss, grads = model.gradient(x, t); model.params["conv1.W"]
"""
from ._version import __version__
from .compile import compile
from .errors import (CheckpointError, DataError, NetspecError, ShapeError, SpecError,
                     TrainingDiverged)
from .kernels import BACKEND
from .spec import load_spec

__all__ = ["__version__", "compile", "load_spec", "load", "train", "BACKEND",
           "NetspecError", "SpecError", "ShapeError", "DataError", "CheckpointError",
           "TrainingDiverged"]


def load(path, dtype=None):
    """A ready model from a checkpoint written by ``netspec run`` (``model.npz``)."""
    from .checkpoint import load_model
    return load_model(path, dtype=dtype)


def train(spec, **kwargs):
    """Train a spec (path, dict or NetSpec); returns the Trainer's history. See netspec.runner.train."""
    from .runner import train as _train
    return _train(spec, **kwargs)
