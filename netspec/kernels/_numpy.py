"""Reference kernels in plain numpy: readable, always present, the contract.

Design: every function here has a compiled twin of the same name and
signature (built from csrc/); tests hold the two to float tolerance. Layout
conventions shared by both backends:

- images are NCHW; conv filters are (FN, C, kh, kw); stride and pad are ints
  applied to both spatial axes; OH = (H + 2*pad - kh) // stride + 1.
- ``im2col`` returns *batched columns* shaped (N, C*kh*kw, OH*OW), so that
  ``W.reshape(FN, -1) @ col`` is already (N, FN, OH*OW), i.e. NCHW, with no
  transpose.
- kernels are pure functions of the arrays they are given: conv backward takes
  the forward input ``x`` again (the numpy reference recomputes its columns, the
  compiled one never keeps them). ``need_dx=False`` (nothing needs d/dx, e.g. a
  network's first layer) returns dx as None and skips its matrix product and col2im.
- inputs are only read: a read-only array (a memory-mapped dataset) is accepted.
- max pooling records the arg-max as the flat index ``i*kw + j`` inside the
  window (first maximum wins on ties), dtype int64, shaped like the output.
- optimizer updates work in place on ``p`` and their state arrays, in the
  dtype of ``p``; weight decay adds ``weight_decay * p`` to the gradient.
"""
import numpy as np

from ..numerics import out_size

__all__ = [
    "im2col", "col2im", "conv2d_forward", "conv2d_pack", "conv2d_backward",
    "maxpool2d_forward", "maxpool2d_backward", "maxpool2d_infer",
    "conv2d_workspace", "pool_workspace",
    "avgpool2d_forward", "avgpool2d_backward", "global_avgpool_forward", "relu_forward", "relu_backward", "round_half",
    "batchnorm_stats", "batchnorm_forward", "batchnorm_backward",
    "sgd_update", "momentum_update", "nesterov_update",
    "adagrad_update", "rmsprop_update", "adam_update", "same_bits",
]


def _windows(xp, kh, kw, stride, OH, OW):
    """Strided view (N, C, kh, kw, OH, OW) of an already padded input."""
    N, C, _, _ = xp.shape
    sN, sC, sH, sW = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(N, C, kh, kw, OH, OW),
        strides=(sN, sC, sH, sW, sH * stride, sW * stride), writeable=False)


def _pad(x, pad, value=0.0):
    if pad == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value)


