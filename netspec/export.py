"""ONNX export of a compiled model, and the ``netspec export`` command.

Design: ``Model.graph()`` already describes a network as plain data (ops,
inputs, attributes, output shapes and the keys of its arrays), so export is one
walk over its nodes in file order. Each netspec layer type has one small emitter
function in ``EMITTERS``; an emitter reads the attributes it understands through
``_Layer.attrs`` (an attribute it does not name is an ``ExportError``, so a field
added to a layer later can never be dropped silently), adds standard ``ai.onnx``
nodes and returns the name of the tensor that holds the layer's output.
Parameters and running statistics become initializers named like their
``model.params`` / ``model.buffers`` keys (``conv1.W``); each layer's output is
a tensor named after the layer with its netspec shape declared, so the checker's
strict shape inference (run on every export) re-derives every shape netspec
computed. The batch axis is the symbolic dimension "N". onnx is imported only
inside functions: this module imports without it.

Conventions, each matching ``Model.predict``:

- the graph input is ``input`` shaped (N, *model.input_shape); the graph output
  is ``output``, the last layer's output (raw scores), or with
  ``probabilities=True`` ``probabilities``, a Softmax over axis 1 of it;
- maxpool2d pads with -inf (ONNX MaxPool ignores padding), avgpool2d divides by
  kh*kw counting padding as zeros (``count_include_pad=1``); both drop a ragged
  last row/column (floor mode, ONNX's default ``ceil_mode=0``);
- dense/affine flattens N-D input (Flatten axis=1) and multiplies by W stored
  (in, out): Gemm(x, W, b), or MatMul(x, W) when it has no bias;
- softmax is over the last axis; the axis is written as a positive index, which
  means the same thing under the pre-13 "coerce to 2-D at the axis" rule;
- batchnorm is the inference form: BatchNormalization with the running
  statistics and the layer's eps (``momentum`` only matters in training). A
  (features,) input arrives as (N, C), which BatchNormalization takes as is
  (N x C x D1..Dn with no spatial axes), so no reshape is needed;
- dropout is the identity at inference (netspec's dropout is inverted) and adds
  no node; add chains binary Adds in input order (netspec's summation order);
  concat joins along axis 1 (channels, or features for 1-D layers).

dtypes: a float32, float64 or float16 model exports in its own dtype. ONNX
Runtime's CPU provider has no float64 Conv or AveragePool kernel; to run such a
model there, load it as float32 first (``netspec.load(path, dtype="float32")``
or ``netspec export --dtype float32``). Opsets 7 (the oldest ONNX Runtime
supports) up to the newest the installed onnx knows are accepted.
"""
import json
import os
import math

import numpy as np

from ._version import __version__
from .atomic import atomic_write, remove_dead_temporaries
from .errors import NetspecError
from .spec import spec_to_dict

DEFAULT_OPSET = 17
MIN_OPSET = 7  # AveragePool's count_include_pad and Gemm's broadcast bias need it; ONNX Runtime's oldest
INPUT = "input"
OUTPUT = "output"
PROBABILITIES = "probabilities"
BATCH_DIM = "N"


class ExportError(NetspecError, ValueError):
    """The model, or one of its layers, cannot be written as ONNX as asked."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError('ONNX export needs the onnx package: pip install "netspec[onnx]"') from None
    return onnx


def _elem_type(dtype, onnx):
    """ONNX tensor element type of a numpy float dtype (float16/32/64)."""
    types = {"float16": onnx.TensorProto.FLOAT16, "float32": onnx.TensorProto.FLOAT,
             "float64": onnx.TensorProto.DOUBLE}
    if np.dtype(dtype).name not in types:
        raise ExportError(f"cannot export a {np.dtype(dtype).name} model: ONNX export supports "
                          f"float16, float32 and float64 (compile or load the model with one of them)")
    return types[np.dtype(dtype).name]


def _check_opset(opset, onnx):
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise ExportError(f"opset must be an integer, got {opset!r}")
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: netspec exports ONNX opset {MIN_OPSET} or newer "
                          f"(AveragePool's count_include_pad and Gemm's broadcast bias need opset 7)")
    if opset > newest:
        raise ExportError(f"opset {opset} is newer than the installed onnx {onnx.__version__} knows "
                          f"(up to {newest}); upgrade onnx or pick an older opset")
    return int(opset)


def _tensor_name(layer_name):
    """ONNX name of a layer's output. A layer called like a graph input or output gets a
    suffix, which cannot clash: '/' is not allowed in layer names."""
    return f"{layer_name}/y" if layer_name in (INPUT, OUTPUT, PROBABILITIES) else layer_name


class _Graph:
    """The ONNX nodes, initializers and declared shapes collected for one model."""

    def __init__(self, model, onnx):
        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.dtype = np.dtype(model.dtype)
        self.elem_type = _elem_type(self.dtype, onnx)
        self.arrays = {**model.params, **model.buffers}
        self.nodes, self.initializers, self.value_info = [], [], []
        self.declared = {INPUT}
        self.stored = set()

    def node(self, op, inputs, output, name=None, **attrs):
        """Add one node with a single output; returns the output's name."""
        self.nodes.append(self.helper.make_node(op, list(inputs), [output], name=name or output, **attrs))
        return output

    def initializer(self, key):
        """Store ``model.params[key]`` or ``model.buffers[key]`` once, under the same name."""
        if key not in self.stored:
            array = np.ascontiguousarray(self.arrays[key], dtype=self.dtype)
            self.initializers.append(self.numpy_helper.from_array(array, key))
            self.stored.add(key)
        return key

    def tensor_info(self, name, shape):
        """Type and shape (batch axis N first) of a tensor."""
        return self.helper.make_tensor_value_info(name, self.elem_type, [BATCH_DIM] + list(shape))

    def declare(self, name, shape):
        """Record an intermediate tensor's shape (without the batch axis) for the checker to verify."""
        if name not in self.declared:
            self.value_info.append(self.tensor_info(name, shape))
            self.declared.add(name)
        return name


