"""Running a graph for inference with the layers of the model it came from.

Design: each node runs the layer of the spec entry it started from
(``node.origin[0]``), through a private copy of that layer that reads the
node's arrays (a folded weight, say) instead of the layer's own. A fused ReLU is
applied on the node's output by the ReLU kernel. Layers keep what their backward
would need; the copy is reset after every call, so no activation outlives its
last reader (each is dropped then), and running never touches the model's own
layers: a predict can run beside a training step on the same model.
"""
import copy

from .layers import MultiInputLayer


class Executor:
    """Inference over ``graph`` with ``layers`` (the model's); ``finish`` post-processes each output."""

    def __init__(self, graph, layers, finish=None):
        by_name = {l.name: l for l in layers}
        last = graph.lifetimes()
        self.graph, self.finish = graph, finish
        self.steps = []
        for k, node in enumerate(graph.nodes):
            layer = copy.copy(by_name[node.origin[0]])
            layer.params = {role: graph.arrays[key] for role, key in node.params.items()}
            layer.grads = {}
            pristine = dict(vars(layer))
            dead = tuple(i for i in dict.fromkeys(node.inputs) if last.get(i) == k and i != graph.output)
            self.steps.append((node, layer, pristine, dead))

    def run(self, x):
        """The graph's output for the batch ``x`` (already checked and in the compute dtype)."""
        outs = {"input": x}
        for node, layer, pristine, dead in self.steps:
            xs = [outs[i] for i in node.inputs]
            out = layer.forward(xs if isinstance(layer, MultiInputLayer) else xs[0], False)
            vars(layer).clear()
            vars(layer).update(pristine)   # drop the caches backward would have used
            if node.activation == "relu":
                # the kernel's ReLU (threaded when compiled); a conv writing its ReLU itself is next
                out = layer.kernels.relu_forward(out)
            if self.finish is not None:
                out = self.finish(out)
            outs[node.name] = out
            for name in dead:
                del outs[name]
        return outs[self.graph.output]

