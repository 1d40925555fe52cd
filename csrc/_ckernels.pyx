# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: the same names and signatures as netspec/kernels/_numpy.py.

Design: every kernel is a thin Python wrapper that checks dtypes and
allocates outputs, around a ``nogil`` core written once for float32 and
float64 (Cython's fused ``floating``). Inputs of any other dtype, or with
mixed dtypes, are handed to the numpy reference so results never silently
change type.

Convolution is im2col + one GEMM per *batch chunk*: a chunk of samples is
unrolled into a "wide" column buffer (C*kh*kw, nb*OH*OW) of about 4 MB, so
it stays in the last-level cache, multiplied by numpy's matmul (BLAS, which
uses every core), and the (FN, nb*OH*OW) product is copied into the NCHW
output together with the bias. Forward keeps only a reference to its input
in the layer's ``ws``; backward recomputes the columns chunk by chunk instead
of keeping the full (N, C*kh*kw, OH*OW) array alive. The chunk buffers are
thread-local and shared by all layers, so they are allocated once and reused
across layers and steps (fresh large arrays cost page faults comparable to
the arithmetic). 1x1 convolutions with stride 1 and no padding skip im2col.

Pooling runs direct loops over windows. Optimizer updates are one fused pass
over contiguous parameters, with the same operation order as the reference.
Pooling, standalone im2col/col2im and the optimizer updates split their
work across OpenMP threads (``prange``) when built with OpenMP and the work
is large enough; the loops inside a conv chunk stay serial, because the
GEMMs around them already use every core.
"""
import os
import threading

import numpy as np

cimport cython
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset, memcpy
from libc.math cimport sqrt, sqrtf, INFINITY
from libc.stdint cimport int64_t

from netspec.kernels import _numpy as _ref

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int netspec_has_openmp(void) { return 1; }
    static int netspec_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int netspec_has_openmp(void) { return 0; }
    static int netspec_max_threads(void) { return 1; }
    #endif
    """
    int netspec_has_openmp() nogil
    int netspec_max_threads() nogil
    long CYTHON_HEX_VERSION  # defined by the Cython that generated this file

__all__ = list(_ref.__all__) + ["backend_info"]

# Below this many elements of work a loop runs on one thread: waking the
# OpenMP team costs a few microseconds, more than the loop itself.
cdef Py_ssize_t PAR_MIN = 1 << 15
# Target size of one chunk of conv columns: large enough for an efficient
# GEMM, small enough to stay in the last-level cache.
cdef Py_ssize_t CHUNK_BYTES = 4 << 20

cdef int _nthreads(Py_ssize_t work) noexcept nogil:
    if work < PAR_MIN:
        return 1
    return netspec_max_threads()


def _tuning(chunk_bytes=None, par_min=None):
    """Read or set (chunk_bytes, par_min); for benchmarks and tests, not an API."""
    global CHUNK_BYTES, PAR_MIN
    if chunk_bytes is not None:
        CHUNK_BYTES = chunk_bytes
    if par_min is not None:
        PAR_MIN = par_min
    return CHUNK_BYTES, PAR_MIN


def backend_info():
    """What the compiled backend was built with: OpenMP support and thread count."""
    v = CYTHON_HEX_VERSION
    return {
        "openmp": bool(netspec_has_openmp()),
        "openmp_max_threads": int(netspec_max_threads()),
        "compiled_with": f"Cython {v >> 24}.{(v >> 16) & 0xff}.{(v >> 8) & 0xff}",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }


cdef inline floating _sqrt(floating v) noexcept nogil:
    """sqrt in the argument's own precision (float stays float, as in numpy)."""
    if floating is float:
        return sqrtf(v)
    else:
        return sqrt(v)


cdef inline Py_ssize_t _out_size(Py_ssize_t size, Py_ssize_t k, Py_ssize_t stride,
                                 Py_ssize_t pad) noexcept nogil:
    return (size + 2 * pad - k) // stride + 1


cdef inline Py_ssize_t _win_lo(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad) noexcept nogil:
    """First kernel offset of output o whose input o*stride + i - pad is >= 0."""
    return pad - o * stride if pad > o * stride else 0


cdef inline Py_ssize_t _win_hi(Py_ssize_t o, Py_ssize_t stride, Py_ssize_t pad,
                               Py_ssize_t size, Py_ssize_t k) noexcept nogil:
    """One past the last kernel offset of output o whose input is < size."""
    return size + pad - o * stride if size + pad - o * stride < k else k


