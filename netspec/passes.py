"""Graph rewrites, each a small named function Graph -> (Graph, [what it changed]).

``PIPELINES`` lists, per mode, the passes in the order they run; ``optimize``
runs them and returns the log. Every pass keeps the function the graph
computes (within float rounding) and leaves the arrays it was given untouched:
a folded weight is a new array under a new key. docs/compiler.md explains each
pass and how to add one.

- ``drop_dropout``: inference-time dropout is the identity (netspec scales at
  training time), so its node goes and its readers read its input.
- ``fold_batchnorm``: a batchnorm whose input is a conv2d or dense read by
  nothing else becomes part of that layer's weights, computed in float64 with
  the layer's own eps: ``s = gamma / sqrt(var + eps)``, ``W' = W * s`` per output
  channel, ``b' = (b - mean) * s + beta`` (b = 0 without a bias).
- ``fuse_relu``: a relu whose input is a conv2d, dense, add or batchnorm read by
  nothing else becomes part of that node, run right after it (conv + bias + ReLU,
  and the residual add + ReLU).
- ``fuse_residual_add`` and ``fuse_maxpool``: a residual add, or a 2x2 stride-2 max pool,
  becomes the end of the conv2d that feeds it (see each function).
"""
import numpy as np

FOLDABLE_INTO = ("conv2d", "dense")
RELU_HOSTS = ("conv2d", "dense", "add", "batchnorm")


def _rewire(graph, removed, replacement):
    """Nodes reading ``removed`` read ``replacement`` instead; the output moves too."""
    nodes = tuple(n.replace(inputs=tuple(replacement if i == removed else i for i in n.inputs))
                  for n in graph.nodes if n.name != removed)
    return graph.replace(nodes=nodes, output=replacement if graph.output == removed else graph.output)


def _sole_reader(graph, name):
    """The one node that reads ``name``, or None (several readers, or the graph's output)."""
    readers = graph.consumers().get(name, [])
    return readers[0] if len(readers) == 1 and readers[0] != "<output>" else None


def _host(graph, node, ops):
    """The node feeding ``node`` when ``node`` may merge into it: one of ``ops``, no activation
    fused yet, and read by ``node`` alone; else None."""
    host = next((n for n in graph.nodes if n.name == node.inputs[0]), None)
    if host is None or host.op not in ops or host.activation or _sole_reader(graph, host.name) != node.name:
        return None
    return host


def _merge(graph, node, host, new_host, arrays=None):
    """The graph with ``host`` replaced by ``new_host`` and ``node`` removed (its readers read the host)."""
    graph = graph.replace(nodes=tuple(new_host if n.name == host.name else n for n in graph.nodes),
                          arrays={**graph.arrays, **(arrays or {})})
    return _rewire(graph, node.name, host.name)


def _named(graph, op):
    """Names of the nodes doing ``op``: a pass fetches each node again (``graph.node``) when it gets
    to it, since an earlier rewrite may have changed its inputs."""
    return [n.name for n in graph.nodes if n.op == op]


def drop_dropout(graph):
    log = []
    for name in _named(graph, "dropout"):
        node = graph.node(name)
        graph = _rewire(graph, node.name, node.inputs[0])
        log.append(f"dropped {node.name} (identity at inference)")
    return graph, log


def fold_batchnorm(graph):
    log = []
    for name in _named(graph, "batchnorm"):
        bn = graph.node(name)
        host = _host(graph, bn, FOLDABLE_INTO)
        if host is None:
            continue
        # new keys record the history: c.W -> c.W+bn1 (-> c.W+bn1+bn2 for a second fold)
        key_w = f"{host.params['W']}+{bn.name}"
        key_b = f"{host.params.get('b', host.name + '.b')}+{bn.name}"
        # a spec's graph has no arrays: there the fold is only planned
        arrays = _folded_arrays(graph, host, bn, key_w, key_b) if graph.arrays else {}
        new_host = host.replace(params={"W": key_w, "b": key_b}, origin=host.origin + bn.origin,
                                attrs={**host.attrs, "bias": True})
        graph = _merge(graph, bn, host, new_host, arrays)
        log.append(f"folded {bn.name} into {host.name}")
    return graph, log


