"""Running a graph for inference: planned memory, the kernels of ``netspec.ops``, the layers for the rest.

Design: for each batch size the executor asks ``netspec.memory`` for a plan and
allocates its arena once (one flat array); every node whose op ``netspec.ops``
knows writes its output into the place the plan gave it (a block of the arena,
or the buffer of an input it may overwrite), so a predict allocates nothing
per node after the first batch of that size. A node of any other op runs the
layer of the spec entry it started from (``node.origin[0]``), through a private
copy of that layer that reads the node's arrays (a folded weight, say) instead
of the layer's own; the copy is reset after every call, so no activation
outlives its last reader. A fused ReLU is applied in place on the node's output
(a convolution applies its own, with a fused residual add, per sample). The filters of
convolutions whose weights a pass made (batchnorm folded in) are laid out for the kernel
once, when the executor is made, not on every call.

Running never touches the model's own layers, and each thread has its own
arenas and layer copies: predicts may run in several threads at once, and
beside a training step on the same model. The network output is copied out of
the arena before it is returned.
"""
import copy
import threading
from collections import OrderedDict

import numpy as np

from .layers import MultiInputLayer
from .memory import plan_memory
from .ops import OPS, PACKED

ARENAS_PER_THREAD = 2   # batch sizes whose arena a thread keeps (a full batch and a last, smaller one)


class Executor:
    """Inference over ``graph`` with ``layers`` (the model's); ``finish`` post-processes each output in place."""

    def __init__(self, graph, layers, kernels, finish=None, fixed=()):
        self.graph, self.finish, self.kernels = graph, finish, kernels
        self._by_name = {l.name: l for l in layers}
        self._local = threading.local()
        self.packed = self._pack(set(fixed))
        self._arrays = {**graph.arrays, **{PACKED + name: p for name, p in self.packed.items()}}

    def _pack(self, fixed):
        """{conv node: its filters in the kernel's own layout}, made once here for the convolutions
        whose arrays all are in ``fixed`` (made by a pass, such as batchnorm folded into the conv,
        and so unchanged while this graph lives); the model's own weights may change between
        calls and are laid out by each call. Empty on the numpy backend."""
        pack, arrays, out = getattr(self.kernels, "conv2d_pack", None), self.graph.arrays, {}
        for node in self.graph.nodes:
            keys = list(node.params.values())
            if pack is None or node.op != "conv2d" or not keys or not set(keys) <= fixed:
                continue
            b = node.params.get("b")
            src = node.inputs[0]
            in_shape = self.graph.input_shape if src == "input" else self.graph.node(src).shape
            p = pack(arrays[node.params["W"]], None if b is None else arrays[b], node.attrs["stride"],
                     node.attrs["pad"], in_shape=tuple(in_shape))
            if p is not None:
                out[node.name] = p
        return out

    def plan(self, batch):
        """The memory plan for ``batch`` samples (cached per thread with its arena)."""
        return self._arena(batch)[0]

    def _arena(self, batch):
        cache = getattr(self._local, "arenas", None)
        if cache is None:
            cache = self._local.arenas = OrderedDict()
        if batch in cache:
            cache.move_to_end(batch)
            return cache[batch]
        plan = plan_memory(self.graph, batch, self.kernels, packed=self.packed)
        dtype = self.graph.compute_dtype
        arena = np.empty(plan.arena_bytes // dtype.itemsize + 1, dtype=dtype)
        views = {name: arena[off // dtype.itemsize:(off + n) // dtype.itemsize]
                 for name, (off, n) in plan.slots.items()}
        cache[batch] = (plan, views)
        while len(cache) > ARENAS_PER_THREAD:
            cache.popitem(last=False)
        return cache[batch]

    def _layers(self):
        """This thread's private copies of the layers the nodes without a planned kernel run."""
        steps = getattr(self._local, "layers", None)
        if steps is None:
            steps = self._local.layers = {}
            for node in self.graph.nodes:
                if node.op in OPS:
                    continue
                layer = copy.copy(self._by_name[node.origin[0]])
                layer.params = {role: self.graph.arrays[key] for role, key in node.params.items()}
                layer.grads = {}
                steps[node.name] = (layer, dict(vars(layer)))
        return steps

    def run(self, x):
        """The graph's output for the batch ``x`` (already checked and in the compute dtype)."""
        graph, K = self.graph, self.kernels
        batch = len(x)
        plan, views = self._arena(batch)
        layers = self._layers()
        last = graph.lifetimes()
        outs = {"input": x}
        for k, node in enumerate(graph.nodes):
            xs = [outs[i] for i in node.inputs]
            shape = (batch, *node.shape)
            if node.name in plan.slots:
                out = views[node.name].reshape(shape)
            elif node.name in plan.shares and OPS[node.op].sharing == "inplace":
                out = outs[_holder(plan, node.name, node.inputs)].reshape(shape)
            else:
                out = None
            if node.op in OPS:
                out = OPS[node.op].run(K, node, xs, self._arrays, out)
            else:
                layer, pristine = layers[node.name]
                out = layer.forward(xs if isinstance(layer, MultiInputLayer) else xs[0], False)
                vars(layer).clear()
                vars(layer).update(pristine)   # drop the caches backward would have used
            if node.activation == "relu" and not (node.op in OPS and OPS[node.op].activation_inside):
                out = K.relu_forward(out, out=out if out.flags.c_contiguous and out.flags.writeable else None)
            if self.finish is not None:
                out = self.finish(out)
            outs[node.name] = out
            for name in dict.fromkeys(node.inputs):
                if last.get(name) == k and name != graph.output:
                    del outs[name]
        y = outs[graph.output]
        return y.copy() if graph.output not in plan.own else y


def _holder(plan, name, inputs):
    """The input of an in-place node whose memory the node's output takes over."""
    target = plan.shares[name]
    for i in inputs:
        if i == target or plan.shares.get(i) == target:
            return i
    raise AssertionError(f"{name}: no input holds the memory of {target}")
