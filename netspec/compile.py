"""Compile a validated spec into a Model: registry lookup, shape inference, seeded init.

Random streams: ``SeedSequence(spec.seed)`` spawns three children — parameter
initialisation, training (batches, augmentation), and dropout masks — so each
is reproducible on its own.
"""
import math

import numpy as np
from pydantic import TypeAdapter

from .errors import ShapeError
from .init import ConstantInit, InitSpec, initialize
from .layers import LAYERS, LOSSES
from .model import Model
from .spec import load_spec

_init_adapter = TypeAdapter(InitSpec)


def _resolve_init(init):
    if isinstance(init, str):
        return ConstantInit(value=1.0) if init == "ones" else _init_adapter.validate_python(init)
    return init


def seed_streams(seed):
    """(init, train, dropout) SeedSequences derived from one spec seed."""
    return np.random.SeedSequence(seed).spawn(3)


def _where(spec, i):
    line, col = spec.position(("layers", i))
    if spec.source and line:
        return f"{spec.source}:{line}:{col}: layers[{i}]"
    return f"layers[{i}]"


def compile(spec, dtype=None):
    """Build a Model from a spec (path, dict or NetSpec). dtype overrides the spec's."""
    spec = load_spec(spec)
    dtype = np.dtype(dtype or spec.dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    init_ss, _, dropout_ss = seed_streams(spec.seed)
    rng = np.random.default_rng(init_ss)
    shapes = {"input": tuple(spec.input.shape)}
    consumers = {}
    layers, prev = [], "input"
    for i, (ls, name) in enumerate(zip(spec.layers, spec.layer_names)):
        input_names = list(ls.inputs or [prev])
        for n in input_names:
            consumers.setdefault(n, []).append(name)
        try:
            layer = LAYERS[ls.type](ls, name, [shapes[n] for n in input_names])
        except ShapeError as exc:
            incoming = ", ".join(f"{list(shapes[n])} from '{n}'" for n in input_names)
            raise ShapeError(f"{_where(spec, i)}: layer '{name}' ({ls.type}) receives {incoming}: {exc}") from None
        layer.input_names = input_names
        for pname, (shape, init, fan_in) in layer.param_specs().items():
            where = f"{_where(spec, i)} ('{name}').{pname}"
            try:
                layer.params[pname] = initialize(_resolve_init(init), shape, fan_in, rng, dtype, where=where)
            except ShapeError:
                raise
            except (ValueError, MemoryError) as exc:  # numpy: "Maximum allowed dimension exceeded", out of memory
                raise ShapeError(f"{where}: cannot allocate a parameter shaped {list(shape)} "
                                 f"({math.prod(shape):,} elements): {exc}") from None
        if hasattr(layer, "init_buffers"):
            layer.init_buffers(dtype)
        shapes[name] = layer.out_shape
        layers.append(layer)
        prev = name
    unused = [l.name for l in layers[:-1] if l.name not in consumers]
    if unused:
        i = spec.layer_names.index(unused[0])
        raise ShapeError(f"{_where(spec, i)}: the output of layer '{unused[0]}' is never used "
                         f"(no later layer takes it as input); every layer but the last must feed another")
    loss = LOSSES[spec.loss]()
    out_shape = layers[-1].out_shape
    if loss.classification and len(out_shape) != 1:
        raise ShapeError(f"{_where(spec, len(layers) - 1)}: loss '{spec.loss}' needs a vector of class "
                         f"scores per sample, but the last layer outputs {list(out_shape)}")
    return Model(spec, layers, loss, dtype, np.random.default_rng(dropout_ss))
