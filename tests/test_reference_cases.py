"""Layers and Adam against references written out in this file (plain loops, no netspec helpers).

Each case pins a spec field or convention that a plausible slip would break while
leaving shapes and gradient checks intact: Adam's eps and betas, symmetric conv
padding, batchnorm's eps at inference, -inf padding in max pooling, and the fan-in
of the He and Xavier initialisers.
"""
import math

import numpy as np
import pytest

import netspec
from netspec.optim import make_optimizer

TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}


def one_layer_model(layer, in_shape, dtype="float64", seed=0):
    """A compiled model made of a single layer (loss sse; the tests drive forward/backward)."""
    return netspec.compile({"netspec": 1, "seed": seed, "dtype": dtype, "input": {"shape": list(in_shape)},
                            "layers": [{"name": "l1", **layer}], "loss": "sse"})


# --- Adam -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_uses_the_specs_eps_and_betas(dtype):
    """Five Adam steps with lr 0.1, beta1 0.5, beta2 0.75, eps 0.5 against a scalar recurrence.

    netspec folds the bias correction into the step size, so eps is added to the
    uncorrected sqrt(v): at step t, lr_t = lr*sqrt(1-beta2^t)/(1-beta1^t);
    m += (1-beta1)*(g-m); v += (1-beta2)*(g*g-v); p -= lr_t*m/(sqrt(v)+eps).
    The spec comes through load_spec's train.optimizer, as the trainer reads it.
    """
    lr, beta1, beta2, eps = 0.1, 0.5, 0.75, 0.5
    spec = netspec.load_spec({
        "netspec": 1, "input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}], "loss": "mse",
        "train": {"data": {"source": "inline", "x": [[0.0, 0.0]], "t": [[0.0]]}, "steps": 1,
                  "optimizer": {"type": "adam", "lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}}})
    opt = make_optimizer(spec.train.optimizer)
    p0 = [0.5, -1.25, 2.0, 0.0, -0.75, 1.5]
    grads = [[0.3 * (k + 1) * math.cos(i + 2 * k) for i in range(len(p0))] for k in range(5)]
    params = {"a.W": np.array(p0, dtype=dtype)}
    for g in grads:
        opt.update(params, {"a.W": np.array(g, dtype=dtype)})

    expected = []
    for i, p in enumerate(p0):
        m = v = 0.0
        for t, g in enumerate((gk[i] for gk in grads), start=1):
            lr_t = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            m += (1 - beta1) * (g - m)
            v += (1 - beta2) * (g * g - v)
            p -= lr_t * m / (math.sqrt(v) + eps)
        expected.append(p)
    np.testing.assert_allclose(params["a.W"], expected, **TOL[dtype])


# --- conv2d ----------------------------------------------------------------------------

def conv_reference(x, W, b, dout, stride, pad):
    """(out, dx, dW, db) by explicit loops over a zero-padded copy of x, pad rows/columns on every side."""
    N, C, H, Wd = x.shape
    FN, _, kh, kw = W.shape
    OH, OW = (H + 2 * pad - kh) // stride + 1, (Wd + 2 * pad - kw) // stride + 1
    xp = np.zeros((N, C, H + 2 * pad, Wd + 2 * pad))
    xp[:, :, pad:pad + H, pad:pad + Wd] = x
    out = np.zeros((N, FN, OH, OW))
    dxp = np.zeros_like(xp)
    dW = np.zeros(W.shape)
    for n in range(N):
        for f in range(FN):
            for i in range(OH):
                for j in range(OW):
                    window = xp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    out[n, f, i, j] = np.sum(window * W[f]) + b[f]
                    dW[f] += dout[n, f, i, j] * window
                    dxp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += dout[n, f, i, j] * W[f]
    return out, dxp[:, :, pad:pad + H, pad:pad + Wd], dW, dout.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad", [1, 2])
def test_conv2d_symmetric_padding_forward_and_backward(pad, stride, dtype):
    """predict, dx and dW/db of a conv layer (kernel 3x2, random x, W, b) equal the loop reference."""
    N, C, H, Wd, FN, kh, kw = 2, 3, 5, 6, 4, 3, 2
    rng = np.random.default_rng(10 * pad + stride)
    x, W, b = rng.standard_normal((N, C, H, Wd)), rng.standard_normal((FN, C, kh, kw)), rng.standard_normal(FN)
    model = one_layer_model({"type": "conv2d", "filters": FN, "kernel": [kh, kw], "stride": stride, "pad": pad},
                            (C, H, Wd), dtype=np.dtype(dtype).name)
    model.params["l1.W"][...] = W
    model.params["l1.b"][...] = b
    OH, OW = (H + 2 * pad - kh) // stride + 1, (Wd + 2 * pad - kw) // stride + 1
    assert model.output_shape == (FN, OH, OW)
    dout = rng.standard_normal((N, FN, OH, OW))
    out_ref, dx_ref, dW_ref, db_ref = conv_reference(x, W, b, dout, stride, pad)

    tol = TOL[dtype]
    np.testing.assert_allclose(model.predict(x.astype(dtype)), out_ref, **tol)
    model.forward(x.astype(dtype), train=True)
    dx = model.backward(dout.astype(dtype))
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(model.grads["l1.W"], dW_ref, **tol)
    np.testing.assert_allclose(model.grads["l1.b"], db_ref, **tol)


# --- batchnorm -------------------------------------------------------------------------

@pytest.mark.parametrize("in_shape", [(4,), (3, 2, 5)], ids=["features", "channels"])
def test_batchnorm_inference_uses_the_specs_eps(in_shape):
    """With eps 0.5 and set running statistics, predict is (x-mean)/sqrt(var+eps)*gamma+beta per channel."""
    eps, C = 0.5, in_shape[0]
    model = one_layer_model({"type": "batchnorm", "eps": eps}, in_shape)
    mean, var = np.linspace(-1.0, 2.0, C), np.linspace(0.25, 3.0, C)
    gamma, beta = np.linspace(0.5, 2.0, C), np.linspace(-0.3, 0.6, C)
    model.buffers["l1.running_mean"][...] = mean
    model.buffers["l1.running_var"][...] = var
    model.params["l1.gamma"][...] = gamma
    model.params["l1.beta"][...] = beta
    x = np.random.default_rng(3).standard_normal((6,) + in_shape)

    expected = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(C):
            expected[n, c] = (x[n, c] - mean[c]) / math.sqrt(var[c] + eps) * gamma[c] + beta[c]
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12, atol=1e-12)


# --- maxpool2d -------------------------------------------------------------------------

@pytest.mark.parametrize("size,stride,pad", [(2, 2, 1), (3, 2, 1), (3, 1, 1), (4, 3, 2)])
def test_maxpool_padding_never_wins(size, stride, pad):
    """All-negative input: every window's max (and the routed gradient) is a real element, never the padding."""
    N, C, H, W = 2, 2, 5, 6
    rng = np.random.default_rng(size + 10 * stride + 100 * pad)
    x = -1.0 - rng.permutation(N * C * H * W).reshape(N, C, H, W) / 10.0   # distinct, all <= -1
    model = one_layer_model({"type": "maxpool2d", "size": size, "stride": stride, "pad": pad}, (C, H, W))
    OH, OW = (H + 2 * pad - size) // stride + 1, (W + 2 * pad - size) // stride + 1
    assert model.output_shape == (C, OH, OW)
    dout = rng.standard_normal((N, C, OH, OW))

    out_ref, dx_ref = np.zeros((N, C, OH, OW)), np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    rows = range(max(i * stride - pad, 0), min(i * stride - pad + size, H))
                    cols = range(max(j * stride - pad, 0), min(j * stride - pad + size, W))
                    best = max((x[n, c, r, s], r, s) for r in rows for s in cols)
                    out_ref[n, c, i, j] = best[0]
                    dx_ref[n, c, best[1], best[2]] += dout[n, c, i, j]
    out = model.forward(x, train=True)
    assert out.max() < 0
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_allclose(model.backward(dout), dx_ref, rtol=1e-12, atol=1e-12)


# --- initialisation --------------------------------------------------------------------

@pytest.mark.parametrize("init,gain", [("he", 2.0), ("xavier", 1.0)])
@pytest.mark.parametrize("C,FN", [(128, 2), (2, 128)], ids=["fan_in>fan_out", "fan_in<fan_out"])
def test_conv_init_std_uses_fan_in(init, gain, C, FN):
    """Conv W drawn with std sqrt(gain / (C*kh*kw)): fan-in, not fan-out FN*kh*kw (8 times off here).

    With 2304 weights the sample std is within ~1.5% (one sigma) of the true one; 10% is ~7 sigma.
    """
    kh, kw = 3, 3
    model = one_layer_model({"type": "conv2d", "filters": FN, "kernel": [kh, kw], "init": init}, (C, 5, 5))
    W = model.params["l1.W"]
    assert W.shape == (FN, C, kh, kw)
    want = math.sqrt(gain / (C * kh * kw))
    assert abs(W.std() / want - 1) < 0.10, (W.std(), want, math.sqrt(gain / (FN * kh * kw)))
    assert abs(W.mean()) < 4 * want / math.sqrt(W.size)
    np.testing.assert_array_equal(model.params["l1.b"], np.zeros(FN))