def im2col(x, kh, kw, stride, pad):
    """x (N, C, H, W) -> col (N, C*kh*kw, OH*OW)."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    win = _windows(_pad(x, pad), kh, kw, stride, OH, OW)
    return win.reshape(N, C * kh * kw, OH * OW)  # reshape copies: col is contiguous


def col2im(col, x_shape, kh, kw, stride, pad):
    """Adjoint of im2col: col (N, C*kh*kw, OH*OW) -> dx (N, C, H, W), overlaps summed."""
    N, C, H, W = x_shape
    OH, OW = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    c = col.reshape(N, C, kh, kw, OH, OW)
    xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride] += c[:, :, i, j]
    return xp[:, :, pad:pad + H, pad:pad + W].copy() if pad else xp


def conv2d_forward(x, W, b, stride, pad, out=None, residual=None, relu=False, packed=None, pool=None):
    """out[n, f] = sum_c W[f, c] (*) x[n, c] + b[f]; x (N,C,H,W), W (FN,C,kh,kw), b (FN,) or None.
    ``out``: a C-contiguous (N,FN,OH,OW) array to write into (else a new one). ``residual``
    (shaped like the output) is then added and with ``relu`` the ReLU applied, in place.
    ``packed``: what conv2d_pack returned for W and b (here always None, and ignored).
    ``pool``: (kh, kw, stride, pad) of a max pool applied to that result, which ``out`` then holds."""
    if pool is not None:
        full = conv2d_forward(x, W, b, stride, pad, residual=residual, relu=relu)
        return maxpool2d_infer(full, *pool, out=out)
    N, C, H, Wd = x.shape
    FN, _, kh, kw = W.shape
    OH, OW = out_size(H, kh, stride, pad), out_size(Wd, kw, stride, pad)
    col = im2col(x, kh, kw, stride, pad)
    out3 = None if out is None else out.reshape(N, FN, OH * OW)
    out3 = np.matmul(W.reshape(FN, -1), col, out=out3)          # (N, FN, OH*OW)
    if b is not None:
        out3 += b.reshape(1, FN, 1)
    out = out3.reshape(N, FN, OH, OW)
    if residual is not None:
        out += residual
    if relu:
        relu_forward(out, out=out)
    return out


def conv2d_workspace(x_shape, W_shape, stride, pad, itemsize, packed=False, pool=None):
    """Bytes conv2d_forward allocates besides its output: the padded input and the im2col columns
    (``packed`` changes nothing here: the reference packs no weights); with ``pool``, the
    unpooled output while the pool runs (the columns are gone by then)."""
    N, C, H, Wd = x_shape
    FN, _, kh, kw = W_shape
    OH, OW = out_size(H, kh, stride, pad), out_size(Wd, kw, stride, pad)
    padded = N * C * (H + 2 * pad) * (Wd + 2 * pad) if pad else 0
    conv = itemsize * (padded + N * C * kh * kw * OH * OW)
    if pool is None:
        return conv
    full = itemsize * N * FN * OH * OW
    return full + max(conv, pool_workspace((N, FN, OH, OW), pool[3], itemsize))


def conv2d_pack(W, b, stride, pad, in_shape=None):
    """W and b laid out once for conv2d_forward's ``packed``, for weights that do not change
    (an inference graph's folded convolutions); ``in_shape``: one sample's (C, H, W), where the
    layout depends on it. The reference has no packed layout: None."""
    return None


def conv2d_backward(dout, x, W, stride, pad, need_dx=True, need_db=True):
    """dout (N,FN,OH,OW) and the forward input x -> (dx or None, dW, db or None); a convolution
    without bias passes ``need_db=False`` and skips the pass over dout for db."""
    N, FN, OH, OW = dout.shape
    _, C, kh, kw = W.shape
    col = im2col(x, kh, kw, stride, pad)
    d2 = dout.reshape(N, FN, OH * OW)
    dW = np.tensordot(d2, col, axes=([0, 2], [0, 2])).reshape(W.shape)
    db = d2.sum(axis=(0, 2)).astype(W.dtype, copy=False) if need_db else None
    dx = None
    if need_dx:
        dcol = np.matmul(W.reshape(FN, -1).T, d2)    # (N, C*kh*kw, OH*OW)
        dx = col2im(dcol, x.shape, kh, kw, stride, pad)
    return dx, dW.astype(W.dtype, copy=False), db


def batchnorm_stats(x):
    """Per-channel mean and biased variance of x (N, C, S): over the N*S values of each channel."""
    mean = x.mean(axis=(0, 2))
    xc = x - mean[None, :, None]
    return mean, (xc * xc).mean(axis=(0, 2))


def batchnorm_forward(x, gamma, beta, mean, inv_std, relu=False):
    """x (N, C, S) -> (out, xhat): xhat = (x - mean) * inv_std, out = gamma * xhat + beta per channel;
    with ``relu``, out is then max(out, 0) (batchnorm and a ReLU after it, in one call)."""
    xhat = (x - mean[None, :, None]) * inv_std[None, :, None]
    out = gamma[None, :, None] * xhat + beta[None, :, None]
    return (relu_forward(out, out=out) if relu else out), xhat


def batchnorm_backward(dout, xhat, gamma, inv_std, train, relu_out=None):
    """(dx, dgamma, dbeta) for dout, xhat (N, C, S). With batch statistics (train), per channel
    over its m = N*S values: dx = gamma * inv_std * (dout - sum(dout)/m - xhat * sum(dout*xhat)/m);
    with running statistics: dx = gamma * inv_std * dout. ``relu_out``: the output of a fused
    ReLU (batchnorm_forward with relu): dout first goes back through it (zero where it was not > 0)."""
    if relu_out is not None:
        dout = relu_backward(dout, relu_out)
    dbeta = dout.sum(axis=(0, 2))
    dgamma = (dout * xhat).sum(axis=(0, 2))
    scale = (gamma * inv_std)[None, :, None]
    if not train:
        return dout * scale, dgamma, dbeta
    m = dout.shape[0] * dout.shape[2]
    return scale * (dout - dbeta[None, :, None] / m - xhat * (dgamma[None, :, None] / m)), dgamma, dbeta


ROUND_HALF_CHUNK = 16384   # values rounded at a time: the float16 copy stays 32 KB (the memory plan counts none)


def round_half(x):
    """Round a float32 array to float16 precision in place (it may be a view); returns it."""
    flat = x.reshape(-1) if x.flags.c_contiguous else None
    if flat is None:
        np.copyto(x, x.astype(np.float16))
        return x
    for i in range(0, flat.size, ROUND_HALF_CHUNK):
        part = flat[i:i + ROUND_HALF_CHUNK]
        np.copyto(part, part.astype(np.float16))
    return x


def relu_forward(x, out=None):
    """out = max(x, 0): a new array, or written into ``out`` (which may be ``x`` itself)."""
    return np.maximum(x, 0, out=out)


def relu_backward(dout, out):
    """dx = dout where the forward output was positive (x > 0), else 0."""
    return np.where(out > 0, dout, 0).astype(dout.dtype, copy=False)


def maxpool2d_forward(x, kh, kw, stride, pad):
    """x (N,C,H,W) -> (out (N,C,OH,OW), argmax int64 flat window index)."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    win = _windows(_pad(x, pad, -np.inf), kh, kw, stride, OH, OW)
    win = win.reshape(N, C, kh * kw, OH, OW)
    argmax = win.argmax(axis=2)
    out = np.take_along_axis(win, argmax[:, :, None], axis=2)[:, :, 0]
    return np.ascontiguousarray(out), argmax.astype(np.int64, copy=False)


def maxpool2d_infer(x, kh, kw, stride, pad, out=None):
    """The max of each window, without the argmax training needs; written into ``out`` if given."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    win = _windows(_pad(x, pad, -np.inf), kh, kw, stride, OH, OW)
    return np.max(win, axis=(2, 3), out=out)


def pool_workspace(x_shape, pad, itemsize):
    """Bytes maxpool2d_infer / avgpool2d_forward allocate besides the output: the padded input."""
    N, C, H, W = x_shape
    return itemsize * N * C * (H + 2 * pad) * (W + 2 * pad) if pad else 0


def maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad):
    """Route each dout element to the input position that won its window."""
    N, C, OH, OW = dout.shape
    onehot = np.zeros((N, C, kh * kw, OH, OW), dtype=dout.dtype)
    np.put_along_axis(onehot, argmax[:, :, None], dout[:, :, None], axis=2)
    col = onehot.reshape(N, C * kh * kw, OH * OW)
    return col2im(col, x_shape, kh, kw, stride, pad)


def avgpool2d_forward(x, kh, kw, stride, pad, out=None):
    """Mean over each window; padding counts as zeros in the divisor kh*kw."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    win = _windows(_pad(x, pad), kh, kw, stride, OH, OW)
    return win.mean(axis=(2, 3), dtype=x.dtype, out=out)


def global_avgpool_forward(x, out=None):
    """(N, C, H, W) -> (N, C): the mean of each channel's map, in x's dtype."""
    return x.mean(axis=(2, 3), dtype=x.dtype, out=out)


def avgpool2d_backward(dout, x_shape, kh, kw, stride, pad):
    """Each input in a window receives dout / (kh*kw)."""
    N, C, OH, OW = dout.shape
    share = dout / (kh * kw)
    col = np.broadcast_to(share[:, :, None, None], (N, C, kh, kw, OH, OW))
    return col2im(col.reshape(N, C * kh * kw, OH * OW), x_shape, kh, kw, stride, pad)


# --- optimizer updates: in place, in the dtype of p -----------------------------
# lr, momentum m, decay d, betas b1/b2 and eps are Python floats; g is the
# gradient after weight decay. The formulas are stated in docs/optimizers.md.

def _decayed(p, g, weight_decay):
    return g + weight_decay * p if weight_decay else g


def sgd_update(p, g, lr, weight_decay):
    """p -= lr * g."""
    g = _decayed(p, g, weight_decay)
    p -= lr * g


def momentum_update(p, g, v, lr, momentum, weight_decay):
    """v = m*v - lr*g; p += v."""
    g = _decayed(p, g, weight_decay)
    v *= momentum
    v -= lr * g
    p += v


def nesterov_update(p, g, v, lr, momentum, weight_decay):
    """p += m*m*v - (1+m)*lr*g with the old v; then v = m*v - lr*g.

    Nesterov's method in the velocity form of PyTorch's SGD(nesterov=True) (v = -lr * buf).
    """
    g = _decayed(p, g, weight_decay)
    p += momentum * momentum * v
    p -= (1 + momentum) * lr * g
    v *= momentum
    v -= lr * g


def adagrad_update(p, g, h, lr, eps, weight_decay):
    """h += g*g; p -= lr * g / (sqrt(h) + eps)."""
    g = _decayed(p, g, weight_decay)
    h += g * g
    p -= lr * g / (np.sqrt(h) + eps)


def rmsprop_update(p, g, h, lr, decay, eps, weight_decay):
    """h = d*h + (1-d)*g*g; p -= lr * g / (sqrt(h) + eps)."""
    g = _decayed(p, g, weight_decay)
    h *= decay
    h += (1 - decay) * g * g
    p -= lr * g / (np.sqrt(h) + eps)


def adam_update(p, g, m, v, lr_t, beta1, beta2, eps, weight_decay):
    """m += (1-b1)(g-m); v += (1-b2)(g*g-v); p -= lr_t * m / (sqrt(v) + eps).

    lr_t = lr * sqrt(1 - b2**t) / (1 - b1**t) is computed by the caller.
    """
    g = _decayed(p, g, weight_decay)
    m += (1 - beta1) * (g - m)
    v += (1 - beta2) * (g * g - v)
    p -= lr_t * m / (np.sqrt(v) + eps)


def same_bits(pairs):
    """Whether the two arrays of every (a, b) pair have the same shape, dtype and bytes: a NaN
    equals itself (np.array_equal would say the arrays differ), 0.0 differs from -0.0."""
    return all(a.shape == b.shape and a.dtype == b.dtype
               and np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))
               for a, b in pairs)
