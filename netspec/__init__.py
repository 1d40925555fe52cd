"""netspec: describe small neural networks in YAML/JSON, compile them, train them on CPUs.

    import netspec
    spec = netspec.load_spec("specs/simple_convnet.yaml")
    model = netspec.compile(spec)            # float32 unless the spec or dtype= says otherwise
    model.predict(x); loss, grads = model.gradient(x, t); model.params["conv1.W"]

Importing netspec changes nothing in the process: the kernel backend is chosen,
and its process settings applied (netspec.runtime), when the first model is
built. ``compile``, ``load``, ``train`` and ``BACKEND`` are loaded on first use,
so validating a spec never loads the kernels.
"""
import importlib

from ._version import __version__
from .errors import (CheckpointError, DataError, NetspecError, ShapeError, SpecError,
                     TrainingDiverged)
from .spec import load_spec

__all__ = ["__version__", "compile", "load_spec", "load", "train", "BACKEND",
           "NetspecError", "SpecError", "ShapeError", "DataError", "CheckpointError",
           "TrainingDiverged"]

# name -> (module, attribute): compile(spec), load(checkpoint path), train(spec, **options)
# (see netspec.runner.train), and the kernel backend in use ("cython" or "numpy")
_LAZY = {"compile": ("compiler", "compile"), "load": ("checkpoint", "load_model"),
         "train": ("runner", "train"), "BACKEND": ("kernels", "BACKEND")}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'netspec' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    if name != "BACKEND":
        globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
