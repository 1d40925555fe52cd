"""A compiled model: named layers in topological order, a loss, parameters keyed "layer.param".

Design: the model is a small DAG. Each layer reads the outputs of its
``input_names`` ('input' is the network input); forward runs layers in file
order, backward runs them in reverse and sums the gradients of outputs that
feed several layers. The last layer's output is the model's output.

float16 models follow half-precision hardware: parameters, inputs and every
layer's output are rounded to float16, while the arithmetic inside a layer
(products, sums) runs in float32. The rounded values are kept in float32
arrays (float16 -> float32 is exact), so the float32 kernels of either backend
run them at float32 speed; ``predict`` returns float16.
"""
import math
from typing import NamedTuple, Optional

import numpy as np

from . import kernels
from .errors import DataError
from .executor import Executor
from .export import export_onnx
from .ir import graph_of_model
from .layers import MultiInputLayer
from .numerics import class_labels
from .passes import optimize


class Evaluation(NamedTuple):
    """What ``Model.evaluate`` measured over a data set."""
    loss: float
    accuracy: Optional[float]            # None unless the loss is a classification loss
    confusion: Optional[np.ndarray]      # (K, K) int64, rows label, columns prediction; when asked for


class Model:
    def __init__(self, spec, layers, loss, dtype, rng, optimize=True):
        self.spec = spec
        self.name = spec.name
        self.layers = layers
        self.optimize = optimize   # predict/evaluate run the optimized graph (see inference_graph)
        self._inference = None     # (graph, log, [(consumed array, its copy)], optimize, executor) of the last inference_graph
        self._training = None      # ((optimize, half), graph, log, {absorbed relu: its batchnorm}) of training_graph
        self.loss_fn = loss
        self.dtype = np.dtype(dtype)
        self.half = self.dtype == np.float16
        self.compute_dtype = np.dtype(np.float32) if self.half else self.dtype
        self.input_shape = tuple(spec.input.shape)
        self.output_shape = layers[-1].out_shape
        kernels.load()  # the backend is chosen, and netspec.runtime applied, when the first model is built
        for layer in layers:
            layer.kernels = kernels
        self.set_rng(rng)
        if self.half:
            for p in {**self.params, **self.buffers}.values():
                _round_half(p)

    # -- parameters -----------------------------------------------------------
    @property
    def params(self):
        """{"<layer>.<param>": array}; the arrays are the layers' own, updated in place."""
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.params.items()}

    @property
    def grads(self):
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.grads.items()}

    @property
    def buffers(self):
        """Non-learned state (batchnorm running statistics), keyed like params."""
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.buffers().items()}

    def no_decay_names(self):
        """Parameters that weight decay skips when the optimizer says ``decay_bias_and_norm: false``."""
        return {f"{l.name}.{k}" for l in self.layers for k in l.no_decay()}

    def set_rng(self, rng):
        """Generator for layers that draw random numbers (dropout)."""
        self.rng = rng
        for l in self.layers:
            l.set_rng(rng)

    def load_arrays(self, arrays):
        """Copy params and buffers from a {"layer.param": array} mapping.

        Every array is checked first (names, shapes, real finite numbers), so a call
        that raises DataError leaves the model as it was.
        """
        own = {**self.params, **self.buffers}
        missing = sorted(set(own) - set(arrays))
        extra = sorted(set(arrays) - set(own))
        if missing or extra:
            raise DataError(f"parameter names do not match the model (missing {missing}, unexpected {extra})")
        checked = {}
        for k, dst in own.items():
            src = np.asarray(arrays[k])
            if src.dtype.kind not in "biuf":
                raise DataError(f"parameter {k} holds {src.dtype} values; expected real numbers")
            if src.shape != dst.shape:
                raise DataError(f"parameter {k} is shaped {list(src.shape)}, the model expects {list(dst.shape)}")
            if not np.all(np.isfinite(src)):
                raise DataError(f"parameter {k} holds NaN or infinite values")
            checked[k] = src
        for k, src in checked.items():
            np.copyto(own[k], src.astype(np.float16) if self.half else src, casting="unsafe")

    # -- data: the one place inputs and targets are checked --------------------
    def as_input(self, x, where="input"):
        """x as a batch (N, *input_shape) in the model's dtype; a single sample gets a batch axis,
        and samples with the right number of values are reshaped (flat 784-vectors for 1x28x28).
        Raises DataError when the samples cannot fit."""
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise DataError(f"{where}: expected numbers, found {x.dtype}")
        if x.size == 0:
            raise DataError(f"{where}: no samples (an array shaped {list(x.shape)})")
        x = x.astype(self.dtype, copy=False).astype(self.compute_dtype, copy=False)
        shape = self.input_shape
        if x.shape[1:] == shape:
            return x
        if x.shape == shape:
            return x[None]
        if x.ndim >= 1 and math.prod(x.shape[1:]) == math.prod(shape):
            return x.reshape((x.shape[0],) + shape)
        dims = ", ".join(map(str, shape))
        raise DataError(f"{where}: an array shaped {list(x.shape)} does not fit the model input {list(shape)} "
                        f"(expected a batch (N, {dims}), one sample ({dims}), "
                        f"or N rows of {math.prod(shape)} values)")

    def prepare_targets(self, t, where="targets"):
        """Targets checked against the model's output and loss (labels, one-hot rows or values),
        in the model's dtype unless they are integer labels. Raises DataError."""
        return self.loss_fn.prepare_targets(np.asarray(t), self.output_shape, self.compute_dtype, where)

    def forward(self, x, train=False):
        """Output of the last layer for a batch x (N, *input_shape), in the compute dtype."""
        with kernels.blas_scope():
            return self._forward(x, train)

    def training_graph(self):
        """(graph, pass log) of the train pipeline (netspec.passes) that forward and backward follow:
        a ReLU fused into the batchnorm before it runs inside that layer's kernels. With
        ``optimize=False``, and for float16 models, the plain graph."""
        key = (self.optimize, self.half)
        if self._training is None or self._training[0] != key:
            graph = graph_of_model(self)
            mode = "train-float16" if self.half else "train"
            graph, log = optimize(graph, mode) if self.optimize else (graph, [])
            absorbed = {relu: n.name for n in graph.nodes if n.op == "batchnorm" and n.activation == "relu"
                        for relu in n.origin[1:]}
            for l in self.layers:   # the layers follow the graph
                if l.spec.type == "batchnorm":
                    l.fused_relu = l.name in absorbed.values()
                elif l.spec.type == "relu":
                    l.absorbed = l.name in absorbed
            self._training = (key, graph, log, absorbed)
        return self._training[1], self._training[2]

    def _forward(self, x, train):
        self.training_graph()
        absorbed = self._training[3]
        outs = {"input": self.as_input(x)}
        out = None
        for l in self.layers:
            if l.name in absorbed:   # ran inside the batchnorm it reads
                outs[l.name] = out = outs[l.input_names[0]]
                continue
            if isinstance(l, MultiInputLayer):
                out = l.forward([outs[n] for n in l.input_names], train)
            else:
                out = l.forward(outs[l.input_names[0]], train)
            if self.half:
                out = _round_half(out)
            outs[l.name] = out
        return out

    def backward(self, dout, need_input_grad=True):
        """Back-propagate d(loss)/d(output); fills every layer's grads, returns d/d(input).

        With ``need_input_grad=False`` (training), layers fed only by the network input
        skip their input gradient, and None is returned.
        """
        with kernels.blas_scope():
            return self._backward(dout, need_input_grad)

    def _backward(self, dout, need_input_grad):
        absorbed = self.training_graph() and self._training[3]
        pending = {self.layers[-1].name: dout}
        dx_input = None
        for l in reversed(self.layers):
            d = pending.pop(l.name)
            if l.name in absorbed:   # its batchnorm's backward applies its mask
                dxs = d
            else:
                dxs = l.backward(d, need_dx=need_input_grad or any(n != "input" for n in l.input_names))
            if dxs is None:
                continue
            if not isinstance(l, MultiInputLayer):
                dxs = [dxs]
            for src, g in zip(l.input_names, dxs):
                if src == "input":
                    dx_input = g if dx_input is None else dx_input + g
                elif src in pending:
                    pending[src] = pending[src] + g  # new array: never write into a layer's result
                else:
                    pending[src] = g
        return dx_input

    def predict(self, x, batch_size=None):
        """Model output in test mode (dropout off, batchnorm running statistics).

        With ``optimize`` (the default) the inference graph runs: the passes of
        netspec.passes applied to the current weights when the call starts.
        """
        _check_batch_size(batch_size, allow_none=True)
        x = self.as_input(x)
        run = self.inference()
        if batch_size is None or len(x) <= batch_size:
            y = run(x)
        else:
            y = np.concatenate([run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        return y.astype(self.dtype, copy=False)

    def inference_graph(self):
        """(graph, pass log) that ``predict`` and ``evaluate`` run: the optimized graph of the
        current weights, or the plain one when the model was compiled with optimize=False.

        The graph is kept while the arrays the passes consumed (weights folded into others)
        are unchanged: a call compares them bit for bit with a copy taken when the graph was made.
        """
        return self._inference_state()[:2]

    def _inference_state(self):
        """(graph, pass log, executor) for the current weights; see inference_graph."""
        cached = self._inference
        if cached is not None and cached[3] == self.optimize and kernels.same_bits(cached[2]):
            return cached[0], cached[1], cached[4]
        graph = graph_of_model(self)
        graph, log = optimize(graph, "predict-float16" if self.half else "predict") if self.optimize else (graph, [])
        kept = {key for n in graph.nodes for key in (*n.params.values(), *n.buffers.values())}
        consumed = [(a, a.copy()) for key, a in {**self.params, **self.buffers}.items() if key not in kept]
        # the executor keeps each thread's arena (netspec.memory) between calls with this graph
        made = set(graph.arrays) - set(self.params) - set(self.buffers)   # by the passes: fixed
        ex = Executor(graph, self.layers, kernels, finish=_round_half if self.half else None, fixed=made)
        self._inference = (graph, log, consumed, self.optimize, ex)
        return graph, log, ex

    def memory_plan(self, batch=100):
        """The MemoryPlan (netspec.memory) predict follows for ``batch`` samples."""
        return self._inference_state()[2].plan(batch)

    def inference(self):
        """A function batch -> output in test mode, for the weights as they are now. It never
        touches the layers' state, so it may run beside training on the same model."""
        _, _, ex = self._inference_state()

        def run(x):
            with kernels.blas_scope():
                return ex.run(x)
        return run

    def _batch_targets(self, t, n):
        t = self.prepare_targets(t)
        if len(t) != n:
            raise DataError(f"targets: {len(t)} targets for {n} samples")
        return t

    def loss(self, x, t, train=False):
        """Scalar loss of a batch."""
        y = self.forward(x, train)
        return self.loss_fn.forward(y, self._batch_targets(t, len(y)))

    def gradient(self, x, t):
        """Loss and back-propagation in train mode: returns ``(loss, {"layer.param": gradient})``.

        The gradient arrays belong to the layers and are overwritten by the next call.
        """
        loss = self.loss(x, t, train=True)
        self.backward(self.loss_fn.backward(), need_input_grad=False)
        return loss, self.grads

    def accuracy(self, x, t, batch_size=1000):
        """Fraction of samples whose arg-max output equals the label (or the one-hot arg-max);
        None for a model whose loss is not a classification loss. See ``evaluate``."""
        return self.evaluate(x, t, batch_size).accuracy

    def evaluate(self, x, t, batch_size=1000, *, confusion=False):
        """Loss and accuracy over a whole set, in test mode, in batches: one forward pass.

        Returns ``Evaluation(loss, accuracy, confusion)``: the mean loss; for a
        classification loss the accuracy (else None) and, with ``confusion=True``,
        the confusion matrix (rows: label, columns: prediction; else None).
        """
        _check_batch_size(batch_size)
        x = self.as_input(x)
        t = self._batch_targets(t, len(x))
        classify = self.loss_fn.classification
        k = self.output_shape[0] if classify else 0
        cm = np.zeros((k, k), dtype=np.int64) if classify and confusion else None
        total, correct, n = 0.0, 0, len(t)
        run = self.inference()
        for i in range(0, n, batch_size):
            xb, tb = x[i:i + batch_size], t[i:i + batch_size]
            y = run(xb)
            total += self.loss_fn.forward(y, tb) * len(tb)
            if classify:
                labels, pred = class_labels(tb), y.argmax(axis=1)
                correct += int((pred == labels).sum())
                if cm is not None:
                    np.add.at(cm, (labels, pred), 1)
        acc = correct / max(n, 1) if classify else None
        return Evaluation(total / max(n, 1), acc, cm)

    def graph(self):
        """The model as plain data (ops, shapes, attributes, named arrays), e.g. for export.

        Returns {"inputs", "nodes", "output", "loss", "dtype"}; each node names its op,
        inputs, attributes (the layer's spec fields), output shape (no batch axis) and
        the keys of its arrays in ``model.params`` / ``model.buffers``. This is the
        unoptimized IR (netspec.ir) as plain data.
        """
        return graph_of_model(self).to_dict()

    def to_onnx(self, path=None, *, opset=17, probabilities=False):
        """The model as an onnx.ModelProto (written to ``path`` when given); see netspec.export."""
        return export_onnx(self, path, opset=opset, probabilities=probabilities)

    def __repr__(self):
        return f"<netspec.Model {self.name!r}: {len(self.layers)} layers, {self.dtype}>"


def _check_batch_size(batch_size, allow_none=False):
    if batch_size is None and allow_none:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def _round_half(a):
    """Round a float32 array to float16 precision, in place (it may be a view); returns it."""
    return kernels.round_half(a)