cdef inline void _valid_range(Py_ssize_t j, Py_ssize_t stride, Py_ssize_t pad,
                              Py_ssize_t W, Py_ssize_t OW,
                              Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Output positions ow in [lo, hi) whose input column ow*stride + j - pad is inside [0, W)."""
    cdef Py_ssize_t a = 0, b
    if pad > j:
        a = (pad - j + stride - 1) // stride
    if W + pad - j <= 0:
        b = 0
    else:
        b = (W + pad - j - 1) // stride + 1
    if b > OW:
        b = OW
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b


def _supported(*arrays):
    """True when all arrays share one dtype the compiled loops handle."""
    dt = arrays[0].dtype
    if dt != np.float32 and dt != np.float64:
        return False
    for a in arrays[1:]:
        if a is not None and a.dtype != dt:
            return False
    return True


def _check_window(kh, kw, stride, pad):
    if kh < 1 or kw < 1 or stride < 1 or pad < 0:
        raise ValueError(f"bad window: kh={kh}, kw={kw}, stride={stride}, pad={pad}")


# --- im2col / col2im ---------------------------------------------------------

cdef void _im2col_plane(const floating* x, floating* col, Py_ssize_t row_stride,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t stride, Py_ssize_t pad,
                        Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Unroll one (H, W) plane into kh*kw column rows, row r at col + r*row_stride."""
    cdef Py_ssize_t i, j, oh, ow, h, lo, hi
    cdef floating* dst
    cdef const floating* src
    for i in range(kh):
        for j in range(kw):
            _valid_range(j, stride, pad, W, OW, &lo, &hi)
            for oh in range(OH):
                dst = col + (i * kw + j) * row_stride + oh * OW
                h = oh * stride + i - pad
                if h < 0 or h >= H or lo == hi:
                    for ow in range(OW):
                        dst[ow] = 0
                    continue
                src = x + h * W + j - pad
                for ow in range(lo):
                    dst[ow] = 0
                if stride == 1:
                    for ow in range(lo, hi):
                        dst[ow] = src[ow]
                else:
                    for ow in range(lo, hi):
                        dst[ow] = src[ow * stride]
                for ow in range(hi, OW):
                    dst[ow] = 0


cdef void _col2im_plane(const floating* col, floating* x, Py_ssize_t row_stride,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t stride, Py_ssize_t pad,
                        Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Adjoint of _im2col_plane: add kh*kw column rows back into a zeroed (H, W) plane."""
    cdef Py_ssize_t i, j, oh, ow, h, lo, hi
    cdef const floating* src
    cdef floating* dst
    for i in range(kh):
        for j in range(kw):
            _valid_range(j, stride, pad, W, OW, &lo, &hi)
            for oh in range(OH):
                h = oh * stride + i - pad
                if h < 0 or h >= H:
                    continue
                src = col + (i * kw + j) * row_stride + oh * OW
                dst = x + h * W + j - pad
                if stride == 1:
                    for ow in range(lo, hi):
                        dst[ow] += src[ow]
                else:
                    for ow in range(lo, hi):
                        dst[ow * stride] += src[ow]


cdef void _im2col_batch(const floating* x, floating* col, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t OH, Py_ssize_t OW,
                        Py_ssize_t sample_stride, Py_ssize_t row_stride,
                        bint parallel) noexcept nogil:
    """x (N, C, H, W) -> col with row (c, i, j) of sample n at n*sample_stride + row*row_stride."""
    cdef Py_ssize_t nc, n, c, K = C * kh * kw
    cdef int nt = _nthreads(N * K * OH * OW) if parallel else 1
    for nc in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = nc // C
        c = nc - n * C
        _im2col_plane(x + nc * H * W, col + n * sample_stride + c * kh * kw * row_stride,
                      row_stride, H, W, kh, kw, stride, pad, OH, OW)


cdef void _col2im_batch(const floating* col, floating* x, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t OH, Py_ssize_t OW,
                        Py_ssize_t sample_stride, Py_ssize_t row_stride,
                        bint parallel) noexcept nogil:
    """Adjoint of _im2col_batch; x is overwritten (each plane zeroed first)."""
    cdef Py_ssize_t nc, n, c, K = C * kh * kw
    cdef int nt = _nthreads(N * K * OH * OW) if parallel else 1
    for nc in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = nc // C
        c = nc - n * C
        memset(x + nc * H * W, 0, H * W * sizeof(floating))
        _col2im_plane(col + n * sample_stride + c * kh * kw * row_stride, x + nc * H * W,
                      row_stride, H, W, kh, kw, stride, pad, OH, OW)


cdef void _im2col_typed(floating[:, :, :, ::1] x, floating[:, :, ::1] col,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                        Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = OH * OW
    if N == 0 or C == 0 or P == 0:
        return
    _im2col_batch(&x[0, 0, 0, 0], &col[0, 0, 0], N, C, x.shape[2], x.shape[3],
                  kh, kw, stride, pad, OH, OW, C * kh * kw * P, P, True)


cdef void _col2im_typed(floating[:, :, ::1] col, floating[:, :, :, ::1] x,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                        Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = OH * OW
    if N == 0 or C == 0 or x.shape[2] * x.shape[3] == 0:
        return
    _col2im_batch(&col[0, 0, 0], &x[0, 0, 0, 0], N, C, x.shape[2], x.shape[3],
                  kh, kw, stride, pad, OH, OW, C * kh * kw * P, P, True)


def im2col(x, kh, kw, stride, pad):
    """x (N, C, H, W) -> col (N, C*kh*kw, OH*OW)."""
    if not _supported(x):
        return _ref.im2col(x, kh, kw, stride, pad)
    _check_window(kh, kw, stride, pad)
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = _out_size(H, kh, stride, pad), _out_size(W, kw, stride, pad)
    col = np.empty((N, C * kh * kw, OH * OW), dtype=x.dtype)
    if x.dtype == np.float32:
        _im2col_typed[float](x, col, kh, kw, stride, pad, OH, OW)
    else:
        _im2col_typed[double](x, col, kh, kw, stride, pad, OH, OW)
    return col


def col2im(col, x_shape, kh, kw, stride, pad):
    """Adjoint of im2col: col (N, C*kh*kw, OH*OW) -> dx (N, C, H, W), overlaps summed."""
    if not _supported(col):
        return _ref.col2im(col, x_shape, kh, kw, stride, pad)
    _check_window(kh, kw, stride, pad)
    N, C, H, W = x_shape
    OH, OW = _out_size(H, kh, stride, pad), _out_size(W, kw, stride, pad)
    col = np.ascontiguousarray(col).reshape(N, C * kh * kw, OH * OW)
    if col.size == 0:
        return np.zeros((N, C, H, W), dtype=col.dtype)
    x = np.empty((N, C, H, W), dtype=col.dtype)
    if col.dtype == np.float32:
        _col2im_typed[float](col, x, kh, kw, stride, pad, OH, OW)
    else:
        _col2im_typed[double](col, x, kh, kw, stride, pad, OH, OW)
    return x


# --- convolution -------------------------------------------------------------

cdef void _scatter_nchw(floating[:, ::1] wide, floating[:, :, ::1] out, Py_ssize_t n0,
                        const floating* b) noexcept nogil:
    """out[n0 + n, f, :] = wide[f, n*P:(n+1)*P] + b[f] for the nb samples of a chunk."""
    cdef Py_ssize_t F = wide.shape[0], P = out.shape[2], nb = wide.shape[1] // P
    cdef Py_ssize_t nf, n, f, p
    cdef floating bias
    cdef floating* dst
    cdef const floating* src
    for nf in range(nb * F):
        n = nf // F
        f = nf - n * F
        dst = &out[n0 + n, f, 0]
        src = &wide[f, n * P]
        if b == NULL:
            memcpy(dst, src, P * sizeof(floating))
        else:
            bias = b[f]
            for p in range(P):
                dst[p] = src[p] + bias


cdef void _gather_nchw(floating[:, :, ::1] dout, floating[:, ::1] wide,
                       Py_ssize_t n0) noexcept nogil:
    """wide[f, n*P:(n+1)*P] = dout[n0 + n, f, :] for the nb samples of a chunk."""
    cdef Py_ssize_t F = wide.shape[0], P = dout.shape[2], nb = wide.shape[1] // P
    cdef Py_ssize_t n, f
    for f in range(F):
        for n in range(nb):
            memcpy(&wide[f, n * P], &dout[n0 + n, f, 0], P * sizeof(floating))


_local = threading.local()


def _buffer(name, Py_ssize_t size, dtype):
    """Flat thread-local scratch of `size` elements, grown on demand and never shrunk.

    All conv layers share it: within a thread they run one at a time, and no
    scratch content has to survive from forward to backward.
    """
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    key = (name, np.dtype(dtype).char)
    b = bufs.get(key)
    if b is None or b.shape[0] < size:
        b = bufs[key] = np.empty(max(size, 1), dtype=dtype)
    return b[:size]


def _chunk_samples(Py_ssize_t N, Py_ssize_t K, Py_ssize_t P, Py_ssize_t itemsize):
    """Samples per chunk so that one chunk of columns is about CHUNK_BYTES."""
    return max(1, min(N, CHUNK_BYTES // max(1, K * P * itemsize)))


def _conv_chunks(Py_ssize_t N, Py_ssize_t nb):
    cdef Py_ssize_t n0
    for n0 in range(0, N, nb):
        yield n0, min(nb, N - n0)


def _im2col_chunk(x, col, Py_ssize_t n0, Py_ssize_t nbc, Py_ssize_t kh, Py_ssize_t kw,
                  Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t OH, Py_ssize_t OW):
    """Samples n0..n0+nbc of x into the wide layout col (C*kh*kw, nbc*OH*OW)."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3], P = OH * OW
    cdef float[:, :, :, ::1] x32
    cdef double[:, :, :, ::1] x64
    cdef float[:, ::1] c32
    cdef double[:, ::1] c64
    if x.dtype == np.float32:
        x32 = x
        c32 = col
        with nogil:
            _im2col_batch(&x32[n0, 0, 0, 0], &c32[0, 0], nbc, C, H, W, kh, kw,
                          stride, pad, OH, OW, P, nbc * P, False)
    else:
        x64 = x
        c64 = col
        with nogil:
            _im2col_batch(&x64[n0, 0, 0, 0], &c64[0, 0], nbc, C, H, W, kh, kw,
                          stride, pad, OH, OW, P, nbc * P, False)


def _col2im_chunk(col, dx, Py_ssize_t n0, Py_ssize_t nbc, Py_ssize_t kh, Py_ssize_t kw,
                  Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t OH, Py_ssize_t OW):
    cdef Py_ssize_t C = dx.shape[1], H = dx.shape[2], W = dx.shape[3], P = OH * OW
    cdef float[:, :, :, ::1] x32
    cdef double[:, :, :, ::1] x64
    cdef float[:, ::1] c32
    cdef double[:, ::1] c64
    if dx.dtype == np.float32:
        x32 = dx
        c32 = col
        with nogil:
            _col2im_batch(&c32[0, 0], &x32[n0, 0, 0, 0], nbc, C, H, W, kh, kw,
                          stride, pad, OH, OW, P, nbc * P, False)
    else:
        x64 = dx
        c64 = col
        with nogil:
            _col2im_batch(&c64[0, 0], &x64[n0, 0, 0, 0], nbc, C, H, W, kh, kw,
                          stride, pad, OH, OW, P, nbc * P, False)


def _scatter(prod, out3, Py_ssize_t n0, b):
    cdef float[:] b32
    cdef double[:] b64
    cdef float[:, ::1] p32
    cdef double[:, ::1] p64
    cdef float[:, :, ::1] o32
    cdef double[:, :, ::1] o64
    cdef float* bp32 = NULL
    cdef double* bp64 = NULL
    if out3.dtype == np.float32:
        p32 = prod
        o32 = out3
        if b is not None:
            b32 = b
            bp32 = &b32[0]
        with nogil:
            _scatter_nchw(p32, o32, n0, bp32)
    else:
        p64 = prod
        o64 = out3
        if b is not None:
            b64 = b
            bp64 = &b64[0]
        with nogil:
            _scatter_nchw(p64, o64, n0, bp64)


def _gather(dout3, prod, Py_ssize_t n0):
    cdef float[:, ::1] p32
    cdef double[:, ::1] p64
    cdef float[:, :, ::1] d32
    cdef double[:, :, ::1] d64
    if dout3.dtype == np.float32:
        d32 = dout3
        p32 = prod
        with nogil:
            _gather_nchw(d32, p32, n0)
    else:
        d64 = dout3
        p64 = prod
        with nogil:
            _gather_nchw(d64, p64, n0)


def _is_pointwise(kh, kw, stride, pad):
    return kh == 1 and kw == 1 and stride == 1 and pad == 0


def conv2d_forward(x, W, b, stride, pad, ws):
    """out[n, f] = sum_c W[f, c] (*) x[n, c] + b[f]; x (N,C,H,W), W (FN,C,kh,kw), b (FN,) or None."""
    ws.pop("col", None)
    ws["x"] = x
    if not _supported(x, W, b):
        return _ref.conv2d_forward(x, W, b, stride, pad, ws)
    N, C, H, Wd = x.shape
    FN, C2, kh, kw = W.shape
    if C2 != C:
        raise ValueError(f"conv2d: input has {C} channels, filters expect {C2}")
    _check_window(kh, kw, stride, pad)
    OH, OW = _out_size(H, kh, stride, pad), _out_size(Wd, kw, stride, pad)
    P = OH * OW
    x = np.ascontiguousarray(x)
    W2 = np.ascontiguousarray(W).reshape(FN, C * kh * kw)
    if b is not None:
        b = np.ascontiguousarray(b).reshape(FN)
    ws["x"] = x
    out = np.empty((N, FN, OH, OW), dtype=x.dtype)
    out3 = out.reshape(N, FN, P)
    if N == 0 or P == 0 or FN == 0:
        return out
    if _is_pointwise(kh, kw, stride, pad):
        np.matmul(W2, x.reshape(N, C, P), out=out3)
        if b is not None:
            out3 += b.reshape(1, FN, 1)
        return out
    K = C * kh * kw
    nb = _chunk_samples(N, K, P, x.itemsize)
    colbuf = _buffer("col", K * nb * P, x.dtype)
    prodbuf = _buffer("prod", FN * nb * P, x.dtype)
    for n0, nbc in _conv_chunks(N, nb):
        col = colbuf[:K * nbc * P].reshape(K, nbc * P)
        prod = prodbuf[:FN * nbc * P].reshape(FN, nbc * P)
        _im2col_chunk(x, col, n0, nbc, kh, kw, stride, pad, OH, OW)
        np.matmul(W2, col, out=prod)
        _scatter(prod, out3, n0, b)
    return out


def conv2d_backward(dout, x_shape, W, stride, pad, ws):
    """dout (N,FN,OH,OW) -> (dx, dW, db) using the input kept in ws by forward.

    ``ws["need_dx"] = False`` (a network's first layer) skips dx, returned as None.
    """
    x = ws["x"]
    need_dx = ws.get("need_dx", True)
    if not _supported(x, W) or dout.dtype != x.dtype:
        if "col" not in ws:
            FN, C, kh, kw = W.shape
            ws["col"] = _ref.im2col(x, kh, kw, stride, pad)
        return _ref.conv2d_backward(dout, x_shape, W, stride, pad, ws)
    N, FN, OH, OW = dout.shape
    _, C, kh, kw = W.shape
    P, K = OH * OW, C * kh * kw
    N_, C_, H, Wd = x_shape
    if (N_, C_) != (N, C) or tuple(x.shape) != tuple(x_shape):
        raise ValueError(f"conv2d_backward: x_shape {tuple(x_shape)} does not match the "
                         f"forward input {tuple(x.shape)} and dout {tuple(dout.shape)}")
    dout3 = np.ascontiguousarray(dout).reshape(N, FN, P)
    W2 = np.ascontiguousarray(W).reshape(FN, K)
    dx = np.empty((N, C, H, Wd), dtype=x.dtype) if need_dx else None
    dW = np.zeros((FN, K), dtype=x.dtype)
    db = np.zeros(FN, dtype=x.dtype)
    if N == 0 or P == 0 or FN == 0:
        if need_dx:
            dx.fill(0)
        return dx, dW.reshape(W.shape), db
    if _is_pointwise(kh, kw, stride, pad):
        x3 = x.reshape(N, C, P)
        if need_dx:
            np.matmul(W2.T, dout3, out=dx.reshape(N, C, P))
        # dW = sum_n dout_n @ x_n^T, as one GEMM over the (n, p) axis pair
        dW[...] = np.tensordot(dout3, x3, axes=([0, 2], [0, 2]))
        dout3.sum(axis=(0, 2), out=db)
        return dx, dW.reshape(W.shape), db
    nb = _chunk_samples(N, K, P, x.itemsize)
    colbuf = _buffer("col", K * nb * P, x.dtype)
    dcolbuf = _buffer("prod", K * nb * P, x.dtype) if need_dx else None
    gbuf = _buffer("dout", FN * nb * P, x.dtype)
    tmp = np.empty((FN, K), dtype=x.dtype)
    dout3.sum(axis=(0, 2), out=db)  # numpy's pairwise sum: vectorized, as in the reference
    for n0, nbc in _conv_chunks(N, nb):
        col = colbuf[:K * nbc * P].reshape(K, nbc * P)
        gw = gbuf[:FN * nbc * P].reshape(FN, nbc * P)
        _gather(dout3, gw, n0)
        _im2col_chunk(x, col, n0, nbc, kh, kw, stride, pad, OH, OW)
        if n0 == 0:
            np.matmul(gw, col.T, out=dW)
        else:
            np.matmul(gw, col.T, out=tmp)
            dW += tmp
        if need_dx:
            dcol = dcolbuf[:K * nbc * P].reshape(K, nbc * P)
            np.matmul(W2.T, gw, out=dcol)
            _col2im_chunk(dcol, dx, n0, nbc, kh, kw, stride, pad, OH, OW)
    return dx, dW.reshape(W.shape), db


# --- pooling -----------------------------------------------------------------

cdef void _maxpool_fwd(floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                       int64_t[:, :, :, ::1] arg, Py_ssize_t kh, Py_ssize_t kw,
                       Py_ssize_t stride, Py_ssize_t pad) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t nc, oh, ow, i, j, i0, i1, j0, j1, a
    cdef bint take
    cdef floating best, v
    cdef const floating* plane
    cdef const floating* row
    cdef floating* o
    cdef int64_t* ao
    cdef int nt = _nthreads(N * C * OH * OW * kh * kw)
    for nc in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        plane = &x[0, 0, 0, 0] + nc * H * W
        o = &out[0, 0, 0, 0] + nc * OH * OW
        ao = &arg[0, 0, 0, 0] + nc * OH * OW
        for oh in range(OH):
            i0 = _win_lo(oh, stride, pad)
            i1 = _win_hi(oh, stride, pad, H, kh)
            for ow in range(OW):
                j0 = _win_lo(ow, stride, pad)
                j1 = _win_hi(ow, stride, pad, W, kw)
                # padding is -inf: it never wins a strict comparison, and an
                # all -inf window reports index 0 like numpy's argmax.
                # Selects instead of branches: random data mispredicts them.
                best = -INFINITY
                a = 0
                for i in range(i0, i1):
                    row = plane + (oh * stride + i - pad) * W + ow * stride - pad
                    for j in range(j0, j1):
                        v = row[j]
                        take = v > best
                        best = v if take else best
                        a = (i * kw + j) if take else a
                o[oh * OW + ow] = best
                ao[oh * OW + ow] = a


cdef void _maxpool_bwd(floating[:, :, :, ::1] dout, int64_t[:, :, :, ::1] arg,
                       floating[:, :, :, ::1] dx, Py_ssize_t kh, Py_ssize_t kw,
                       Py_ssize_t stride, Py_ssize_t pad) noexcept nogil:
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t nc, n, c, oh, ow, h, w, a
    cdef floating* plane
    cdef int nt = _nthreads(N * C * (OH * OW + H * W))
    for nc in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = nc // C
        c = nc - n * C
        plane = &dx[n, c, 0, 0]
        memset(plane, 0, H * W * sizeof(floating))
        for oh in range(OH):
            for ow in range(OW):
                a = arg[n, c, oh, ow]
                h = oh * stride + a // kw - pad
                w = ow * stride + a % kw - pad
                if h >= 0 and h < H and w >= 0 and w < W:
                    plane[h * W + w] += dout[n, c, oh, ow]


cdef void _avgpool_fwd(floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                       Py_ssize_t pad) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t nc, n, c, oh, ow, i, j, h, i0, i1, j0, j1
    cdef floating s
    cdef floating area = kh * kw
    cdef const floating* plane
    cdef int nt = _nthreads(N * C * OH * OW * kh * kw)
    for nc in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = nc // C
        c = nc - n * C
        plane = &x[n, c, 0, 0]
        for oh in range(OH):
            i0 = _win_lo(oh, stride, pad)
            i1 = _win_hi(oh, stride, pad, H, kh)
            for ow in range(OW):
                j0 = _win_lo(ow, stride, pad)
                j1 = _win_hi(ow, stride, pad, W, kw)
                s = 0
                for i in range(i0, i1):
                    h = oh * stride + i - pad
                    for j in range(j0, j1):
                        s = s + plane[h * W + ow * stride + j - pad]
                out[n, c, oh, ow] = s / area


cdef void _avgpool_bwd(floating[:, :, :, ::1] dout, floating[:, :, :, ::1] dx,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                       Py_ssize_t pad) noexcept nogil:
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dout.shape[2], OW = dout.shape[3]
    cdef Py_ssize_t nc, n, c, oh, ow, i, j, h, i0, i1, j0, j1
    cdef floating share
    cdef floating area = kh * kw
    cdef floating* plane
    cdef int nt = _nthreads(N * C * (OH * OW * kh * kw + H * W))
    for nc in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = nc // C
        c = nc - n * C
        plane = &dx[n, c, 0, 0]
        memset(plane, 0, H * W * sizeof(floating))
        for oh in range(OH):
            i0 = _win_lo(oh, stride, pad)
            i1 = _win_hi(oh, stride, pad, H, kh)
            for ow in range(OW):
                j0 = _win_lo(ow, stride, pad)
                j1 = _win_hi(ow, stride, pad, W, kw)
                share = dout[n, c, oh, ow] / area
                for i in range(i0, i1):
                    h = oh * stride + i - pad
                    for j in range(j0, j1):
                        plane[h * W + ow * stride + j - pad] += share


def _pool_shape(x_shape, kh, kw, stride, pad):
    _check_window(kh, kw, stride, pad)
    N, C, H, W = x_shape
    return N, C, _out_size(H, kh, stride, pad), _out_size(W, kw, stride, pad)


def maxpool2d_forward(x, kh, kw, stride, pad):
    """x (N,C,H,W) -> (out (N,C,OH,OW), argmax int64 flat window index)."""
    if not _supported(x):
        return _ref.maxpool2d_forward(x, kh, kw, stride, pad)
    x = np.ascontiguousarray(x)
    oshape = _pool_shape(x.shape, kh, kw, stride, pad)
    out = np.empty(oshape, dtype=x.dtype)
    arg = np.empty(oshape, dtype=np.int64)
    if out.size:
        if x.dtype == np.float32:
            _maxpool_fwd[float](x, out, arg, kh, kw, stride, pad)
        else:
            _maxpool_fwd[double](x, out, arg, kh, kw, stride, pad)
    return out, arg


def maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad):
    """Route each dout element to the input position that won its window."""
    if not _supported(dout):
        return _ref.maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad)
    _check_window(kh, kw, stride, pad)
    dout = np.ascontiguousarray(dout)
    argmax = np.ascontiguousarray(argmax, dtype=np.int64)
    dx = np.empty(tuple(x_shape), dtype=dout.dtype)
    if dx.size:
        if dout.dtype == np.float32:
            _maxpool_bwd[float](dout, argmax, dx, kh, kw, stride, pad)
        else:
            _maxpool_bwd[double](dout, argmax, dx, kh, kw, stride, pad)
    return dx


