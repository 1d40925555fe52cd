"""Compiled kernels against the numpy reference, on hypothesis-drawn shapes.

Every kernel in ``_numpy.__all__`` is run on both backends with the same
inputs; results must agree to a per-dtype tolerance (float64 to ~1e-12
relative, float32 to ~1e-5). Skipped as a module when the extension is not
built; tests/test_backend.py is what fails when a build was required.
"""
import importlib
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import netspec.kernels  # noqa: E402
from netspec.kernels import numpy_kernels as ref  # noqa: E402

# the variant in use (see netspec.kernels); the baseline build when the suite runs on numpy
compiled = netspec.kernels.compiled_module() or pytest.importorskip("netspec.kernels._compiled",
                                                                    reason="compiled kernels not built")

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
SETTINGS = settings(max_examples=int(os.environ.get("NETSPEC_FUZZ_EXAMPLES", 40)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def close(got, want, dtype, scale=1.0):
    """Assert same dtype, shape and values; atol scales with the size of a summed term."""
    assert got.dtype == want.dtype, f"dtype: expected {want.dtype}, found {got.dtype}"
    assert got.shape == want.shape, f"shape: expected {want.shape}, found {got.shape}"
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale)


@st.composite
def windows(draw, max_c=4):
    """(N, C, H, W, kh, kw, stride, pad) with OH, OW >= 1; non-square allowed."""
    kh = draw(st.integers(1, 5))
    kw = draw(st.integers(1, 5))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * pad), 11))
    W = draw(st.integers(max(1, kw - 2 * pad), 11))
    N = draw(st.integers(1, 3))
    C = draw(st.integers(1, max_c))
    return N, C, H, W, kh, kw, stride, pad


def data(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def out_hw(H, W, kh, kw, stride, pad):
    return ref.out_size(H, kh, stride, pad), ref.out_size(W, kw, stride, pad)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(win=windows(), seed=st.integers(0, 2**16))
def test_im2col_col2im(dtype, win, seed):
    N, C, H, W, kh, kw, stride, pad = win
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), dtype)
    col = compiled.im2col(x, kh, kw, stride, pad)
    close(col, ref.im2col(x, kh, kw, stride, pad), dtype)
    dcol = data(rng, col.shape, dtype)
    close(compiled.col2im(dcol, x.shape, kh, kw, stride, pad),
          ref.col2im(dcol, x.shape, kh, kw, stride, pad), dtype, scale=kh * kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@SETTINGS
@given(win=windows(), fn=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_conv2d(dtype, bias, win, fn, seed):
    N, C, H, W, kh, kw, stride, pad = win
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), dtype)
    Wt = data(rng, (fn, C, kh, kw), dtype)
    b = data(rng, (fn,), dtype) if bias else None
    out = compiled.conv2d_forward(x, Wt, b, stride, pad)
    scale = C * kh * kw
    close(out, ref.conv2d_forward(x, Wt, b, stride, pad), dtype, scale)
    dout = data(rng, out.shape, dtype)
    dout_copy = dout.copy()
    got = compiled.conv2d_backward(dout, x, Wt, stride, pad)
    want = ref.conv2d_backward(dout, x, Wt, stride, pad)
    np.testing.assert_array_equal(dout, dout_copy, err_msg="backward wrote into dout")
    for name, g, w, s in zip(("dx", "dW", "db"), got, want, (fn * kh * kw, N * out[0, 0].size, N * out[0, 0].size)):
        assert g.dtype == w.dtype, f"{name} dtype: expected {w.dtype}, found {g.dtype}"
        close(g, w, dtype, s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_chunked_and_reused(dtype):
    """Batches spanning several column chunks (so dW is summed over chunks), with the shared
    scratch buffers reused across calls, layers of other shapes, and a ragged last chunk."""
    rng = np.random.default_rng(0)
    for N, C, H, W, F in ((23, 16, 28, 28, 8), (23, 16, 28, 28, 8), (5, 3, 20, 17, 4), (41, 16, 28, 28, 8)):
        K, P = C * 9, H * W
        nb = compiled.chunk_samples(N, K, P, np.dtype(dtype).itemsize)
        assert N // nb >= 2 and N % nb or N == 5, f"N={N} fits in {-(-N // nb)} chunk(s) of {nb}"
        Wt = data(rng, (F, C, 3, 3), dtype)
        b = data(rng, (F,), dtype)
        x = data(rng, (N, C, H, W), dtype)
        out = compiled.conv2d_forward(x, Wt, b, 1, 1)
        close(out, ref.conv2d_forward(x, Wt, b, 1, 1), dtype, K)
        dout = data(rng, out.shape, dtype)
        for g, w in zip(compiled.conv2d_backward(dout, x, Wt, 1, 1),
                        ref.conv2d_backward(dout, x, Wt, 1, 1)):
            close(g, w, dtype, N * P)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (1, 2, 1, 9)])
def test_conv2d_pointwise(dtype, shape):
    """1x1 kernels, stride 1, no padding take the path without im2col."""
    rng = np.random.default_rng(1)
    x = data(rng, shape, dtype)
    Wt = data(rng, (7, shape[1], 1, 1), dtype)
    b = data(rng, (7,), dtype)
    out = compiled.conv2d_forward(x, Wt, b, 1, 0)
    close(out, ref.conv2d_forward(x, Wt, b, 1, 0), dtype, shape[1])
    dout = data(rng, out.shape, dtype)
    for g, w in zip(compiled.conv2d_backward(dout, x, Wt, 1, 0),
                    ref.conv2d_backward(dout, x, Wt, 1, 0)):
        close(g, w, dtype, 50)


def test_conv2d_other_dtype_falls_back():
    """float16 (or mixed dtypes) go to the reference rather than changing the result type."""
    rng = np.random.default_rng(2)
    x = data(rng, (2, 2, 6, 6), np.float16)
    Wt = data(rng, (3, 2, 3, 3), np.float16)
    out = compiled.conv2d_forward(x, Wt, None, 1, 1)
    assert out.dtype == ref.conv2d_forward(x, Wt, None, 1, 1).dtype
    dx, dW, db = compiled.conv2d_backward(np.ones_like(out), x, Wt, 1, 1)
    assert dx.shape == x.shape and dW.shape == Wt.shape and db.shape == (3,)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(win=windows(), seed=st.integers(0, 2**16), ties=st.booleans())