def _folded_arrays(graph, host, bn, key_w, key_b):
    a = graph.arrays
    W = a[host.params["W"]].astype(np.float64)
    b = a[host.params["b"]].astype(np.float64) if "b" in host.params else 0.0
    gamma, beta = a[bn.params["gamma"]].astype(np.float64), a[bn.params["beta"]].astype(np.float64)
    mean, var = a[bn.buffers["running_mean"]].astype(np.float64), a[bn.buffers["running_var"]].astype(np.float64)
    s = gamma / np.sqrt(var + bn.attrs["eps"])
    # conv2d W is (F, C, kh, kw): one scale per output channel, the first axis; dense W is
    # (in, units): one per output unit, the last axis
    W2 = W * (s[:, None, None, None] if host.op == "conv2d" else s[None, :])
    b2 = (b - mean) * s + beta
    dtype = a[host.params["W"]].dtype
    return {key_w: W2.astype(dtype), key_b: b2.astype(dtype)}


def _relus_into(graph, hosts):
    """Every ReLU whose input is one of ``hosts`` (read by the ReLU alone) merged into it."""
    log = []
    for name in _named(graph, "relu"):
        relu = graph.node(name)
        host = _host(graph, relu, hosts)
        if host is None:
            continue
        new_host = host.replace(activation="relu", origin=host.origin + relu.origin, flops=host.flops + relu.flops)
        graph = _merge(graph, relu, host, new_host)
        log.append(f"fused {relu.name} into {host.name}")
    return graph, log


def fuse_relu(graph):
    return _relus_into(graph, RELU_HOSTS)


def fuse_residual_add(graph):
    """Inference: an add of two inputs, one a conv2d that only the add reads, becomes that conv's
    end: the conv adds the other input (and applies the add's fused ReLU) to each sample's output
    while it is in cache. When both inputs qualify, the later conv takes it, so the other input
    is computed before it runs; an add whose other input comes later stays."""
    log = []
    for name in _named(graph, "add"):
        add = graph.node(name)
        if len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            continue
        order = {n.name: k for k, n in enumerate(graph.nodes)}
        convs = [i for i in add.inputs if i in order and graph.node(i).op == "conv2d"
                 and not graph.node(i).activation and not graph.node(i).attrs.get("residual")
                 and _sole_reader(graph, i) == add.name]
        if not convs:
            continue
        conv = graph.node(max(convs, key=order.get))
        other = add.inputs[1] if add.inputs[0] == conv.name else add.inputs[0]
        if other != "input" and order[other] > order[conv.name]:
            continue
        new_conv = conv.replace(inputs=conv.inputs + (other,), attrs={**conv.attrs, "residual": True},
                                activation=add.activation, origin=conv.origin + add.origin,
                                flops=conv.flops + add.flops)
        graph = _merge(graph, add, conv, new_conv)
        log.append(f"fused {add.name} into {conv.name}" + (f" (with its {add.activation})" if add.activation else ""))
    return graph, log


def fuse_maxpool(graph):
    """Inference: a 2x2, stride-2, unpadded max pool whose input is a conv2d (with its fused ReLU
    or not, no residual) that only the pool reads becomes that conv's end: the conv pools each
    sample's output while it is in cache and writes only the pooled quarter
    (``attrs["pool"]``; the node takes the pool's shape)."""
    log = []
    for name in _named(graph, "maxpool2d"):
        pool = graph.node(name)
        a = pool.attrs
        if tuple(a["size"]) != (2, 2) or a["stride"] != 2 or a["pad"] != 0:
            continue
        conv = next((n for n in graph.nodes if n.name == pool.inputs[0]), None)
        if (conv is None or conv.op != "conv2d" or conv.attrs.get("residual") or "pool" in conv.attrs
                or _sole_reader(graph, conv.name) != pool.name):
            continue
        new_conv = conv.replace(attrs={**conv.attrs, "pool": {"size": [2, 2], "stride": 2, "pad": 0}},
                                shape=pool.shape, origin=conv.origin + pool.origin, flops=conv.flops + pool.flops)
        graph = _merge(graph, pool, conv, new_conv)
        log.append(f"fused {pool.name} into {conv.name}")
    return graph, log


def fuse_batchnorm_relu(graph):
    """Training: a ReLU whose input is a batchnorm nothing else reads runs inside it (one pass
    over memory forward, and its mask applied inside the batchnorm's backward)."""
    return _relus_into(graph, ("batchnorm",))


# the passes of each mode, in the order they run; float16 models only drop dropout (and train
# as written): their every layer output is rounded to float16, which folding or fusing would skip
PIPELINES = {
    "predict": (drop_dropout, fold_batchnorm, fuse_relu, fuse_residual_add, fuse_maxpool),
    "predict-float16": (drop_dropout,),
    "train": (fuse_batchnorm_relu,),
    "train-float16": (),
}


def optimize(graph, mode="predict"):
    """(optimized graph, [(pass name, [changes])]) after the passes of ``mode``."""
    log = []
    for fn in PIPELINES[mode]:
        graph, changes = fn(graph)
        log.append((fn.__name__, changes))
    return graph, log