def avgpool2d_forward(x, kh, kw, stride, pad):
    """Mean over each window; padding counts as zeros in the divisor kh*kw."""
    if not _supported(x):
        return _ref.avgpool2d_forward(x, kh, kw, stride, pad)
    x = np.ascontiguousarray(x)
    out = np.empty(_pool_shape(x.shape, kh, kw, stride, pad), dtype=x.dtype)
    if out.size:
        if x.dtype == np.float32:
            _avgpool_fwd[float](x, out, kh, kw, stride, pad)
        else:
            _avgpool_fwd[double](x, out, kh, kw, stride, pad)
    return out


def avgpool2d_backward(dout, x_shape, kh, kw, stride, pad):
    """Each input in a window receives dout / (kh*kw)."""
    if not _supported(dout):
        return _ref.avgpool2d_backward(dout, x_shape, kh, kw, stride, pad)
    _check_window(kh, kw, stride, pad)
    dout = np.ascontiguousarray(dout)
    dx = np.empty(tuple(x_shape), dtype=dout.dtype)
    if dx.size:
        if dout.dtype == np.float32:
            _avgpool_bwd[float](dout, dx, kh, kw, stride, pad)
        else:
            _avgpool_bwd[double](dout, dx, kh, kw, stride, pad)
    return dx


