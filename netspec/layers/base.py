"""The layer protocol, the closed layer registry, and spec field types shared by layers.

Design: each layer class carries its own Pydantic ``Spec`` (a ``type`` literal
plus its fields); ``@register`` adds the class under every name its literal
allows. The spec schema's discriminated union is built from this registry, so
the two can never name different sets of types. ``Layer`` declares every hook
a layer may provide, each with a default, so the model, the compiler and the
gradient checker call them without probing. Shapes exclude the batch axis.
"""
import math
from typing import Annotated, Optional, Union, get_args

from pydantic import BeforeValidator, Field, StrictInt

from .._strict import Strict
from ..errors import ShapeError
from ..init import initialize

LAYERS = {}

# Dots separate the scopes of expanded blocks: stage2.block1.conv1.
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", max_length=200)]


def _pair(v):
    """An int means the same value on both axes; a list of two is a pair."""
    if isinstance(v, bool):
        return v  # let pydantic reject it
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, list):
        return tuple(v)
    return v


# Strides and paddings beyond any input a CPU network sees; larger values overflowed the
# kernels' 64-bit index arithmetic (a stride of 2**63 compiled, then failed at forward).
MAX_STRIDE_OR_PAD = 65536

PositivePair = Annotated[tuple[Annotated[StrictInt, Field(gt=0)], Annotated[StrictInt, Field(gt=0)]],
                         BeforeValidator(_pair)]


class LayerSpec(Strict):
    """Fields every layer accepts."""
    name: Optional[Name] = Field(None, description="unique layer name; generated (conv1, relu2, ...) when omitted")
    inputs: Optional[list[Name]] = Field(
        None, min_length=1,
        description="names of the layers feeding this one ('input' for the network input); default: the previous layer")


def register(cls):
    """Class decorator: add a layer class to the registry under its type name(s).

    The nested ``Spec`` is re-declared as ``<Layer>Spec`` so schema definitions get readable,
    unique names (every layer's class is spelled ``Spec`` in its source).
    """
    name = cls.__name__ + "Spec"
    cls.Spec = type(name, (cls.Spec,), {"__module__": cls.__module__, "__qualname__": name,
                                        "__doc__": cls.Spec.__doc__ or cls.__doc__})
    for type_name in get_args(cls.Spec.model_fields["type"].annotation):
        if type_name in LAYERS:
            raise RuntimeError(f"layer type {type_name!r} registered twice")
        LAYERS[type_name] = cls
    return cls


def layer_spec_union():
    """The discriminated union of every registered layer's Spec."""
    specs = tuple(dict.fromkeys(cls.Spec for cls in LAYERS.values()))
    return Annotated[Union[specs], Field(discriminator="type")]


class Layer:
    """A node of the compiled model: ``forward`` caches what ``backward`` needs.

    Construction has two steps: ``Layer(spec, name, input_names, in_shapes)`` infers the
    output shape (raising ShapeError if the input cannot fit), then ``build(rng, dtype)``
    creates the parameters and buffers. Every hook below has a default; a layer
    overrides only what it has.
    """

    Spec = LayerSpec
    prefix = "layer"      # used for generated names: conv1, relu2, ...
    kernels = None        # the kernel seam (netspec.kernels), given by the Model that runs the layer:
                          # layer modules never import it, so validating a spec loads no kernels
    n_inputs = 1          # how many inputs it takes (None: two or more); forward/backward take lists if not 1
    buffer_names = ()     # the names ``buffers()`` returns, known before the layer is built

    def __init__(self, spec, name, input_names, in_shapes):
        self.spec = spec
        self.name = name
        self.input_names = list(input_names)
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.in_shape = self.in_shapes[0]
        self.out_shape = tuple(self.infer_shape())
        self.params = {}
        self.grads = {}

    # -- compile time -------------------------------------------------------
    def infer_shape(self):
        """Output shape (no batch axis) from ``self.in_shapes``; raise ShapeError if it cannot fit."""
        return self.in_shape

    def param_specs(self):
        """{param name: (shape, init spec, fan_in)} of the arrays this layer learns."""
        return {}

    def build(self, rng, dtype, where=""):
        """Create the parameters (drawn from ``rng`` in declaration order) and buffers."""
        for pname, (shape, init, fan_in) in self.param_specs().items():
            at = f"{where}.{pname}"
            try:
                self.params[pname] = initialize(init, shape, fan_in, rng, dtype, where=at)
            except ShapeError:
                raise
            except (ValueError, MemoryError) as exc:  # numpy: "Maximum allowed dimension exceeded", out of memory
                raise ShapeError(f"{at}: cannot allocate a parameter shaped {list(shape)} "
                                 f"({math.prod(shape):,} elements): {exc}") from None
        self.init_buffers(dtype)

    def init_buffers(self, dtype):
        """Create non-learned state (e.g. running statistics); none by default."""

    def buffers(self):
        """{name: array} of non-learned state saved with the parameters."""
        return {}

    def no_decay(self):
        """Names of this layer's parameters that weight decay may skip (the bias)."""
        return [k for k in self.params if k == "b"]

    def attrs(self):
        """The spec's fields that describe the computation, defaults resolved (for export)."""
        skip = {"type", "name", "inputs", "init", "bias_init"}
        return {k: v for k, v in self.spec.model_dump(mode="json").items() if k not in skip}

    def flops(self):
        """Forward floating point operations per sample (multiply-add counts 2)."""
        return math.prod(self.out_shape)

    def shape_error(self, message):
        return ShapeError(message)

    # -- run time -----------------------------------------------------------
    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, dout, need_dx=True):
        """Fill ``self.grads`` and return d/dx; with ``need_dx=False`` a layer may return None."""
        raise NotImplementedError

    def set_rng(self, rng):
        """Layers that draw random numbers (dropout) take their generator here."""

    def kink_state(self):
        """For non-smooth layers, an array recording which side of each kink the last forward
        was on (ReLU signs, pooling winners); None for smooth layers. Gradient checks skip
        elements whose perturbation changes it."""
        return None


class MultiInputLayer(Layer):
    """A layer fed by two or more named inputs: forward(list) / backward -> list."""
    n_inputs = None
