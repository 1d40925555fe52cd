"""Compile a validated spec into a Model: shape inference, then seeded parameter initialisation.

Random streams come from ``netspec.seeds``; the parameters are drawn layer by
layer, in file order, from the init stream. Names and the graph (``inputs``
references, unused outputs) were already checked when the spec was validated;
shapes are inferred by ``netspec.shapes``.
"""
import os

import numpy as np

from .errors import SpecError
from .layers import LOSSES
from .model import Model
from .seeds import seed_streams
from .shapes import infer_layers, where
from .spec import load_spec


def compile(spec, dtype=None, optimize=None):
    """Build a Model from a spec (path, dict or NetSpec). dtype overrides the spec's.

    ``optimize=False`` makes predict and evaluate run the plain graph, layer by layer
    as the spec lists them (the reference the passes are tested against); the default
    is True unless the environment sets NETSPEC_OPTIMIZE=0.
    """
    spec = load_spec(spec)
    dtype = np.dtype(dtype or spec.dtype)
    if dtype.kind != "f":
        raise SpecError(f"dtype must be a floating type (float16, float32, float64), got {dtype}")
    compute = np.dtype(np.float32) if dtype == np.float16 else dtype  # see Model: float16 semantics
    init_ss, _, dropout_ss = seed_streams(spec.seed)
    rng = np.random.default_rng(init_ss)
    layers = infer_layers(spec)
    for i, layer in enumerate(layers):
        layer.build(rng, compute, where=f"{where(spec, i)} ('{layer.name}')")
    if optimize is None:
        optimize = os.environ.get("NETSPEC_OPTIMIZE", "") != "0"
    return Model(spec, layers, LOSSES[spec.loss](), dtype, np.random.default_rng(dropout_ss), bool(optimize))
