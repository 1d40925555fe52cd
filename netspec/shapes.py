"""Shape inference over a validated spec: each layer's output shape, with no kernels and no weights.

``infer_layers`` constructs the layer objects of a spec (each infers its output
shape from its inputs' shapes) without creating parameters, so ``netspec
validate`` checks a spec's shapes without loading the kernel backend or
allocating anything; ``netspec.compiler`` builds the same layers afterwards.
A shape error names the layer's file:line:col, its label and what it receives.
"""
from .errors import ShapeError
from .layers import LAYERS, LOSSES


def where(spec, i):
    """``file:line:col: label`` of layer ``i`` for messages (the label alone without a position)."""
    file, line, col = spec.locate(("layers", i))
    label = spec.label(("layers", i))
    uses = spec.uses(i)
    if uses:
        label += f" (in {uses})"
    if file and line:
        return f"{file}:{line}:{col}: {label}"
    return label


def infer_layers(spec):
    """The unbuilt layers of ``spec`` (a NetSpec), in order, each with its ``out_shape``; ShapeError if any
    layer cannot take its inputs or the loss cannot take the last layer's output."""
    shapes = {"input": tuple(spec.input.shape)}
    layers = []
    for i, (ls, name, input_names) in enumerate(zip(spec.layers, spec.layer_names, spec.layer_inputs)):
        try:
            layer = LAYERS[ls.type](ls, name, input_names, [shapes[n] for n in input_names])
        except ShapeError as exc:
            incoming = ", ".join(f"{list(shapes[n])} from '{n}'" for n in input_names)
            raise ShapeError(f"{where(spec, i)}: layer '{name}' ({ls.type}) receives {incoming}: {exc}") from None
        shapes[name] = layer.out_shape
        layers.append(layer)
    out_shape = layers[-1].out_shape
    if LOSSES[spec.loss].classification and len(out_shape) != 1:
        raise ShapeError(f"{where(spec, len(layers) - 1)}: loss '{spec.loss}' needs a vector of class "
                         f"scores per sample, but the last layer outputs {list(out_shape)}")
    return layers