# --- optimizer updates ---------------------------------------------------------
# One pass over contiguous memory per update, in plain C loops that the
# compiler vectorizes (with an AVX2 clone picked at run time where GCC/clang
# support target_clones). Each loop mirrors the reference's operation order
# term by term; Python floats combined before touching an array are combined
# in double first and then rounded to the parameter dtype, as numpy does with
# weak scalars. No FMA: the AVX2 clone does not enable it, so results match
# numpy's separately rounded operations.

cdef extern from *:
    """
    #if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) \\
        && defined(__has_attribute)
    #  if __has_attribute(target_clones)
    #    define NS_CLONES __attribute__((target_clones("avx2", "default")))
    #  endif
    #endif
    #ifndef NS_CLONES
    #  define NS_CLONES
    #endif
    #define NS_G(i) (decay ? g[i] + wd * p[i] : g[i])

    #define NS_UPDATES(T, S, SQRT) \\
    NS_CLONES static void ns_sgd_##S(T *p, const T *g, Py_ssize_t n, T lr, T wd, int decay) { \\
        for (Py_ssize_t i = 0; i < n; i++) { T gi = NS_G(i); p[i] = p[i] - lr * gi; } } \\
    NS_CLONES static void ns_momentum_##S(T *p, const T *g, T *v, Py_ssize_t n, T lr, T mom, \\
                                          T wd, int decay) { \\
        for (Py_ssize_t i = 0; i < n; i++) { \\
            T gi = NS_G(i); T vi = v[i] * mom; vi = vi - lr * gi; v[i] = vi; p[i] = p[i] + vi; } } \\
    NS_CLONES static void ns_nesterov_##S(T *p, const T *g, T *v, Py_ssize_t n, T lr, T mom, \\
                                          T mm, T c, T wd, int decay) { \\
        for (Py_ssize_t i = 0; i < n; i++) { \\
            T gi = NS_G(i); T vi = v[i] * mom; vi = vi - lr * gi; v[i] = vi; \\
            T pi = p[i] + mm * vi; p[i] = pi - c * gi; } } \\
    NS_CLONES static void ns_adagrad_##S(T *p, const T *g, T *h, Py_ssize_t n, T lr, T eps, \\
                                         T wd, int decay) { \\
        for (Py_ssize_t i = 0; i < n; i++) { \\
            T gi = NS_G(i); T hi = h[i] + gi * gi; h[i] = hi; \\
            p[i] = p[i] - (lr * gi) / (SQRT(hi) + eps); } } \\
    NS_CLONES static void ns_rmsprop_##S(T *p, const T *g, T *h, Py_ssize_t n, T lr, T d, T omd, \\
                                         T eps, T wd, int decay) { \\
        for (Py_ssize_t i = 0; i < n; i++) { \\
            T gi = NS_G(i); T hi = h[i] * d; hi = hi + (omd * gi) * gi; h[i] = hi; \\
            p[i] = p[i] - (lr * gi) / (SQRT(hi) + eps); } } \\
    NS_CLONES static void ns_adam_##S(T *p, const T *g, T *m, T *v, Py_ssize_t n, T lr, T omb1, \\
                                      T omb2, T eps, T wd, int decay) { \\
        for (Py_ssize_t i = 0; i < n; i++) { \\
            T gi = NS_G(i); T mi = m[i]; mi = mi + omb1 * (gi - mi); m[i] = mi; \\
            T vi = v[i]; vi = vi + omb2 * (gi * gi - vi); v[i] = vi; \\
            p[i] = p[i] - (lr * mi) / (SQRT(vi) + eps); } }

    NS_UPDATES(float, f, sqrtf)
    NS_UPDATES(double, d, sqrt)
    """
    void ns_sgd_f(float* p, const float* g, Py_ssize_t n, float lr, float wd, int decay) nogil
    void ns_sgd_d(double* p, const double* g, Py_ssize_t n, double lr, double wd, int decay) nogil
    void ns_momentum_f(float* p, const float* g, float* v, Py_ssize_t n, float lr, float mom,
                       float wd, int decay) nogil
    void ns_momentum_d(double* p, const double* g, double* v, Py_ssize_t n, double lr,
                       double mom, double wd, int decay) nogil
    void ns_nesterov_f(float* p, const float* g, float* v, Py_ssize_t n, float lr, float mom,
                       float mm, float c, float wd, int decay) nogil
    void ns_nesterov_d(double* p, const double* g, double* v, Py_ssize_t n, double lr,
                       double mom, double mm, double c, double wd, int decay) nogil
    void ns_adagrad_f(float* p, const float* g, float* h, Py_ssize_t n, float lr, float eps,
                      float wd, int decay) nogil
    void ns_adagrad_d(double* p, const double* g, double* h, Py_ssize_t n, double lr,
                      double eps, double wd, int decay) nogil
    void ns_rmsprop_f(float* p, const float* g, float* h, Py_ssize_t n, float lr, float d,
                      float omd, float eps, float wd, int decay) nogil
    void ns_rmsprop_d(double* p, const double* g, double* h, Py_ssize_t n, double lr, double d,
                      double omd, double eps, double wd, int decay) nogil
    void ns_adam_f(float* p, const float* g, float* m, float* v, Py_ssize_t n, float lr,
                   float omb1, float omb2, float eps, float wd, int decay) nogil
    void ns_adam_d(double* p, const double* g, double* m, double* v, Py_ssize_t n, double lr,
                   double omb1, double omb2, double eps, double wd, int decay) nogil