def test_maxpool2d(dtype, win, seed, ties):
    N, C, H, W, kh, kw, stride, pad = win
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), dtype)
    if ties:  # few distinct values: the first maximum must win
        x = np.round(x).astype(dtype)
    out, arg = compiled.maxpool2d_forward(x, kh, kw, stride, pad)
    out_r, arg_r = ref.maxpool2d_forward(x, kh, kw, stride, pad)
    close(out, out_r, dtype)
    assert arg.dtype == np.int64
    np.testing.assert_array_equal(arg, arg_r)
    dout = data(rng, out.shape, dtype)
    close(compiled.maxpool2d_backward(dout, arg, x.shape, kh, kw, stride, pad),
          ref.maxpool2d_backward(dout, arg_r, x.shape, kh, kw, stride, pad), dtype, kh * kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxpool2d_padding_and_neg_inf(dtype):
    """Padding is -inf; a window of only -inf reports index 0, like numpy's argmax."""
    x = np.full((1, 1, 3, 4), -np.inf, dtype=dtype)
    x[0, 0, 2, 3] = -5
    for kh, kw, stride, pad in [(3, 3, 1, 1), (2, 3, 2, 1), (3, 2, 3, 2)]:
        out, arg = compiled.maxpool2d_forward(x, kh, kw, stride, pad)
        out_r, arg_r = ref.maxpool2d_forward(x, kh, kw, stride, pad)
        np.testing.assert_array_equal(out, out_r)
        np.testing.assert_array_equal(arg, arg_r)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(win=windows(), seed=st.integers(0, 2**16))
def test_avgpool2d(dtype, win, seed):
    N, C, H, W, kh, kw, stride, pad = win
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), dtype)
    out = compiled.avgpool2d_forward(x, kh, kw, stride, pad)
    close(out, ref.avgpool2d_forward(x, kh, kw, stride, pad), dtype)
    dout = data(rng, out.shape, dtype)
    close(compiled.avgpool2d_backward(dout, x.shape, kh, kw, stride, pad),
          ref.avgpool2d_backward(dout, x.shape, kh, kw, stride, pad), dtype, kh * kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 4, 4), (2, 3, 1, 1), (2, 2, 2, 3), (1, 2, 7, 9), (2, 3, 7, 7),
                                   (2, 2, 14, 14), (1, 2, 28, 28), (100, 128, 4, 4)])
def test_global_avgpool(dtype, shape):
    """The mean of each channel's map, into a fresh array or ``out``: numpy's own values bit for
    bit (its pairwise order of additions), so a network's results do not depend on the backend
    here and stay those recorded before this kernel existed."""
    x = data(np.random.default_rng(5), shape, dtype)
    want = x.mean(axis=(2, 3), dtype=dtype)
    np.testing.assert_array_equal(compiled.global_avgpool_forward(x), want)
    np.testing.assert_array_equal(ref.global_avgpool_forward(x), want)
    close(want, x.mean(axis=(2, 3), dtype=np.float64).astype(dtype), dtype)
    out = np.full(shape[:2], 7, dtype=dtype)
    assert compiled.global_avgpool_forward(x, out=out) is out
    np.testing.assert_array_equal(out, want)
    close(compiled.global_avgpool_forward(x.transpose(0, 1, 3, 2)), want, dtype)   # not contiguous


def test_pooling_noncontiguous_input():
    rng = np.random.default_rng(3)
    x = data(rng, (2, 3, 9, 8), np.float64).transpose(0, 1, 3, 2)
    close(compiled.avgpool2d_forward(x, 2, 3, 2, 1), ref.avgpool2d_forward(x, 2, 3, 2, 1),
          np.float64)
    for a, b in zip(compiled.maxpool2d_forward(x, 3, 2, 2, 1), ref.maxpool2d_forward(x, 3, 2, 2, 1)):
        np.testing.assert_array_equal(a, b)


# --- optimizer updates --------------------------------------------------------

HYPER = {
    "sgd_update": dict(lr=0.05),
    "momentum_update": dict(lr=0.05, momentum=0.9),
    "nesterov_update": dict(lr=0.05, momentum=0.9),
    "adagrad_update": dict(lr=0.05, eps=1e-7),
    "rmsprop_update": dict(lr=0.01, decay=0.99, eps=1e-7),
    "adam_update": dict(lr_t=0.001, beta1=0.9, beta2=0.999, eps=1e-7),
}
STATES = {"sgd_update": 0, "momentum_update": 1, "nesterov_update": 1,
          "adagrad_update": 1, "rmsprop_update": 1, "adam_update": 2}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(HYPER))
@SETTINGS
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple) | st.just((70001,)),
       weight_decay=st.sampled_from([0.0, 1e-4, 0.1]), seed=st.integers(0, 2**16),
       steps=st.integers(1, 3))
def test_optimizer_update(dtype, name, shape, weight_decay, seed, steps):
    rng = np.random.default_rng(seed)
    p = data(rng, shape, dtype)
    states = [np.abs(data(rng, shape, dtype)) for _ in range(STATES[name])]
    p_r, states_r = p.copy(), [s.copy() for s in states]
    for _ in range(steps):
        g = data(rng, shape, dtype)
        g_copy = g.copy()
        getattr(compiled, name)(p, g, *states, **HYPER[name], weight_decay=weight_decay)
        getattr(ref, name)(p_r, g, *states_r, **HYPER[name], weight_decay=weight_decay)
        np.testing.assert_array_equal(g, g_copy, err_msg="update wrote into the gradient")
    close(p, p_r, dtype)
    for s, s_r in zip(states, states_r):
        close(s, s_r, dtype)


