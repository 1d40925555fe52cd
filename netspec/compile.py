"""Compile a validated spec into a Model: registry lookup, shape inference, seeded init.

Random streams come from ``netspec.seeds``. Names and the graph (``inputs`` references, unused
outputs) were already checked when the spec was validated.
"""
import numpy as np

from .errors import ShapeError
from .layers import LAYERS, LOSSES
from .model import Model
from .seeds import seed_streams
from .spec import load_spec


def _where(spec, i):
    file, line, col = spec.locate(("layers", i))
    label = spec.label(("layers", i))
    uses = spec.uses(i)
    if uses:
        label += f" (in {uses})"
    if file and line:
        return f"{file}:{line}:{col}: {label}"
    return label


def compile(spec, dtype=None):
    """Build a Model from a spec (path, dict or NetSpec). dtype overrides the spec's."""
    spec = load_spec(spec)
    dtype = np.dtype(dtype or spec.dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    compute = np.dtype(np.float32) if dtype == np.float16 else dtype  # see Model: float16 semantics
    init_ss, _, dropout_ss = seed_streams(spec.seed)
    rng = np.random.default_rng(init_ss)
    shapes = {"input": tuple(spec.input.shape)}
    layers = []
    for i, (ls, name, input_names) in enumerate(zip(spec.layers, spec.layer_names, spec.layer_inputs)):
        try:
            layer = LAYERS[ls.type](ls, name, input_names, [shapes[n] for n in input_names])
        except ShapeError as exc:
            incoming = ", ".join(f"{list(shapes[n])} from '{n}'" for n in input_names)
            raise ShapeError(f"{_where(spec, i)}: layer '{name}' ({ls.type}) receives {incoming}: {exc}") from None
        layer.build(rng, compute, where=f"{_where(spec, i)} ('{name}')")
        shapes[name] = layer.out_shape
        layers.append(layer)
    loss = LOSSES[spec.loss]()
    out_shape = layers[-1].out_shape
    if loss.classification and len(out_shape) != 1:
        raise ShapeError(f"{_where(spec, len(layers) - 1)}: loss '{spec.loss}' needs a vector of class "
                         f"scores per sample, but the last layer outputs {list(out_shape)}")
    return Model(spec, layers, loss, dtype, np.random.default_rng(dropout_ss))
