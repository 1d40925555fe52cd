"""Inference kernels that write into a buffer the memory plan chose, by op type.

Design: for each op the executor can run without allocating its output, ``OPS``
holds how to run it (``run(kernels, node, xs, arrays, out)`` writes the batch
output into ``out`` and returns it), how it may share memory (``"alias"``: the
output is a view of its input, no buffer; ``"inplace"``: it may write over an
input that dies at this node; ``None``: a buffer of its own), and how many
bytes its kernel allocates besides the output while it runs (its workspace).
An op missing here runs through its layer's own ``forward``, which allocates
its output; the plan counts that output too. The values are exactly those of
the layers' ``forward`` in test mode: the same kernels, called with ``out=``.
"""
import math
from typing import Callable, NamedTuple, Optional


class Op(NamedTuple):
    run: Callable          # (kernels, node, xs, arrays, out) -> out (or a view, for "alias")
    sharing: Optional[str]  # "alias", "inplace" or None
    workspace: Callable    # (kernels, node, in_shapes, batch, itemsize[, packed]) -> bytes
    activation_inside: bool = False   # run applies the node's fused activation itself


def _none(K, node, in_shapes, batch, itemsize):
    return 0


def _param(node, arrays, role):
    key = node.params.get(role)
    return None if key is None else arrays[key]


# arrays[PACKED + node name]: the node's filters as conv2d_pack laid them out (netspec.executor)
PACKED = "packed:"


def _fused_pool(node):
    """(kh, kw, stride, pad) of the max pool fused into a conv (netspec.passes.fuse_maxpool), or None."""
    p = node.attrs.get("pool")
    return None if p is None else (*p["size"], p["stride"], p["pad"])


def _conv(K, node, xs, arrays, out):
    # a residual add fused into the conv (netspec.passes.fuse_residual_add) is its second input
    a = node.attrs
    return K.conv2d_forward(xs[0], _param(node, arrays, "W"), _param(node, arrays, "b"), a["stride"], a["pad"],
                            out=out, residual=xs[1] if a.get("residual") else None,
                            relu=node.activation == "relu", packed=arrays.get(PACKED + node.name),
                            pool=_fused_pool(node))


def _conv_workspace(K, node, in_shapes, batch, itemsize, packed=False):
    a = node.attrs
    c = in_shapes[0][0]
    w_shape = (a["filters"], c, *a["kernel"])
    return K.conv2d_workspace((batch, *in_shapes[0]), w_shape, a["stride"], a["pad"], itemsize, packed,
                              pool=_fused_pool(node))


def _dense(K, node, xs, arrays, out):
    x = xs[0].reshape(len(xs[0]), -1)
    K.matmul(x, _param(node, arrays, "W"), out=out)
    b = _param(node, arrays, "b")
    if b is not None:
        out += b
    return out


def _dense_workspace(K, node, in_shapes, batch, itemsize):
    # a non-contiguous input would be copied by reshape; inputs here are whole buffers
    return 0


def _relu(K, node, xs, arrays, out):
    return K.relu_forward(xs[0], out=out)


def _add(K, node, xs, arrays, out):
    # out may be one of the inputs (in place): add the others to it, in input order
    first = xs[0]
    if out is not first:
        out[...] = first
    for x in xs[1:]:
        out += x
    return out


def _maxpool(K, node, xs, arrays, out):
    a = node.attrs
    kh, kw = a["size"]
    return K.maxpool2d_infer(xs[0], kh, kw, a["stride"], a["pad"], out=out)


def _avgpool(K, node, xs, arrays, out):
    a = node.attrs
    kh, kw = a["size"]
    return K.avgpool2d_forward(xs[0], kh, kw, a["stride"], a["pad"], out=out)


def _pool_workspace(K, node, in_shapes, batch, itemsize):
    return K.pool_workspace((batch, *in_shapes[0]), node.attrs["pad"], itemsize)


def _global_avg(K, node, xs, arrays, out):
    return K.global_avgpool_forward(xs[0], out=out)


def _view(K, node, xs, arrays, out):
    x = xs[0]
    return x.reshape(len(x), -1) if node.op == "flatten" else x


OPS = {
    "conv2d": Op(_conv, None, _conv_workspace, activation_inside=True),
    "dense": Op(_dense, None, _dense_workspace),
    "relu": Op(_relu, "inplace", _none),
    "add": Op(_add, "inplace", _none),
    "maxpool2d": Op(_maxpool, None, _pool_workspace),
    "avgpool2d": Op(_avgpool, None, _pool_workspace),
    "globalavgpool2d": Op(_global_avg, None, _none),
    "flatten": Op(_view, "alias", _none),
    "dropout": Op(_view, "alias", _none),   # test mode: the identity
}


# ops run through their layer (not in OPS): how many arrays of the output's size the layer's
# test-mode forward allocates besides its output, freed when the executor resets the layer after
# the call: batchnorm keeps xhat (its backward's), sigmoid's -x and exp(-x) live at once.
LAYER_TEMPORARIES = {"batchnorm": 1, "sigmoid": 1}


def output_bytes(node, batch, itemsize):
    return batch * math.prod(node.shape) * itemsize
