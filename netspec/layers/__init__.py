"""Every layer family, registered on import; LAYERS is the closed registry."""
from .base import LAYERS, Layer, MultiInputLayer, layer_spec_union, register
from . import activations, conv, dense, dropout, merge, norm, pool  # noqa: F401  (registration)
from .losses import LOSSES

__all__ = ["LAYERS", "LOSSES", "Layer", "MultiInputLayer", "layer_spec_union", "register"]
