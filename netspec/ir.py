"""The network as plain data between the spec and the kernels: a graph that passes rewrite.

Design: a ``Graph`` is a list of ``Node``s in execution order (the spec's order),
each naming its op, its inputs (node names, or "input"), its attributes (the
spec fields that describe the computation, defaults resolved), its output shape
(no batch axis), its FLOPs per sample, and the keys of its arrays in
``Graph.arrays``. Nothing here runs a kernel: shapes come from the layers' own
inference (``netspec.shapes``), so a graph of a spec is known before any weight
exists, and a graph of a model shares that model's arrays.

Passes (``netspec.passes``) return new graphs and never change the arrays they
were given: a folded weight is a new array under a new key. ``Graph.run``
executes a graph for inference with the layers of the model it came from,
dropping each activation after its last consumer.
"""
import dataclasses
import math
from typing import Optional

import numpy as np

from .shapes import infer_layers


@dataclasses.dataclass(frozen=True)
class Node:
    """One operation of the graph; ``params``/``buffers`` map a role ("W") to a key of Graph.arrays."""
    name: str
    op: str
    inputs: tuple
    attrs: dict
    shape: tuple
    flops: int
    params: dict
    buffers: dict
    activation: Optional[str] = None   # "relu" when a pass fused the following ReLU into this node
    origin: tuple = ()                 # the spec layers this node stands for (more than one after fusion)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Graph:
    nodes: tuple
    input_shape: tuple
    output: str
    arrays: dict        # key -> array (the model's own, or a pass's new ones); empty for a spec's graph
    dtype: str          # the model's dtype (float16 models compute in float32)
    loss: str

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def consumers(self):
        """{name: [names of the nodes that read it]} ("input" included); the graph output counts as a reader."""
        out = {"input": []}
        for n in self.nodes:
            out.setdefault(n.name, [])
            for i in n.inputs:
                out.setdefault(i, []).append(n.name)
        out.setdefault(self.output, []).append("<output>")
        return out

    @property
    def compute_dtype(self):
        return np.dtype(np.float32) if self.dtype == "float16" else np.dtype(self.dtype)

    def activation_bytes(self, batch=1):
        """{node name: bytes of its output for ``batch`` samples} in the compute dtype."""
        size = self.compute_dtype.itemsize
        return {n.name: batch * math.prod(n.shape) * size for n in self.nodes}

    def lifetimes(self):
        """{name: index of the last node that reads it} (the output lives to the end)."""
        last = {}
        for k, n in enumerate(self.nodes):
            for i in n.inputs:
                last[i] = k
        last[self.output] = len(self.nodes)
        return last

    def peak_activation_bytes(self, batch=1):
        """The most activation memory alive at once when nodes run in order and each output is
        freed after its last reader (the input batch included)."""
        sizes = self.activation_bytes(batch)
        sizes["input"] = batch * math.prod(self.input_shape) * self.compute_dtype.itemsize
        last = self.lifetimes()
        live, peak = {"input": sizes["input"]}, sizes["input"]
        for k, n in enumerate(self.nodes):
            live[n.name] = sizes[n.name]
            peak = max(peak, sum(live.values()))
            for name in [m for m in live if last.get(m, -1) <= k and m != self.output]:
                del live[name]
        return peak

    def to_dict(self):
        """Plain data: {"inputs", "nodes", "output", "loss", "dtype"} (what Model.graph() returns)."""
        nodes = [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "attrs": dict(n.attrs),
                  "output_shape": list(n.shape), "params": dict(n.params), "buffers": dict(n.buffers)}
                 for n in self.nodes]
        return {"inputs": [{"name": "input", "shape": list(self.input_shape)}], "nodes": nodes,
                "output": self.output, "loss": self.loss, "dtype": self.dtype}


def _node(layer):
    return Node(name=layer.name, op=layer.spec.type, inputs=tuple(layer.input_names), attrs=layer.attrs(),
                shape=tuple(layer.out_shape), flops=int(layer.flops()),
                params={k: f"{layer.name}.{k}" for k in layer.param_specs()},
                buffers={k: f"{layer.name}.{k}" for k in layer.buffer_names}, origin=(layer.name,))


def graph_of_spec(spec, dtype=None):
    """The graph of a validated spec: shapes and FLOPs, no arrays."""
    layers = infer_layers(spec)
    return Graph(nodes=tuple(_node(l) for l in layers), input_shape=tuple(spec.input.shape),
                 output=layers[-1].name, arrays={}, dtype=str(np.dtype(dtype or spec.dtype)), loss=spec.loss)


def graph_of_model(model):
    """The graph of a compiled model; its arrays are the model's own parameters and buffers."""
    return Graph(nodes=tuple(_node(l) for l in model.layers), input_shape=tuple(model.input_shape),
                 output=model.layers[-1].name, arrays={**model.params, **model.buffers},
                 dtype=str(model.dtype), loss=model.spec.loss)