class _Layer:
    """One ``Model.graph()`` node as an emitter sees it: name, op, shapes, attributes, arrays."""

    def __init__(self, node, in_shapes, graph):
        self.name, self.op = node["name"], node["op"]
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.out_shape = tuple(node["output_shape"])
        self._node, self._graph = node, graph

    def error(self, message):
        return ExportError(f"layer '{self.name}' ({self.op}): {message}")

    def attrs(self, *names):
        """The values of the named attributes, in order. An attribute the emitter does not name
        has no ONNX mapping here, so it is an error rather than something to ignore."""
        given = self._node["attrs"]
        unknown = [k for k in given if k not in names]
        if unknown:
            raise self.error(f"attribute '{unknown[0]}' (= {given[unknown[0]]!r}) has no ONNX mapping "
                             f"in netspec.export; it handles {', '.join(names) or 'no attributes'}")
        missing = [k for k in names if k not in given]
        if missing:
            raise self.error(f"Model.graph() gives no attribute '{missing[0]}', which export needs")
        return [given[k] for k in names]

    def array(self, key):
        """Initializer name of this layer's parameter or buffer ``key`` (e.g. 'W', 'running_mean')."""
        full = self._node["params"].get(key) or self._node["buffers"].get(key)
        if full is None:
            raise self.error(f"has no array '{key}' (params {sorted(self._node['params'])}, "
                             f"buffers {sorted(self._node['buffers'])})")
        return self._graph.initializer(full)


# ---------------------------------------------------------------- emitters
# emitter(g, layer, xs, out) -> name of the output tensor. xs are the ONNX names
# of the layer's inputs; ``out`` is the name its output should get. Shapes below
# include the batch axis N.

def _conv2d(g, layer, xs, out):
    """(N, C, H, W) -> (N, filters, OH, OW): Conv with W (filters, C, kh, kw) and b (filters,),
    zero padding ``pad`` on every side, the same stride on both axes."""
    _filters, kernel, stride, pad, bias = layer.attrs("filters", "kernel", "stride", "pad", "bias")
    inputs = [xs[0], layer.array("W")] + ([layer.array("b")] if bias else [])
    return g.node("Conv", inputs, out, kernel_shape=list(kernel), strides=[stride, stride], pads=[pad] * 4)


def _window(layer):
    size, stride, pad = layer.attrs("size", "stride", "pad")
    return {"kernel_shape": list(size), "strides": [stride, stride], "pads": [pad] * 4}


def _maxpool2d(g, layer, xs, out):
    """(N, C, H, W) -> (N, C, OH, OW): MaxPool. ONNX never picks a padded cell, which is
    netspec's -inf padding; floor mode (the default ceil_mode=0) drops a ragged edge."""
    return g.node("MaxPool", [xs[0]], out, **_window(layer))


def _avgpool2d(g, layer, xs, out):
    """(N, C, H, W) -> (N, C, OH, OW): AveragePool dividing by kh*kw, padding counted as zeros
    (count_include_pad=1); floor mode. Windows never pass the padded edge in floor mode,
    so every divisor is kh*kw, as in netspec."""
    return g.node("AveragePool", [xs[0]], out, count_include_pad=1, **_window(layer))