def _flat_state(p, *states):
    """Flat views of p and its state arrays, or None when the fast path cannot apply."""
    if not isinstance(p, np.ndarray) or (p.dtype != np.float32 and p.dtype != np.float64):
        return None
    arrays = (p,) + states
    for a in arrays:
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous or a.dtype != p.dtype \
                or a.shape != p.shape or not a.flags.writeable:
            return None
    return [a.reshape(-1) for a in arrays]


def _flat_grad(g, p):
    g = np.ascontiguousarray(g, dtype=p.dtype)
    if g.shape != p.shape:
        g = np.broadcast_to(g, p.shape).copy()
    return g.reshape(-1)


cdef enum Update:
    SGD, MOMENTUM, NESTEROV, ADAGRAD, RMSPROP, ADAM


cdef void _update_block(Update kind, floating* p, const floating* g, floating* s1, floating* s2,
                        Py_ssize_t n, double[8] c, int decay) noexcept nogil:
    if floating is float:
        if kind == SGD:
            ns_sgd_f(p, g, n, <float>c[0], <float>c[7], decay)
        elif kind == MOMENTUM:
            ns_momentum_f(p, g, s1, n, <float>c[0], <float>c[1], <float>c[7], decay)
        elif kind == NESTEROV:
            ns_nesterov_f(p, g, s1, n, <float>c[0], <float>c[1], <float>c[2], <float>c[3],
                          <float>c[7], decay)
        elif kind == ADAGRAD:
            ns_adagrad_f(p, g, s1, n, <float>c[0], <float>c[1], <float>c[7], decay)
        elif kind == RMSPROP:
            ns_rmsprop_f(p, g, s1, n, <float>c[0], <float>c[1], <float>c[2], <float>c[3],
                         <float>c[7], decay)
        else:
            ns_adam_f(p, g, s1, s2, n, <float>c[0], <float>c[1], <float>c[2], <float>c[3],
                      <float>c[7], decay)
    else:
        if kind == SGD:
            ns_sgd_d(p, g, n, c[0], c[7], decay)
        elif kind == MOMENTUM:
            ns_momentum_d(p, g, s1, n, c[0], c[1], c[7], decay)
        elif kind == NESTEROV:
            ns_nesterov_d(p, g, s1, n, c[0], c[1], c[2], c[3], c[7], decay)
        elif kind == ADAGRAD:
            ns_adagrad_d(p, g, s1, n, c[0], c[1], c[7], decay)
        elif kind == RMSPROP:
            ns_rmsprop_d(p, g, s1, n, c[0], c[1], c[2], c[3], c[7], decay)
        else:
            ns_adam_d(p, g, s1, s2, n, c[0], c[1], c[2], c[3], c[7], decay)


