"""Every compiled instruction-set variant this CPU runs, fuzzed against the numpy reference.

netspec.kernels loads one variant (the best the CPU supports, capped by NETSPEC_ISA)
and the rest of the suite tests that one. Here each variant module (``_compiled``,
``_compiled_avx2``, ``_compiled_avx512``) is imported directly and every kernel it
exports is run against ``_numpy`` on hypothesis-drawn shapes, whatever NETSPEC_ISA
or NETSPEC_PUREPYTHON say: an AVX-512 tile bug fails on an AVX-512 machine even in
the run that uses AVX2 or numpy. Convolutions get channel counts that are not
multiples of 16, odd widths, strides 1-2, padding 0-2, kernels 1-5 and batches 1-5,
plus the layer shapes of specs/ (every tile plan those networks use).

A variant the CPU cannot run is skipped with the features it lacks as the reason. One
the CPU could run that is not built fails under NETSPEC_REQUIRE_EXTRAS=1 or
NETSPEC_REQUIRE_CYTHON=1 (a CI build with a C compiler builds all of them) and is
skipped otherwise.

Tolerances: convolution outputs are sums of products, so each is compared with an
absolute tolerance of 1e-5 (float32) or 1e-12 (float64) times the same sum over
absolute values; a missing or extra term is far larger than that. Pooling maxima,
ReLU and float16 rounding must match bit for bit.
"""
import functools
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from netspec import kernels
from netspec.kernels import numpy_kernels as ref

from extras import REQUIRE_EXTRAS