def _globalavgpool2d(g, layer, xs, out):
    """(N, C, H, W) -> (N, C): GlobalAveragePool gives (N, C, 1, 1); Flatten(axis=1) drops the 1x1."""
    C = layer.in_shapes[0][0]
    pooled = g.declare(g.node("GlobalAveragePool", [xs[0]], f"{layer.name}/pooled"), [C, 1, 1])
    return g.node("Flatten", [pooled], out, axis=1)


def _dense(g, layer, xs, out):
    """(N, *in) -> (N, units): Flatten(axis=1) for N-D input, then Gemm(x, W, b) with W (in, units)
    and b (units,), or MatMul(x, W) without a bias."""
    _units, bias = layer.attrs("units", "bias")
    x = xs[0]
    if len(layer.in_shapes[0]) != 1:
        x = g.declare(g.node("Flatten", [x], f"{layer.name}/flatten", axis=1), [math.prod(layer.in_shapes[0])])
    if bias:
        return g.node("Gemm", [x, layer.array("W"), layer.array("b")], out)
    return g.node("MatMul", [x, layer.array("W")], out)


def _flatten(g, layer, xs, out):
    """(N, *in) -> (N, prod(in)): Flatten(axis=1)."""
    layer.attrs()
    return g.node("Flatten", [xs[0]], out, axis=1)


def _relu(g, layer, xs, out):
    """Element-wise max(x, 0), any shape: Relu."""
    layer.attrs()
    return g.node("Relu", [xs[0]], out)


def _sigmoid(g, layer, xs, out):
    """Element-wise 1 / (1 + exp(-x)), any shape: Sigmoid."""
    layer.attrs()
    return g.node("Sigmoid", [xs[0]], out)


def _tanh(g, layer, xs, out):
    """Element-wise tanh, any shape: Tanh."""
    layer.attrs()
    return g.node("Tanh", [xs[0]], out)


def _softmax(g, layer, xs, out):
    """(N, *shape) -> same shape: Softmax over the LAST axis, as netspec computes it (features for
    1-D input, W for (C, H, W) input). The axis is given as a positive index: from opset 13 it is
    simply that axis; before 13 ONNX flattens to 2-D at the axis, which for the last one is the same."""
    layer.attrs()
    return g.node("Softmax", [xs[0]], out, axis=len(layer.in_shapes[0]))


def _dropout(g, layer, xs, out):
    """Identity at inference (inverted dropout scales only while training): no node, the input passes on."""
    layer.attrs("ratio")
    return xs[0]


def _batchnorm(g, layer, xs, out):
    """(N, C) or (N, C, H, W) -> same shape, inference form:
    gamma * (x - running_mean) / sqrt(running_var + eps) + beta, per feature or per channel.
    ``momentum`` only updates the running statistics in training and has no ONNX counterpart."""
    _momentum, eps = layer.attrs("momentum", "eps")
    inputs = [xs[0]] + [layer.array(k) for k in ("gamma", "beta", "running_mean", "running_var")]
    return g.node("BatchNormalization", inputs, out, epsilon=float(eps))


def _add(g, layer, xs, out):
    """k inputs of one shape -> their sum: a chain of Adds, ((x1 + x2) + x3) ..., netspec's order."""
    layer.attrs()
    total = xs[0]
    for i, x in enumerate(xs[1:], start=1):
        name = out if i == len(xs) - 1 else g.declare(f"{layer.name}/sum{i}", layer.out_shape)
        total = g.node("Add", [total, x], name)
    return total


def _concat(g, layer, xs, out):
    """(N, C1, ...), (N, C2, ...) -> (N, C1 + C2 + ..., ...): Concat along axis 1."""
    layer.attrs()
    return g.node("Concat", list(xs), out, axis=1)


EMITTERS = {
    "conv2d": _conv2d,
    "maxpool2d": _maxpool2d,
    "avgpool2d": _avgpool2d,
    "globalavgpool2d": _globalavgpool2d,
    "dense": _dense,
    "affine": _dense,
    "flatten": _flatten,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "softmax": _softmax,
    "dropout": _dropout,
    "batchnorm": _batchnorm,
    "add": _add,
    "concat": _concat,
}


# ------------------------------------------------------------------ export