cdef void _update(Update kind, floating[::1] p, floating[::1] g, floating[::1] s1,
                  floating[::1] s2, double[8] c, double wd) noexcept nogil:
    """Split p into one contiguous block per thread and update each block in one pass."""
    cdef Py_ssize_t n = p.shape[0], blk, lo, hi, nb
    cdef floating* pp = &p[0]
    cdef floating* p1 = &s1[0] if s1.shape[0] else NULL
    cdef floating* p2 = &s2[0] if s2.shape[0] else NULL
    cdef int decay = wd != 0
    c[7] = wd
    nb = _nthreads(n // 4)
    for blk in prange(nb, nogil=True, schedule="static", num_threads=nb):
        lo = blk * n // nb
        hi = (blk + 1) * n // nb
        _update_block(kind, pp + lo, &g[lo], (p1 + lo) if p1 != NULL else NULL,
                      (p2 + lo) if p2 != NULL else NULL, hi - lo, c, decay)


_EMPTY32 = np.zeros(0, np.float32)
_EMPTY64 = np.zeros(0, np.float64)


def _run_update(Update kind, p, g, states, consts, weight_decay):
    """Dispatch one update; False when the arrays need the reference path."""
    flat = _flat_state(p, *states)
    if flat is None or p.size == 0:
        return False
    gf = _flat_grad(g, p)
    cdef double[8] c
    for i in range(7):
        c[i] = consts[i] if i < len(consts) else 0.0
    empty = _EMPTY32 if p.dtype == np.float32 else _EMPTY64
    s1 = flat[1] if len(flat) > 1 else empty
    s2 = flat[2] if len(flat) > 2 else empty
    if p.dtype == np.float32:
        _update[float](kind, flat[0], gf, s1, s2, c, weight_decay)
    else:
        _update[double](kind, flat[0], gf, s1, s2, c, weight_decay)
    return True


def sgd_update(p, g, lr, weight_decay):
    """p -= lr * g."""
    if not _run_update(SGD, p, g, (), (lr,), weight_decay):
        _ref.sgd_update(p, g, lr, weight_decay)


def momentum_update(p, g, v, lr, momentum, weight_decay):
    """v = m*v - lr*g; p += v."""
    if not _run_update(MOMENTUM, p, g, (v,), (lr, momentum), weight_decay):
        _ref.momentum_update(p, g, v, lr, momentum, weight_decay)


def nesterov_update(p, g, v, lr, momentum, weight_decay):
    """v = m*v - lr*g; p += m*m*v - (1+m)*lr*g."""
    consts = (lr, momentum, momentum * momentum, (1 + momentum) * lr)
    if not _run_update(NESTEROV, p, g, (v,), consts, weight_decay):
        _ref.nesterov_update(p, g, v, lr, momentum, weight_decay)


def adagrad_update(p, g, h, lr, eps, weight_decay):
    """h += g*g; p -= lr * g / (sqrt(h) + eps)."""
    if not _run_update(ADAGRAD, p, g, (h,), (lr, eps), weight_decay):
        _ref.adagrad_update(p, g, h, lr, eps, weight_decay)


def rmsprop_update(p, g, h, lr, decay, eps, weight_decay):
    """h = d*h + (1-d)*g*g; p -= lr * g / (sqrt(h) + eps)."""
    if not _run_update(RMSPROP, p, g, (h,), (lr, decay, 1 - decay, eps), weight_decay):
        _ref.rmsprop_update(p, g, h, lr, decay, eps, weight_decay)


def adam_update(p, g, m, v, lr_t, beta1, beta2, eps, weight_decay):
    """m += (1-b1)(g-m); v += (1-b2)(g*g-v); p -= lr_t * m / (sqrt(v) + eps)."""
    if not _run_update(ADAM, p, g, (m, v), (lr_t, 1 - beta1, 1 - beta2, eps), weight_decay):
        _ref.adam_update(p, g, m, v, lr_t, beta1, beta2, eps, weight_decay)