REQUIRE_BUILD = REQUIRE_EXTRAS or os.environ.get("NETSPEC_REQUIRE_CYTHON", "") not in ("", "0")
DTYPES = [np.float32, np.float64]
REL = {np.float32: 1e-5, np.float64: 1e-12}
# bounded so that the file runs in well under 20 s with three variants
SETTINGS = settings(max_examples=int(os.environ.get("NETSPEC_FUZZ_EXAMPLES", 25)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _variant_params():
    """Every known variant; those this CPU cannot run are skipped with the missing features."""
    features = kernels.cpu_features()
    params = []
    for name, (_, needs) in kernels.VARIANTS.items():
        missing = [f for f in needs if not features.get(f)]
        marks = [pytest.mark.skip(reason=f"this CPU lacks {', '.join(missing)}")] if missing else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


VARIANT_PARAMS = _variant_params()


@functools.lru_cache(maxsize=None)
def _import(isa):
    name = "netspec.kernels._compiled" + kernels.VARIANTS[isa][0]
    try:
        return importlib.import_module(name), None
    except ModuleNotFoundError as exc:
        return None, f"{name} is not built ({exc})"


def variant(isa):
    """The module of one variant the CPU runs; not built: a failure if the run requires builds."""
    module, why = _import(isa)
    if module is None:
        if REQUIRE_BUILD:
            pytest.fail(f"{why}; NETSPEC_REQUIRE_EXTRAS/NETSPEC_REQUIRE_CYTHON ask for every variant "
                        "this CPU runs", pytrace=False)
        pytest.skip(why)
    return module


def data(rng, shape, dtype, size=1.0):
    return (rng.standard_normal(shape) * size).astype(dtype)


def same(got, want):
    assert got.dtype == want.dtype, f"dtype: expected {want.dtype}, found {got.dtype}"
    assert got.shape == want.shape, f"shape: expected {want.shape}, found {got.shape}"
    np.testing.assert_array_equal(got, want)


def close(got, want, dtype, magnitude):
    """|got - want| <= rel * magnitude, elementwise (magnitude: the sum of |terms|, or a scale)."""
    assert got.dtype == want.dtype, f"dtype: expected {want.dtype}, found {got.dtype}"
    assert got.shape == want.shape, f"shape: expected {want.shape}, found {got.shape}"
    bound = REL[dtype] * np.maximum(magnitude, np.finfo(dtype).tiny)
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), (f"at {worst}: got {got[worst]!r}, want {want[worst]!r}, "
                                  f"error {err[worst]:.3g} > bound {bound[worst]:.3g}")


def check_conv(mod, x, W, b, stride, pad, dout_size=1.0, seed=0):
    """One variant's conv2d forward and backward (dx, dW, db) against the reference."""
    dtype = x.dtype.type
    out = mod.conv2d_forward(x, W, b, stride, pad)
    want = ref.conv2d_forward(x, W, b, stride, pad)
    close(out, want, dtype, ref.conv2d_forward(np.abs(x), np.abs(W), None if b is None else np.abs(b),
                                               stride, pad))
    # a 2x2 max pool fused into the conv (with its ReLU or not): the pool of the variant's own
    # conv bit for bit, whichever path runs it (direct, Winograd, im2col, pointwise)
    relu = seed % 2 == 0
    pooled = mod.conv2d_forward(x, W, b, stride, pad, relu=relu, pool=(2, 2, 2, 0))
    same(pooled, mod.maxpool2d_infer(mod.conv2d_forward(x, W, b, stride, pad, relu=relu), 2, 2, 2, 0))
    dout = data(np.random.default_rng(seed), out.shape, dtype, dout_size)
    magnitudes = ref.conv2d_backward(np.abs(dout), np.abs(x), np.abs(W), stride, pad)
    for name, got, want_, size in zip(("dx", "dW", "db"), mod.conv2d_backward(dout, x, W, stride, pad),
                                      ref.conv2d_backward(dout, x, W, stride, pad), magnitudes):
        try:
            close(got, want_, dtype, size)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    dx, dW, db = mod.conv2d_backward(dout, x, W, stride, pad, need_dx=False)
    assert dx is None
    close(dW, ref.conv2d_backward(dout, x, W, stride, pad)[1], dtype, magnitudes[1])


@st.composite
def conv_cases(draw):
    """(N, C, H, W, F, kh, kw, stride, pad), with an output of at least one pixel."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride, pad = draw(st.integers(1, 3)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * pad), 12))
    W = draw(st.integers(max(1, kw - 2 * pad), 33))
    return (draw(st.integers(1, 5)), draw(st.integers(1, 40)), H, W, draw(st.integers(1, 70)),
            kh, kw, stride, pad)


@pytest.mark.parametrize("isa", VARIANT_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(case=conv_cases(), bias=st.booleans(), size=st.sampled_from([1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_conv2d_fuzz(isa, dtype, case, bias, size, seed):
    """float32 runs the direct kernels (forward and dW; d/dx from 8 input channels: at stride 1 as
    one forward convolution, at strides 2 and 3 one per phase, some phases reached by no tap),
    float64 the im2col path."""
    mod = variant(isa)
    N, C, H, W, F, kh, kw, stride, pad = case
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), dtype, size)
    Wt = data(rng, (F, C, kh, kw), dtype)
    b = data(rng, (F,), dtype, size) if bias else None
    check_conv(mod, x, Wt, b, stride, pad, dout_size=1.0 / size, seed=seed)


# The conv layers of specs/ (deep_convnet, resnet_fashion, simple_convnet) at batch 2, and their
# d/dx as forward convolutions: the tile plans the networks use, 1->16 .. 128 channels, 28x28 .. 4x4.
NETWORK_LAYERS = [
    # C, H, F, k, stride, pad
    (1, 28, 16, 3, 1, 1), (16, 28, 16, 3, 1, 1), (16, 14, 32, 3, 1, 1), (32, 14, 32, 3, 1, 2),
    (32, 7, 64, 3, 1, 1), (64, 7, 64, 3, 1, 1),                                   # deep_convnet
    (1, 28, 32, 3, 1, 1), (32, 14, 32, 3, 1, 1), (32, 14, 64, 3, 2, 1), (32, 14, 64, 1, 2, 0),
    (64, 7, 128, 3, 2, 1), (64, 7, 128, 1, 2, 0), (128, 4, 128, 3, 1, 1),          # resnet_fashion
    (1, 28, 30, 5, 1, 0),                                                          # simple_convnet
]


@pytest.mark.parametrize("isa", VARIANT_PARAMS)
@pytest.mark.parametrize("layer", NETWORK_LAYERS, ids=lambda l: "C{}x{}-F{}-k{}s{}p{}".format(*l))
def test_conv2d_network_layers(isa, layer):
    mod = variant(isa)
    C, H, F, k, stride, pad = layer
    rng = np.random.default_rng(C * 1000 + F)
    x = data(rng, (2, C, H, H), np.float32)
    check_conv(mod, x, data(rng, (F, C, k, k), np.float32), data(rng, (F,), np.float32), stride, pad)


@st.composite
def windows(draw):
    """(N, C, H, W, kh, kw, stride, pad) for pooling and im2col: pad < kernel, output >= 1 pixel."""
    kh, kw, stride = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    pad = draw(st.integers(0, min(kh, kw) - 1))
    H = draw(st.integers(max(1, kh - 2 * pad), 13))
    W = draw(st.integers(max(1, kw - 2 * pad), 13))
    return draw(st.integers(1, 3)), draw(st.integers(1, 19)), H, W, kh, kw, stride, pad


@pytest.mark.parametrize("isa", VARIANT_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(win=windows(), seed=st.integers(0, 2**16), ties=st.booleans())
def test_windows_fuzz(isa, dtype, win, seed, ties):
    """im2col/col2im, max pooling (first maximum on ties) and average pooling, both directions."""
    mod = variant(isa)
    N, C, H, W, kh, kw, stride, pad = win
    rng = np.random.default_rng(seed)
    x = data(rng, (N, C, H, W), dtype)
    if ties:
        x = np.round(x).astype(dtype)
    col = mod.im2col(x, kh, kw, stride, pad)
    same(col, ref.im2col(x, kh, kw, stride, pad))
    dcol = data(rng, col.shape, dtype)
    close(mod.col2im(dcol, x.shape, kh, kw, stride, pad), ref.col2im(dcol, x.shape, kh, kw, stride, pad),
          dtype, ref.col2im(np.abs(dcol), x.shape, kh, kw, stride, pad))
    out, arg = mod.maxpool2d_forward(x, kh, kw, stride, pad)
    out_r, arg_r = ref.maxpool2d_forward(x, kh, kw, stride, pad)
    same(out, out_r)
    same(arg, arg_r)
    dout = data(rng, out.shape, dtype)
    close(mod.maxpool2d_backward(dout, arg, x.shape, kh, kw, stride, pad),
          ref.maxpool2d_backward(dout, arg_r, x.shape, kh, kw, stride, pad), dtype,
          ref.maxpool2d_backward(np.abs(dout), arg_r, x.shape, kh, kw, stride, pad))
    avg = mod.avgpool2d_forward(x, kh, kw, stride, pad)
    close(avg, ref.avgpool2d_forward(x, kh, kw, stride, pad), dtype,
          ref.avgpool2d_forward(np.abs(x), kh, kw, stride, pad))
    close(mod.avgpool2d_backward(dout, x.shape, kh, kw, stride, pad),
          ref.avgpool2d_backward(dout, x.shape, kh, kw, stride, pad), dtype,
          ref.avgpool2d_backward(np.abs(dout), x.shape, kh, kw, stride, pad))


@pytest.mark.parametrize("isa", VARIANT_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(shape=st.tuples(st.integers(1, 5), st.integers(1, 20), st.integers(1, 70)), train=st.booleans(),
       seed=st.integers(0, 2**16))
def test_relu_and_batchnorm_fuzz(isa, dtype, shape, train, seed):
    mod = variant(isa)
    rng = np.random.default_rng(seed)
    x = data(rng, shape, dtype)
    x.reshape(-1)[::5] = 0.0
    out = mod.relu_forward(x)
    same(out, ref.relu_forward(x))
    dout = data(rng, shape, dtype)
    same(mod.relu_backward(dout, out), ref.relu_backward(dout, out))
    x = 3 + 2 * x
    m = shape[0] * shape[2]
    mean, var = mod.batchnorm_stats(x)
    mean_r, var_r = ref.batchnorm_stats(x)
    close(mean, mean_r, dtype, 10 * np.abs(x).max())
    close(var, var_r, dtype, 10 * (x * x).max())
    gamma, beta = data(rng, (shape[1],), dtype), data(rng, (shape[1],), dtype)
    inv_std = (1 / np.sqrt(var_r + 1e-5)).astype(dtype)
    y, xhat = mod.batchnorm_forward(x, gamma, beta, mean_r, inv_std)
    y_r, xhat_r = ref.batchnorm_forward(x, gamma, beta, mean_r, inv_std)
    close(xhat, xhat_r, dtype, 10 * np.abs(xhat_r).max() + 10)
    close(y, y_r, dtype, 10 * np.abs(y_r).max() + 10)
    scale = m * float(np.abs(dout).max() * (np.abs(xhat_r).max() + 1) * (np.abs(gamma * inv_std).max() + 1))
    for got, want in zip(mod.batchnorm_backward(dout, xhat_r, gamma, inv_std, train),
                         ref.batchnorm_backward(dout, xhat_r, gamma, inv_std, train)):
        close(got, want, dtype, scale)


OPTIMIZERS = {   # name: (hyperparameters, number of state arrays)
    "sgd_update": (dict(lr=0.05), 0),
    "momentum_update": (dict(lr=0.05, momentum=0.9), 1),
    "nesterov_update": (dict(lr=0.05, momentum=0.9), 1),
    "adagrad_update": (dict(lr=0.05, eps=1e-7), 1),
    "rmsprop_update": (dict(lr=0.01, decay=0.99, eps=1e-7), 1),
    "adam_update": (dict(lr_t=0.001, beta1=0.9, beta2=0.999, eps=1e-7), 2),
}


@pytest.mark.parametrize("isa", VARIANT_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(n=st.integers(1, 200) | st.just(70001), weight_decay=st.sampled_from([0.0, 1e-4]),
       steps=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_optimizer_updates_fuzz(isa, dtype, n, weight_decay, steps, seed):
    """All six updates, in place, a few steps each, against the reference."""
    mod = variant(isa)
    rng = np.random.default_rng(seed)
    for name, (hyper, nstates) in OPTIMIZERS.items():
        p = data(rng, (n,), dtype)
        states = [np.abs(data(rng, (n,), dtype)) for _ in range(nstates)]
        p_r, states_r = p.copy(), [s.copy() for s in states]
        for _ in range(steps):
            g = data(rng, (n,), dtype)
            getattr(mod, name)(p, g, *states, **hyper, weight_decay=weight_decay)
            getattr(ref, name)(p_r, g, *states_r, **hyper, weight_decay=weight_decay)
        for got, want in zip([p] + states, [p_r] + states_r):
            try:
                close(got, want, dtype, np.abs(want) + 1)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None


@pytest.mark.parametrize("isa", VARIANT_PARAMS)
@SETTINGS
@given(n=st.integers(0, 300) | st.just(70003), seed=st.integers(0, 2**16))
def test_round_half_fuzz(isa, n, seed):
    """float16 rounding in place, bit for bit numpy's cast (the F16C loop and its scalar tail)."""
    mod = variant(isa)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-30, 15, n))).astype(np.float32)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 65504.0, 65520.0, 1e-8, 6e-8, 2049.0], np.float32)
    k = min(n, len(special))
    x[rng.permutation(n)[:k]] = special[:k]
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    got = mod.round_half(x.copy())
    same(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_every_variant_exports_every_kernel():
    """Each built variant this CPU runs has every kernel name of the reference."""
    features = kernels.cpu_features()
    checked = 0
    for isa, (_, needs) in kernels.VARIANTS.items():
        if all(features.get(f) for f in needs) and _import(isa)[0] is not None:
            missing = [name for name in ref.__all__ if not hasattr(_import(isa)[0], name)]
            assert not missing, f"{isa} lacks {missing}"
            checked += 1
    if not checked:
        pytest.skip("no compiled variant is built")


@pytest.mark.parametrize("isa", VARIANT_PARAMS)
def test_isa_cap_loads_that_variant(isa):
    """NETSPEC_ISA=<variant> loads that variant (the best one at or below the cap), and
    backend_info() reports it."""
    variant(isa)
    env = {k: v for k, v in os.environ.items() if k != "NETSPEC_PUREPYTHON"}
    env["NETSPEC_ISA"] = isa
    out = subprocess.run(
        [sys.executable, "-c", "import netspec.kernels as k; k.load(); "
         "print(k.ISA, k.compiled_module().__name__, k.backend_info()['isa'])"],
        env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [isa, "netspec.kernels._compiled" + kernels.VARIANTS[isa][0], isa]