def export_onnx(model, path=None, *, opset=DEFAULT_OPSET, probabilities=False):
    """The model as an ``onnx.ModelProto`` at ``opset``; also written to ``path`` when given.

    Input ``input`` (N, *model.input_shape) and output ``output`` (the last layer's raw
    output), or ``probabilities`` (a Softmax over axis 1 of it) with ``probabilities=True``;
    N is dynamic. Parameters are initializers in the model's dtype (float16/32/64).
    metadata_props hold ``name``, ``netspec_version`` and ``spec`` (the resolved spec as
    JSON). The result passes ``onnx.checker.check_model(full_check=True)``. Anything
    that cannot be expressed raises ``ExportError`` naming the layer.
    """
    onnx = _onnx()
    opset = _check_opset(opset, onnx)
    graph = model.graph()
    g = _Graph(model, onnx)
    nodes = graph["nodes"]
    out_node = nodes[-1]
    if graph["output"] != out_node["name"]:
        raise ExportError(f"Model.graph() names '{graph['output']}' as the output, not the last "
                          f"layer '{out_node['name']}'; export assumes the last layer is the output")
    out_shape = tuple(out_node["output_shape"])
    if probabilities:
        _check_probabilities(out_node, out_shape)
    if len(graph["inputs"]) != 1:
        raise ExportError(f"model '{model.name}' has {len(graph['inputs'])} inputs; export handles one")
    (model_input,) = graph["inputs"]

    tensors = {INPUT: INPUT}              # netspec name -> ONNX tensor name
    shapes = {INPUT: tuple(model_input["shape"])}
    for node in nodes:
        emit = EMITTERS.get(node["op"])
        if emit is None:
            raise ExportError(f"layer '{node['name']}' ({node['op']}): no ONNX mapping for layer type "
                              f"'{node['op']}' (netspec.export knows {', '.join(sorted(EMITTERS))})")
        layer = _Layer(node, [shapes[n] for n in node["inputs"]], g)
        is_output = node is out_node and not probabilities
        out = OUTPUT if is_output else _tensor_name(node["name"])
        y = emit(g, layer, [tensors[n] for n in node["inputs"]], out)
        if y != OUTPUT:
            g.declare(y, node["output_shape"])
        tensors[node["name"]] = y
        shapes[node["name"]] = tuple(node["output_shape"])

    final = tensors[out_node["name"]]
    if probabilities:
        output = g.node("Softmax", [final], PROBABILITIES, axis=1)
    elif final != OUTPUT:  # the last layer added no node of its own (dropout)
        output = g.node("Identity", [final], OUTPUT, name=out_node["name"])
    else:
        output = OUTPUT

    proto = _model_proto(model, graph, g, onnx, opset, shapes[INPUT], output, out_shape)
    if proto.ByteSize() >= 2**31:
        raise ExportError(f"model '{model.name}' is {proto.ByteSize():,} bytes as ONNX; a single ONNX "
                          f"file holds at most 2 GiB (external data is not supported)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # the checker's own error types differ between onnx versions
        raise ExportError(f"internal error: the ONNX graph exported from '{model.name}' fails onnx's "
                          f"checker; please report this: {exc}") from exc
    if path is not None:
        _write(proto, path)
    return proto


def _check_probabilities(out_node, out_shape):
    if len(out_shape) != 1:
        raise ExportError(f"layer '{out_node['name']}' ({out_node['op']}): probabilities=True appends a "
                          f"Softmax over a vector of scores per sample, but this layer outputs "
                          f"{list(out_shape)} per sample")
    if out_node["op"] == "softmax":
        raise ExportError(f"layer '{out_node['name']}' (softmax): the model already outputs "
                          f"probabilities; export it without probabilities=True")


def _model_proto(model, graph, g, onnx, opset, in_shape, output, out_shape):
    helper = onnx.helper
    kind = "probabilities (softmax of the scores)" if output == PROBABILITIES else "the last layer's output"
    onnx_graph = helper.make_graph(
        g.nodes, model.name,
        inputs=[g.tensor_info(INPUT, in_shape)],
        outputs=[g.tensor_info(output, out_shape)],
        initializer=g.initializers, value_info=g.value_info,
        doc_string=f"netspec model '{model.name}' ({g.dtype.name}, loss {graph['loss']}); "
                   f"input (N, {', '.join(map(str, in_shape))}), output: {kind}")
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="netspec", producer_version=__version__)
    # The oldest IR version the opset allows, so older runtimes load the file too; from IR 4
    # on, initializers need not be listed as graph inputs.
    proto.ir_version = max(4, helper.find_min_ir_version_for(list(proto.opset_import)))
    helper.set_model_props(proto, {
        "name": model.name,
        "netspec_version": __version__,
        "spec": json.dumps(spec_to_dict(model.spec), sort_keys=True),
    })
    return proto


def _write(proto, path):
    """Write atomically (see netspec.atomic): never a half-written model."""
    try:
        remove_dead_temporaries(os.path.dirname(os.path.abspath(path)))
        with atomic_write(path, "wb") as f:
            f.write(proto.SerializeToString())
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