def test_optimizer_mixed_grad_dtype_and_view():
    """A float64 gradient for float32 params, and a non-contiguous parameter view."""
    rng = np.random.default_rng(4)
    p = data(rng, (5, 6), np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p_r, m_r, v_r = p.copy(), m.copy(), v.copy()
    g = data(rng, (5, 6), np.float64)
    compiled.adam_update(p, g, m, v, 0.01, 0.9, 0.999, 1e-7, 0.0)
    ref.adam_update(p_r, g, m_r, v_r, 0.01, 0.9, 0.999, 1e-7, 0.0)
    assert p.dtype == np.float32
    close(p, p_r, np.float32)
    big = data(rng, (6, 10), np.float64)
    big_r = big.copy()
    g = data(rng, (6, 5), np.float64)
    compiled.sgd_update(big[:, ::2], g, 0.1, 0.01)
    ref.sgd_update(big_r[:, ::2], g, 0.1, 0.01)
    close(big, big_r, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,stride,pad", [((3, 3), 1, 1), ((5, 5), 2, 0), ((1, 1), 1, 0)])
def test_conv2d_backward_without_dx(dtype, kernel, stride, pad):
    """need_dx=False (a first layer) returns dx None and the same dW, db on both backends."""
    rng = np.random.default_rng(7)
    x = data(rng, (3, 2, 9, 9), dtype)
    W = data(rng, (4, 2) + kernel, dtype)
    b = data(rng, (4,), dtype)
    grads = {}
    for name, k in (("ref", ref), ("compiled", compiled)):
        out = k.conv2d_forward(x, W, b, stride, pad)
        dout = data(np.random.default_rng(8), out.shape, dtype)
        full = k.conv2d_backward(dout, x, W, stride, pad)
        dx, dW, db = k.conv2d_backward(dout, x, W, stride, pad, need_dx=False)
        assert dx is None
        np.testing.assert_array_equal(dW, full[1])
        np.testing.assert_array_equal(db, full[2])
        grads[name] = (dW, db)
    close(grads["compiled"][0], grads["ref"][0], dtype)
    close(grads["compiled"][1], grads["ref"][1], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backward_without_db(dtype):
    """need_db=False (a convolution without bias) returns db None and the same dx, dW."""
    rng = np.random.default_rng(5)
    x, W = data(rng, (3, 8, 9, 9), dtype), data(rng, (6, 8, 3, 3), dtype)
    for k in (ref, compiled):
        for stride in (1, 2):
            out = k.conv2d_forward(x, W, None, stride, 1)
            dout = data(np.random.default_rng(6), out.shape, dtype)
            full = k.conv2d_backward(dout, x, W, stride, 1)
            dx, dW, db = k.conv2d_backward(dout, x, W, stride, 1, need_db=False)
            assert db is None
            np.testing.assert_array_equal(dx, full[0])
            np.testing.assert_array_equal(dW, full[1])


@pytest.mark.parametrize("k,stride,pad,bias", [((3, 3), 1, 1, False), ((3, 3), 2, 1, True), ((1, 1), 2, 0, False),
                                               ((5, 3), 1, 2, True)])
def test_conv2d_forward_with_packed_filters_is_the_same(k, stride, pad, bias):
    """conv2d_pack lays W and b out once; conv2d_forward with them gives the same bits as without
    (plain, and with a residual add and ReLU); the reference packs nothing."""
    rng = np.random.default_rng(11)
    x, W = data(rng, (4, 9, 8, 7), np.float32), data(rng, (20, 9) + k, np.float32)
    b = data(rng, (20,), np.float32) if bias else None
    assert ref.conv2d_pack(W, b, stride, pad) is None
    packed = compiled.conv2d_pack(W, b, stride, pad)
    assert packed is not None
    plain = compiled.conv2d_forward(x, W, b, stride, pad)
    np.testing.assert_array_equal(compiled.conv2d_forward(x, W, b, stride, pad, packed=packed), plain)
    r = data(rng, plain.shape, np.float32)
    np.testing.assert_array_equal(compiled.conv2d_forward(x, W, b, stride, pad, residual=r, relu=True, packed=packed),
                                  compiled.conv2d_forward(x, W, b, stride, pad, residual=r, relu=True))


def test_conv2d_pack_declines_where_the_direct_kernel_does_not_run():
    rng = np.random.default_rng(12)
    assert compiled.conv2d_pack(data(rng, (4, 3, 3, 3), np.float64), None, 1, 1) is None     # float64: im2col
    assert compiled.conv2d_pack(data(rng, (4, 3, 3, 9), np.float32), None, 1, 1) is None     # wider than 8
    assert compiled.conv2d_pack(data(rng, (4, 3, 1, 1), np.float32), None, 1, 0) is None     # 1x1: one GEMM


# (C, H, W, F, k, stride, pad): 3x3/s2 as in resnet_fashion (odd and even maps), a 5x5, an
# asymmetric window at stride 3, and windows smaller than the stride, where some phases of the
# input are reached by no tap (k=1 with pad 1, k=3 at stride 4) and their d/dx must be 0.
PHASE_CASES = [(32, 14, 14, 64, (3, 3), 2, 1), (64, 7, 7, 128, (3, 3), 2, 1), (8, 10, 9, 20, (5, 5), 2, 2),
               (9, 13, 12, 17, (5, 3), 3, 1), (8, 6, 7, 8, (1, 1), 2, 1), (8, 5, 5, 8, (3, 3), 4, 1),
               (12, 11, 9, 33, (3, 5), 2, 0)]


@pytest.mark.parametrize("case", PHASE_CASES, ids=lambda c: "C{}-{}x{}-F{}-k{}s{}p{}".format(*c))
def test_conv2d_strided_dx_by_phases(case):
    """float32 d/dx of a strided convolution from 8 input channels (one direct convolution per
    phase of the input) against the float64 reference."""
    C, H, W, F, k, stride, pad = case
    rng = np.random.default_rng(C + F)
    x, Wt = data(rng, (3, C, H, W), np.float32), data(rng, (F, C) + k, np.float32)
    dout = data(rng, ref.conv2d_forward(x, Wt, None, stride, pad).shape, np.float32)
    want = ref.conv2d_backward(dout.astype(np.float64), x.astype(np.float64), Wt.astype(np.float64), stride, pad)
    dx = compiled.conv2d_backward(dout, x, Wt, stride, pad)[0]
    close(dx, want[0].astype(np.float32), np.float32, F * k[0] * k[1])
    if k[0] < stride:   # rows no tap reaches are exactly 0
        reached = np.zeros(H, dtype=bool)
        for o in range(dout.shape[2]):
            for i in range(k[0]):
                if 0 <= o * stride + i - pad < H:
                    reached[o * stride + i - pad] = True
        assert (~reached).any() and not dx[:, :, ~reached].any()


WINOGRAD = bool(compiled.backend_info().get("winograd"))
needs_winograd = pytest.mark.skipif(not WINOGRAD, reason="this build has no Winograd kernel (AVX-512 only)")


@needs_winograd
@SETTINGS
@given(C=st.integers(16, 40), F=st.integers(1, 40), pad=st.integers(0, 2), H=st.integers(1, 13),
       W=st.integers(1, 13), N=st.integers(1, 9), x_size=st.sampled_from([1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_winograd_conv2d_matches_the_reference(C, F, pad, H, W, N, x_size, seed):
    """Stride-1 3x3 float32 layers of 16+ channels run Winograd F(2x2, 3x3) (forward, d/dx as
    the forward of dout with rotated filters, and dW by F(3x3, 2x2)): against the float64
    reference, the error within 1e-5 of the largest sum of |terms| of an output. Odd and even
    sizes, every padding, partly unused tiles, sample groups split over the threads."""
    if H + 2 * pad < 3 or W + 2 * pad < 3:
        return
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), np.float32) * np.float32(x_size)
    Wt, b = data(rng, (F, C, 3, 3), np.float32), data(rng, (F,), np.float32)
    x64, W64, b64 = x.astype(np.float64), Wt.astype(np.float64), b.astype(np.float64)
    out = compiled.conv2d_forward(x, Wt, b, 1, pad)
    magnitude = ref.conv2d_forward(np.abs(x64), np.abs(W64), np.abs(b64), 1, pad).max()
    close(out, ref.conv2d_forward(x64, W64, b64, 1, pad).astype(np.float32), np.float32, magnitude)
    dout = data(rng, out.shape, np.float32)
    dx, dW, _ = compiled.conv2d_backward(dout, x, Wt, 1, pad, need_db=False)
    want = ref.conv2d_backward(dout.astype(np.float64), x64, W64, 1, pad)
    scale = ref.conv2d_backward(np.abs(dout).astype(np.float64), np.abs(x64), np.abs(W64), 1, pad)
    close(dx, want[0].astype(np.float32), np.float32, scale[0].max())
    close(dW, want[1].astype(np.float32), np.float32, scale[1].max())


@needs_winograd
def test_winograd_runs_where_it_should():
    """The choice: stride 1, 3x3, 16+ input channels, float32, and outputs whose partly unused
    tiles leave at most 70% of the direct kernel's multiplies (3x3 outputs: 79%, direct)."""
    ok = compiled._winograd_ok
    assert ok(32, 32, 3, 3, 1, 1, 14, 14) and ok(64, 64, 3, 3, 1, 1, 7, 7) and ok(128, 128, 3, 3, 1, 1, 4, 4)
    assert not ok(15, 32, 3, 3, 1, 1, 14, 14)       # too few input channels
    assert not ok(32, 32, 3, 3, 2, 1, 14, 14)       # strided
    assert not ok(32, 32, 5, 5, 1, 2, 14, 14)       # not 3x3
    assert not ok(32, 32, 3, 3, 1, 1, 3, 3)         # 3x3 output: 4 tiles = 64 multiplies for 81
    rng = np.random.default_rng(5)
    W = data(rng, (24, 32, 3, 3), np.float32)
    assert compiled.conv2d_pack(W, None, 1, 1, in_shape=(32, 8, 8))[3] is True
    assert compiled.conv2d_pack(W, None, 1, 1, in_shape=(32, 3, 3))[3] is False
    assert compiled.conv2d_pack(W, None, 2, 1, in_shape=(32, 8, 8))[3] is False


@needs_winograd
def test_winograd_equals_the_direct_kernel():
    """The same layer through the Winograd and the direct kernel: equal within float32 rounding of
    the sums (both are exact algorithms; only the rounding differs)."""
    rng = np.random.default_rng(8)
    for N, C, F, H in [(5, 32, 32, 14), (7, 64, 64, 7), (9, 128, 128, 4), (3, 16, 10, 9)]:
        x, Wt, b = data(rng, (N, C, H, H), np.float32), data(rng, (F, C, 3, 3), np.float32), data(rng, (F,), np.float32)
        wt, bias = compiled._pack(Wt, b)
        direct = compiled._direct_conv(x, wt, bias, F, 3, 3, 1, 1, 1)
        u, bias = compiled._pack(Wt, b, wino=True)
        wino = compiled._winograd_conv(x, u, bias, F, 1)
        close(wino, direct, np.float32, C * 9 * 4)
        dout = data(rng, direct.shape, np.float32)
        close(compiled._winograd_dw(x, dout, 1), compiled._direct_dw(x, dout, 3, 3, 1, 1), np.float32, N * H * H * 4)


@needs_winograd
@pytest.mark.parametrize("N", [1, 2, 37, 100])
def test_winograd_packed_filters_residual_and_relu(N):
    """Filters packed once as U give the bits of U made per call; the fused residual add and ReLU
    are the add and ReLU kernels' arithmetic, bit for bit; any batch size (sample groups)."""
    rng = np.random.default_rng(N)
    x, Wt, b = data(rng, (N, 128, 4, 4), np.float32), data(rng, (128, 128, 3, 3), np.float32), data(rng, (128,), np.float32)
    packed = compiled.conv2d_pack(Wt, b, 1, 1, in_shape=x.shape[1:])
    assert packed[3] is True and packed[0].shape == (16, 128, 128)
    plain = compiled.conv2d_forward(x, Wt, b, 1, 1)
    np.testing.assert_array_equal(compiled.conv2d_forward(x, Wt, b, 1, 1, packed=packed), plain)
    r = data(rng, plain.shape, np.float32)
    np.testing.assert_array_equal(compiled.conv2d_forward(x, Wt, b, 1, 1, residual=r, relu=True, packed=packed),
                                  compiled.relu_forward(plain + r))
    for n in range(N):   # a sample's output does not depend on which group or thread computed it
        np.testing.assert_array_equal(compiled.conv2d_forward(x[n:n + 1], Wt, b, 1, 1), plain[n:n + 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernels", ["compiled", "reference"])
def test_read_only_inputs(dtype, kernels):
    """Read-only inputs (a memory-mapped dataset) work and are left untouched, on both backends."""
    k = compiled if kernels == "compiled" else ref
    rng = np.random.default_rng(9)

    def frozen(shape):
        a = data(rng, shape, dtype)
        a.setflags(write=False)
        return a

    x, W, b = frozen((3, 2, 7, 7)), frozen((4, 2, 3, 3)), frozen((4,))
    out = k.conv2d_forward(x, W, b, 1, 1)
    close(out, ref.conv2d_forward(x, W, b, 1, 1), dtype, 18)
    dout = frozen(out.shape)
    for g, w in zip(k.conv2d_backward(dout, x, W, 1, 1), ref.conv2d_backward(dout, x, W, 1, 1)):
        close(g, w, dtype, 50)
    close(k.im2col(x, 3, 3, 1, 1), ref.im2col(x, 3, 3, 1, 1), dtype)
    col = frozen(ref.im2col(x, 3, 3, 1, 1).shape)
    close(k.col2im(col, x.shape, 3, 3, 1, 1), ref.col2im(col, x.shape, 3, 3, 1, 1), dtype, 9)
    pooled, arg = k.maxpool2d_forward(x, 2, 2, 2, 0)
    arg.setflags(write=False)
    dp = frozen(pooled.shape)
    close(k.maxpool2d_backward(dp, arg, x.shape, 2, 2, 2, 0),
          ref.maxpool2d_backward(dp, arg, x.shape, 2, 2, 2, 0), dtype)
    close(k.avgpool2d_forward(x, 2, 2, 2, 1), ref.avgpool2d_forward(x, 2, 2, 2, 1), dtype)
    close(k.avgpool2d_backward(dp, x.shape, 2, 2, 2, 0), ref.avgpool2d_backward(dp, x.shape, 2, 2, 2, 0), dtype)
    p, v = data(rng, (10,), dtype), np.zeros(10, dtype)
    p_r, v_r = p.copy(), v.copy()
    g = frozen((10,))
    k.momentum_update(p, g, v, 0.1, 0.9, 0.0)
    ref.momentum_update(p_r, g, v_r, 0.1, 0.9, 0.0)
    close(p, p_r, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 4, 5, 6), (200, 16, 28, 28)])
def test_relu(dtype, shape):
    """max(x, 0) and its gradient, exactly as the reference (0 at 0 on both sides)."""
    rng = np.random.default_rng(11)
    x = data(rng, shape, dtype)
    if x.size:
        x.reshape(-1)[::7] = 0.0
        x.reshape(-1)[3::11] = np.nan       # NaN propagates forward, gets no gradient
    out = compiled.relu_forward(x)
    np.testing.assert_array_equal(out, ref.relu_forward(x))
    assert out.dtype == x.dtype and not np.shares_memory(out, x)
    dout = data(rng, shape, dtype)
    np.testing.assert_array_equal(compiled.relu_backward(dout, out), ref.relu_backward(dout, out))


@pytest.mark.parametrize("n", [0, 5, 100_003])
def test_round_half_is_numpys_float16_cast(n):
    """float16 rounding in place, bit for bit numpy's astype(float16): ties to even,
    overflow to infinity, subnormals, NaN and signed zeros included."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-30, 15, n))).astype(np.float32)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 65504.0, 65520.0, 1e-8, 6e-8, 2049.0, 2051.0],
                       np.float32)
    if n:
        x[:min(n, len(special))] = special[:n]
    with np.errstate(over="ignore"):  # values past 65504 become infinity, on purpose
        want = x.astype(np.float16).astype(np.float32)
    got = compiled.round_half(x.copy())
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 3, 1), (4, 5, 36), (100, 16, 784)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm(dtype, shape, train):
    """Per-channel statistics, normalisation and the gradient against the reference."""
    rng = np.random.default_rng(13)
    x = (3 + 2 * rng.standard_normal(shape)).astype(dtype)
    mean, var = compiled.batchnorm_stats(x)
    ref_mean, ref_var = ref.batchnorm_stats(x)
    close(mean, ref_mean, dtype, 10)
    close(var, ref_var, dtype, 10)
    C = shape[1]
    gamma, beta = data(rng, (C,), dtype), data(rng, (C,), dtype)
    inv_std = (1 / np.sqrt(ref_var + 1e-5)).astype(dtype)
    out, xhat = compiled.batchnorm_forward(x, gamma, beta, ref_mean, inv_std)
    want_out, want_xhat = ref.batchnorm_forward(x, gamma, beta, ref_mean, inv_std)
    close(out, want_out, dtype, 10)
    close(xhat, want_xhat, dtype, 10)
    dout = data(rng, shape, dtype)
    for got, want, name in zip(compiled.batchnorm_backward(dout, want_xhat, gamma, inv_std, train),
                               ref.batchnorm_backward(dout, want_xhat, gamma, inv_std, train),
                               ("dx", "dgamma", "dbeta")):
        close(got, want, dtype, shape[0] * shape[2])


@SETTINGS
@given(C=st.integers(8, 20), F=st.integers(1, 40), kh=st.integers(1, 5), kw=st.integers(1, 8),
       stride=st.integers(1, 2), pad=st.integers(0, 4), H=st.integers(1, 12), W=st.integers(1, 12),
       N=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_conv2d_direct_kernels_on_many_shapes(C, F, kh, kw, stride, pad, H, W, N, seed):
    """float32 layers wide enough for the direct kernels (8+ input channels): forward, dW and d/dx
    (as a rotated forward convolution where stride is 1 and pad <= k - 1) against the reference."""
    if H + 2 * pad < kh or W + 2 * pad < kw:
        return
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), np.float32)
    Wt = data(rng, (F, C, kh, kw), np.float32)
    b = data(rng, (F,), np.float32)
    out = compiled.conv2d_forward(x, Wt, b, stride, pad)
    close(out, ref.conv2d_forward(x, Wt, b, stride, pad), np.float32, C * kh * kw)
    dout = data(rng, out.shape, np.float32)
    for name, got, want, scale in zip(("dx", "dW", "db"), compiled.conv2d_backward(dout, x, Wt, stride, pad),
                                      ref.conv2d_backward(dout, x, Wt, stride, pad),
                                      (F * kh * kw, N * out[0, 0].size, N * out[0, 0].size)):
        close(got, want, np.float32, scale)


def _isa_variants():
    """The compiled instruction-set variants built and runnable here (e.g. avx2 and baseline)."""
    return netspec.kernels.usable_variants() or [pytest.param("none", marks=pytest.mark.skip("nothing built"))]


@pytest.mark.parametrize("isa", _isa_variants())
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(C=st.integers(1, 20), F=st.integers(1, 20), kh=st.integers(1, 5), kw=st.integers(1, 5),
       stride=st.integers(1, 3), pad=st.integers(0, 3), H=st.integers(1, 12), W=st.integers(1, 12),
       N=st.integers(1, 3), x_size=st.sampled_from([1e-3, 1.0, 1e3]), dout_size=st.sampled_from([1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_every_isa_variant_conv2d_matches_the_reference(isa, dtype, C, F, kh, kw, stride, pad, H, W, N,
                                                       x_size, dout_size, seed):
    """Each variant's conv2d forward and backward against the reference, on any channel count (the
    direct kernels from 8 up) and data of any magnitude: the tolerance scales with the largest sum
    of |terms| of each output (the same sums over absolute values), so a missing or extra term fails."""
    if H + 2 * pad < kh or W + 2 * pad < kw:
        return
    mod = importlib.import_module("netspec.kernels._compiled" + netspec.kernels.VARIANTS[isa][0])
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), dtype) * dtype(x_size)
    Wt = data(rng, (F, C, kh, kw), dtype)
    b = data(rng, (F,), dtype) * dtype(x_size)
    out = mod.conv2d_forward(x, Wt, b, stride, pad)
    magnitude = ref.conv2d_forward(np.abs(x), np.abs(Wt), np.abs(b), stride, pad)
    close(out, ref.conv2d_forward(x, Wt, b, stride, pad), dtype, magnitude.max())
    dout = data(rng, out.shape, dtype) * dtype(dout_size)
    magnitudes = ref.conv2d_backward(np.abs(dout), np.abs(x), np.abs(Wt), stride, pad)
    for got, want, size in zip(mod.conv2d_backward(dout, x, Wt, stride, pad),
                               ref.conv2d_backward(dout, x, Wt, stride, pad), magnitudes):
        close(got, want, dtype, size.max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (2, 3, 7, 9), (1, 1, 2, 2), (2, 4, 5, 3)])
def test_maxpool2d_2x2_stride_2_fast_path(dtype, shape):
    """The common 2x2, stride-2, unpadded window has its own loop: the same winners (first maximum
    on ties, odd edges dropped) as the reference, with and without the argmax."""
    rng = np.random.default_rng(7)
    for ties in (False, True):
        x = data(rng, shape, dtype)
        if ties:
            x = np.round(x).astype(dtype)
        out, arg = compiled.maxpool2d_forward(x, 2, 2, 2, 0)
        out_r, arg_r = ref.maxpool2d_forward(x, 2, 2, 2, 0)
        np.testing.assert_array_equal(out, out_r)
        np.testing.assert_array_equal(arg, arg_r)
        np.testing.assert_array_equal(compiled.maxpool2d_infer(x, 2, 2, 2, 0), out_r)
        np.testing.assert_array_equal(ref.maxpool2d_infer(x, 2, 2, 2, 0), out_r)
        dout = data(rng, out.shape, dtype)
        dout.reshape(-1)[::5] = -0.0   # routed as 0 + dout: +0.0, as the reference's add into zeros
        dx = compiled.maxpool2d_backward(dout, arg, x.shape, 2, 2, 2, 0)
        dx_r = ref.maxpool2d_backward(dout, arg_r, x.shape, 2, 2, 2, 0)
        np.testing.assert_array_equal(dx, dx_r)   # odd last rows and columns: 0
        assert not np.signbit(dx[dx == 0]).any()
    # windows with NaN and -inf, as numpy's argmax: the first NaN wins (and is the output), else
    # the first maximum; an all -inf window reports index 0
    x = np.full((1, 1, 2, 12), -np.inf, dtype)
    x[0, 0, :, 2:4] = [[1, np.nan], [1, np.nan]]
    x[0, 0, :, 4:6] = np.nan
    x[0, 0, :, 6:8] = [[2, -np.inf], [-np.inf, np.nan]]
    x[0, 0, :, 8:10] = [[-np.inf, 3], [3, 1]]
    x[0, 0, :, 10:12] = [[-np.inf, -np.inf], [np.inf, np.inf]]
    for mod in (compiled, ref):
        for args in ((2, 2, 2, 0), (2, 2, 2, 1)):   # the 2x2 loop, and the general one (padded)
            out, arg = mod.maxpool2d_forward(x, *args)
            np.testing.assert_array_equal(mod.maxpool2d_infer(x, *args), out)
            if args[3] == 0:
                np.testing.assert_array_equal(out[0, 0, 0], [-np.inf, np.nan, np.nan, np.nan, 3, np.inf])
                np.testing.assert_array_equal(arg[0, 0, 0], [0, 1, 0, 3, 1, 2])
            else:   # windows shifted by one, the first row of outputs sees row 0 below padding (-inf)
                np.testing.assert_array_equal(out[0, 0, 0], [-np.inf, 1, np.nan, np.nan, -np.inf, 3, -np.inf])
                np.testing.assert_array_equal(arg[0, 0, 0], [0, 3, 2, 2, 0, 2, 0])


@pytest.mark.parametrize("module", [compiled, ref], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(3, 5, 9, 9, 3, 1, 1), (2, 16, 7, 7, 3, 2, 1), (2, 4, 6, 6, 1, 1, 0),
                                  (2, 3, 12, 12, 9, 1, 2), (1, 1, 28, 28, 5, 1, 0)])
def test_conv2d_with_a_residual_and_relu_equals_conv_add_relu_bit_for_bit(module, dtype, case):
    """The fused end of a conv (the residual add, then the ReLU) is the add and ReLU kernels'
    arithmetic: not one bit differs, on the direct, pointwise and im2col paths."""
    N, C, H, W, k, s, p = case
    rng = np.random.default_rng(3)
    x = data(rng, (N, C, H, W), dtype)
    Wt = data(rng, (6, C, k, k), dtype)
    b = data(rng, (6,), dtype)
    plain = module.conv2d_forward(x, Wt, b, s, p)
    residual = data(rng, plain.shape, dtype)
    want = module.relu_forward(plain + residual)
    got = module.conv2d_forward(x, Wt, b, s, p, residual=residual, relu=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(module.conv2d_forward(x, Wt, b, s, p, residual=residual), plain + residual)
    out = np.empty_like(plain)
    assert module.conv2d_forward(x, Wt, b, s, p, out=out, relu=True) is not None
    np.testing.assert_array_equal(out, module.relu_forward(plain))


@pytest.mark.parametrize("module", [compiled, ref], ids=["compiled", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(3, 1, 28, 28, 32, 3, 1, 1), (2, 1, 28, 28, 30, 5, 1, 0), (2, 16, 28, 28, 16, 3, 1, 1),
                                  (2, 32, 14, 14, 32, 3, 1, 2), (37, 64, 7, 7, 64, 3, 1, 1), (2, 20, 15, 15, 24, 3, 2, 1),
                                  (2, 4, 6, 6, 6, 1, 1, 0), (1, 3, 5, 5, 17, 3, 1, 1), (2, 3, 4, 4, 5, 3, 1, 0)])
def test_conv2d_with_a_fused_max_pool_equals_conv_then_pool_bit_for_bit(module, dtype, case):
    """A 2x2 stride-2 max pool fused into the conv (netspec.passes.fuse_maxpool) is the pool
    kernel on the conv's output: the same maxima, NaN where a window holds one, a ragged last
    row and column dropped; on the direct (1 channel, 5x5, stride 2), Winograd (16-64
    channels), pointwise and im2col (float64) paths, into ``out`` or a new array, with packed
    filters; with a residual the pool runs after the conv, add and ReLU."""
    N, C, H, W, F, k, s, p = case
    rng = np.random.default_rng(5)
    x = data(rng, (N, C, H, W), dtype)
    x[0, 0, 1, 1] = np.nan
    Wt = data(rng, (F, C, k, k), dtype)
    b = data(rng, (F,), dtype)
    packed = module.conv2d_pack(Wt, b, s, p, in_shape=(C, H, W))
    for relu in (False, True):
        plain = module.conv2d_forward(x, Wt, b, s, p, relu=relu)
        want = module.maxpool2d_infer(plain, 2, 2, 2, 0)
        assert want.shape == (N, F, plain.shape[2] // 2, plain.shape[3] // 2) and np.isnan(want).any()
        np.testing.assert_array_equal(module.conv2d_forward(x, Wt, b, s, p, relu=relu, pool=(2, 2, 2, 0)), want)
        out = np.full_like(want, 7.0)
        got = module.conv2d_forward(x, Wt, b, s, p, out=out, relu=relu, packed=packed, pool=(2, 2, 2, 0))
        assert got is out
        np.testing.assert_array_equal(out, want)
    residual = data(rng, plain.shape, dtype)
    np.testing.assert_array_equal(
        module.conv2d_forward(x, Wt, b, s, p, residual=residual, relu=True, pool=(2, 2, 2, 0)),
        module.maxpool2d_infer(module.relu_forward(module.conv2d_forward(x, Wt, b, s, p) + residual), 2, 2, 2, 0))
    # another window is pooled after the conv
    np.testing.assert_array_equal(module.conv2d_forward(x, Wt, b, s, p, pool=(3, 3, 1, 1)),
                                  module.maxpool2d_infer(module.conv2d_forward(x, Wt, b, s, p), 3, 3, 1, 1))


@pytest.mark.parametrize("module", [compiled, ref], ids=["compiled", "numpy"])
@pytest.mark.parametrize("relu", [False, True])
def test_a_fused_max_pool_of_nan_infinities_and_signed_zeros_keeps_every_bit(module, relu):
    """A 1x1 filter of 1 with bias -0.0 and padding 1 passes its input through (x + -0.0 is x; the
    reference's matrix product turns -0.0 into 0.0), so the fused pool sees NaN, +-inf and zeros
    in every arrangement: its
    output has the bits of the pool kernel run on the conv's output (which zero, which infinity),
    and NaN where it has NaN (the sign and payload of a NaN are not defined: x86 keeps the first
    operand's, so they vary with the order a compiler gives an addition)."""
    rng = np.random.default_rng(11)
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5, -2.0], np.float32)
    x = rng.choice(values, size=(3, 1, 37, 41), p=[0.04, 0.04, 0.04, 0.4, 0.4, 0.04, 0.04]).astype(np.float32)
    Wt, b = np.ones((1, 1, 1, 1), np.float32), np.array([-0.0], np.float32)
    plain = module.conv2d_forward(x, Wt, b, 1, 1, relu=relu)
    want = module.maxpool2d_infer(plain, 2, 2, 2, 0)
    got = module.conv2d_forward(x, Wt, b, 1, 1, relu=relu, pool=(2, 2, 2, 0))
    zeros = got[got == 0]
    assert got.shape == (3, 1, 19, 21) and np.isnan(got).any() and np.isinf(got).any()
    assert zeros.size and not (relu and np.signbit(zeros).any())   # the ReLU leaves no -0.0
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("module", [compiled, ref], ids=["compiled", "numpy"])
def test_same_bits_compares_shape_dtype_and_every_byte(module):
    """What predict checks the consumed weights with: NaN equals itself, -0.0 is not 0.0, one
    flipped bit anywhere, another shape or dtype, and strided views are all told apart."""
    a = np.random.default_rng(0).standard_normal((3, 50, 7)).astype(np.float32)
    a[0, 0, 0] = np.nan
    b = a.copy()
    pairs = [(np.zeros(4), np.zeros(4)), (a, b)]
    assert module.same_bits(pairs) and module.same_bits([]) and module.same_bits([(a[:, ::2], b[:, ::2])])
    flipped = b.copy()
    flipped.view(np.uint32)[2, 48, 6] ^= 1   # in the strided view too
    assert not module.same_bits(pairs[:1] + [(a, flipped)])
    assert not module.same_bits([(np.zeros(3), -np.zeros(3))])
    assert not module.same_bits([(a, b.reshape(3, 7, 50))]) and not module.same_bits([(a, b.astype(np.float64))])
    assert not module.same_bits([(a[:, ::2], flipped[:, ::2])])


# --- dense products on the OpenMP team ----------------------------------------------------

def test_single_threaded_blas_holds_one_thread_and_gives_the_counts_back():
    """What blas_scope is on the compiled backend: one BLAS thread inside (nested too), each
    library's own count after."""
    from threadpoolctl import threadpool_info, threadpool_limits
    from netspec.threads import single_threaded_blas

    def counts():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    if not counts():
        pytest.skip("numpy loaded no BLAS threadpoolctl knows")
    with threadpool_limits(3, "blas"):
        before = counts()
        assert before == [3] * len(before)
        with single_threaded_blas():
            assert counts() == [1] * len(before)
            with single_threaded_blas():
                assert counts() == [1] * len(before)
            assert counts() == [1] * len(before)
        assert counts() == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_rows_equals_numpy_matmul_by_rows(dtype):
    """gemm_rows splits a @ b by rows over the OpenMP threads, each one call of the BLAS numpy
    uses: with that BLAS on one thread, the values of numpy's matmul on the same row blocks (as
    row_parallel_matmul computes them) bit for bit, for row-major operands and for transposed
    views of them (the dense layers' x.T @ dout and dout @ W.T)."""
    from netspec.threads import blas_gemm_addresses, single_threaded_blas
    addresses = blas_gemm_addresses()
    if not any(addresses):
        pytest.skip("no CBLAS gemm found in numpy's BLAS here")
    compiled.set_blas_gemm(*addresses)   # as kernels.load() does (this module may not be the one in use)
    rng = np.random.default_rng(11)
    a, b = data(rng, (100, 300), dtype), data(rng, (300, 70), dtype)
    cases = [(a, b), (np.ascontiguousarray(a.T).T, b), (a, np.ascontiguousarray(b.T).T),
             (a[5:97], b[:, 3:60]), (data(rng, (3, 300), dtype), b)]
    with single_threaded_blas():
        for threads in (1, 2, 3):
            for x, y in cases:
                m = len(x)
                if m // threads < 2:   # numpy multiplies a single row by gemv, not gemm
                    continue
                want = np.concatenate([np.matmul(x[m * t // threads:m * (t + 1) // threads], y)
                                       for t in range(threads)])
                out = np.full((m, y.shape[1]), np.nan, dtype=dtype)
                assert compiled.gemm_rows(x, y, out, threads)
                np.testing.assert_array_equal(out, want)
                close(out, np.matmul(x, y), dtype)


def test_gemm_rows_declines_what_cblas_cannot_take():
    """Strided rows, mixed dtypes, integers and a non-contiguous output are left to numpy
    (gemm_rows returns False and writes nothing); matmul still gives numpy's values."""
    rng = np.random.default_rng(12)
    a, b = data(rng, (64, 400), np.float32), data(rng, (400, 48), np.float32)
    out = np.zeros((64, 48), np.float32)
    assert not compiled.gemm_rows(a[:, ::2], b[::2], out, 2)
    assert not compiled.gemm_rows(a, b.astype(np.float64), out, 2)
    assert not compiled.gemm_rows(a.astype(np.int64), b.astype(np.int64), out.astype(np.int64), 2)
    assert not compiled.gemm_rows(a, b, np.zeros((48, 64), np.float32).T, 2)
    assert not out.any()
    with pytest.raises(ValueError, match="does not fit"):
        compiled.gemm_rows(a, b, np.zeros((64, 47), np.float32), 2)
    close(netspec.kernels.matmul(a[:, ::2], b[::2]), np.matmul(a[:, ::2], b[::2]), np.float32)


@pytest.fixture
def light_pass_threshold():
    """Set the compiled module's light-pass threshold for one test (restored after it)."""
    old = compiled._set_light_pass_min(1)
    compiled._set_light_pass_min(old)
    yield compiled._set_light_pass_min
    compiled._set_light_pass_min(old)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(9, 3, 5, 5), (33, 8, 12, 12), (50, 16, 14, 14)])
def test_light_passes_give_the_same_bits_on_one_thread_and_on_the_team(light_pass_threshold, dtype, shape):
    """Batchnorm, ReLU, pooling and global average pooling hand their rows, planes or sample
    blocks out in chunks to whichever thread asks first (csrc/team.h). Run once on one thread
    and once on the whole team with every pass split into many chunks (the threshold forced to
    one element), every output must be identical bit for bit: which thread computed a chunk
    never changes a value. Each run is also held to the numpy reference."""
    rng = np.random.default_rng(21)
    x = (1 + 2 * rng.standard_normal(shape)).astype(dtype)
    x.reshape(-1)[::13] = 0.0
    dout = data(rng, shape, dtype)
    x3, d3 = x.reshape(shape[0], shape[1], -1), dout.reshape(shape[0], shape[1], -1)
    C = shape[1]
    gamma, beta = data(rng, (C,), dtype), data(rng, (C,), dtype)

    def run():
        mean, var = compiled.batchnorm_stats(x3)
        inv = (1 / np.sqrt(var + 1e-5)).astype(dtype)
        out, xhat = compiled.batchnorm_forward(x3, gamma, beta, mean, inv, relu=True)
        res = {"mean": mean, "var": var, "bn_out": out, "xhat": xhat}
        for train in (True, False):
            for fused in (out, None):
                grads = compiled.batchnorm_backward(d3, xhat, gamma, inv, train, fused)
                for name, g in zip(("dx", "dgamma", "dbeta"), grads):
                    res[f"bn_{name}_{train}_{fused is None}"] = g
        res["relu"] = compiled.relu_forward(x)
        res["relu_dx"] = compiled.relu_backward(dout, res["relu"])
        res["max2"], arg2 = compiled.maxpool2d_forward(x, 2, 2, 2, 0)
        res["max2_dx"] = compiled.maxpool2d_backward(res["max2"], arg2, x.shape, 2, 2, 2, 0)
        res["max3"], arg3 = compiled.maxpool2d_forward(x, 3, 3, 2, 1)
        res["max3_dx"] = compiled.maxpool2d_backward(res["max3"], arg3, x.shape, 3, 3, 2, 1)
        res["max3_infer"] = compiled.maxpool2d_infer(x, 3, 3, 2, 1)
        res["avg"] = compiled.avgpool2d_forward(x, 3, 3, 2, 1)
        res["avg_dx"] = compiled.avgpool2d_backward(res["avg"], x.shape, 3, 3, 2, 1)
        res["gap"] = compiled.global_avgpool_forward(x)
        return res

    light_pass_threshold(2**62)
    alone = run()
    light_pass_threshold(1)
    team = run()
    for name in alone:
        np.testing.assert_array_equal(team[name], alone[name], err_msg=name)
    mean, var = ref.batchnorm_stats(x3)
    close(alone["mean"], mean, dtype, 10)
    close(alone["var"], var, dtype, 10)
    inv = (1 / np.sqrt(alone["var"] + 1e-5)).astype(dtype)
    out, xhat = ref.batchnorm_forward(x3, gamma, beta, alone["mean"], inv, True)
    close(alone["bn_out"], out, dtype, 10)
    for name, want in zip(("dx", "dgamma", "dbeta"),
                          ref.batchnorm_backward(d3, alone["xhat"], gamma, inv, True, alone["bn_out"])):
        close(alone[f"bn_{name}_True_False"], want, dtype, shape[0] * shape[2] * shape[3])
    np.testing.assert_array_equal(alone["relu"], ref.relu_forward(x))
    np.testing.assert_array_equal(alone["max2"], ref.maxpool2d_forward(x, 2, 2, 2, 0)[0])
    np.testing.assert_array_equal(alone["max3_infer"], ref.maxpool2d_forward(x, 3, 3, 2, 1)[0])
    close(alone["avg_dx"], ref.avgpool2d_backward(alone["avg"], x.shape, 3, 3, 2, 1), dtype)
