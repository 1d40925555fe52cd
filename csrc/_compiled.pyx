# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: the same names and signatures as netspec/kernels/_numpy.py.

Design: every public kernel is a short Python function that checks dtypes,
makes its inputs contiguous and allocates the outputs, then calls a *fused*
``def`` (``floating`` = float or double) that Cython dispatches on the arrays'
dtype; that in turn runs ``nogil`` loops. Input memoryviews are ``const``, so
read-only arrays (memory-mapped datasets) are accepted. Inputs of any other
dtype, or with mixed dtypes, are handed to the numpy reference so results
never silently change type.

float32 convolution runs direct kernels (csrc/conv_direct.h): OpenMP threads
each own whole samples, filters sit in SIMD lanes, and no column matrix is
built; d/dx of a stride-1 convolution is the forward kernel applied to dout
with rotated filters, and each thread sums its own partial dW. Measured on
deep_convnet's layers at 2 threads, forward 1.1-2.1x and backward 1.4-2.5x
faster than the im2col path below, which serves float64, kernels wider than
8, and d/dx of layers with fewer than 8 input channels. In the AVX-512 build,
stride-1 3x3 layers of 16+ input channels run Winograd F(2x2, 3x3) instead
(csrc/conv_winograd.h): forward, d/dx and dW.

The im2col path is one GEMM per *batch chunk*: a chunk of samples is
unrolled into a "wide" column buffer (C*kh*kw, nb*OH*OW) of about 4 MB, so
it stays in the last-level cache, multiplied by numpy's matmul, and the
(FN, nb*OH*OW) product is copied into the NCHW
output together with the bias. Backward recomputes the columns chunk by
chunk from the forward input instead of keeping the full (N, C*kh*kw, OH*OW)
array alive. The chunk buffers are thread-local and shared by all layers, so
they are allocated once and reused across layers and steps (fresh large arrays
cost page faults comparable to the arithmetic). 1x1 convolutions with stride
1 and no padding skip im2col. BLAS runs on one thread while a compiled model
runs (``netspec.kernels.blas_scope``: its idle threads would spin against the
OpenMP kernels), so this path uses one core.

Pooling runs direct loops over windows. Optimizer updates are one fused pass
over contiguous parameters, with the same operation order as the reference.
Pooling, standalone im2col/col2im and the optimizer updates split their
work across OpenMP threads (``prange``) when built with OpenMP and the work
is large enough; the loops inside a conv chunk stay serial.
"""
import os
import threading

import numpy as np

from cython cimport floating
from cython.parallel cimport prange, parallel as team
from libc.stddef cimport ptrdiff_t
from libc.string cimport memset, memcpy, memcmp
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS
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

cdef extern from "team.h" nogil:
    # see team.h: a light pass's threads claim chunks of its items from a shared counter, and
    # every thread ends with ns_team_done (the master waits for the others before the region's
    # closing barrier, so it never sleeps there)
    void ns_team_done(int* done)
    ptrdiff_t ns_claim(ptrdiff_t* next, ptrdiff_t chunk, ptrdiff_t total)
    ptrdiff_t ns_chunk(ptrdiff_t total, ptrdiff_t work_per_item, int nthreads)

cdef extern from "conv_direct.h" nogil:
    int ns_conv_forward(const float* x, const float* wt, const float* bias, float* out,
                        int N, int C, int H, int W, int F, int Fp, int kh, int kw,
                        int s, int ph, int pw, int OH, int OW, int nthreads,
                        const float* residual, int relu, float* pool)
    int ns_conv_backward_weights(const float* x, const float* dout, float* dw,
                                 int N, int C, int H, int W, int F, int Fp, int kh, int kw,
                                 int s, int ph, int pw, int OH, int OW, int nthreads)

cdef extern from "conv_winograd.h" nogil:
    int NS_HAS_WINOGRAD
    void nsw_filter_transform(const float* g, float* u, int F, int C, int Fp)
    size_t nsw_workspace_floats(int C, int H, int W, int F, int pad, int N, int nthreads)
    int nsw_conv_forward(const float* x, const float* u, const float* bias, float* out,
                         int N, int C, int H, int W, int F, int Fp, int pad, int nthreads,
                         const float* residual, int relu, int pool, float* work)
    int nsw_conv_backward_weights(const float* x, const float* dout, float* dw, int N, int C, int H, int W,
                                  int F, int Fp, int pad, int nthreads)

cdef extern from "half.h" nogil:
    int NS_HAS_FLOAT16
    int ns_round_half(float* x, Py_ssize_t n, int nthreads)

__all__ = list(_ref.__all__) + ["backend_info", "chunk_samples"]

cdef enum:
    # Below this many elements of work a loop runs on one thread: waking the
    # OpenMP team costs a few microseconds, more than the loop itself.
    PAR_MIN = 32768
    # Passes over memory that do a few operations per element (batchnorm, ReLU, pooling) run on
    # one thread below _pass_min units of work, a unit being what a ReLU does to one element
    # (see PassCost). With OMP_WAIT_POLICY=PASSIVE (netspec's default) the OpenMP worker sleeps
    # between regions and takes 70-125 us to wake; the passes hand out chunks on demand
    # (csrc/team.h), so the master starts at once and the worker joins when it is up. Measured
    # on 2 cores, one thread against the team: a ReLU of 627K elements 66 vs 73 us, of 2.5M 334
    # vs 214 us; batchnorm's statistics of 205K elements 105 vs 72 us, of 102K 45 vs 74 us; its
    # backward of 102K 59 vs 109 us, of 205K 182 vs 119 us.
    # While the worker spins (GOMP_SPINCOUNT set) two threads win from about 64K units.
    PAR_MIN_PASS_SLEEPING = 786432
    PAR_MIN_PASS_SPINNING = 65536
    # Target size of one chunk of conv columns: large enough for an efficient
    # GEMM, small enough to stay in the last-level cache.
    CHUNK_BYTES = 4194304

out_size = _ref.out_size


cdef int _nthreads(Py_ssize_t work) noexcept nogil:
    if work < PAR_MIN:
        return 1
    return netspec_max_threads()


# --- dense products: the BLAS numpy loaded, called from the OpenMP team -----------------
#
# netspec.threads finds cblas_sgemm / cblas_dgemm in the BLAS library numpy loaded and hands
# their addresses to set_blas_gemm. A dense layer's product is then split by rows over this
# module's OpenMP threads, each calling that BLAS on one thread (as row_parallel_matmul does
# from Python threads): the same calls on the same rows, but run by the team the convolutions
# use, so no second pool of threads competes with it for the cores. Integer arguments are
# passed as 64-bit values: the ILP64 entry points (names ending in 64_) take them so, and the
# LP64 ones read the low half of each 8-byte argument slot (x86-64 and AArch64 calling
# conventions; set_blas_gemm is only called there).
cdef extern from "gemm_rows.h" nogil:
    ctypedef void (*_sgemm_t)(int order, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                              const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                              float* C, int64_t ldc) noexcept nogil
    ctypedef void (*_dgemm_t)(int order, int ta, int tb, int64_t M, int64_t N, int64_t K, double alpha,
                              const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                              double* C, int64_t ldc) noexcept nogil
    void ns_gemm_rows(_sgemm_t sgemm, _dgemm_t dgemm, int ta, int tb, int64_t M, int64_t N, int64_t K,
                      const char* a, int64_t lda, const char* b, int64_t ldb, char* out, int nthreads)

cdef _sgemm_t _sgemm = NULL
cdef _dgemm_t _dgemm = NULL

cdef enum:
    NO_TRANS = 111   # CBLAS_TRANSPOSE values
    TRANS = 112


def set_blas_gemm(size_t sgemm_address, size_t dgemm_address):
    """Use the cblas_sgemm / cblas_dgemm at these addresses (0: none) for gemm_rows."""
    global _sgemm, _dgemm
    _sgemm = <_sgemm_t>sgemm_address
    _dgemm = <_dgemm_t>dgemm_address


cdef bint _blas_layout(a, int* trans, int64_t* ld):
    """The CBLAS description of a 2-D array: row-major rows (trans NO_TRANS, ld = row stride)
    or the transpose of such an array (TRANS); False when it is neither."""
    cdef Py_ssize_t item = a.itemsize
    s0, s1 = a.strides
    if s1 == item and s0 % item == 0 and s0 // item >= max(1, a.shape[1]):
        trans[0], ld[0] = NO_TRANS, s0 // item
        return True
    if s0 == item and s1 % item == 0 and s1 // item >= max(1, a.shape[0]):
        trans[0], ld[0] = TRANS, s1 // item
        return True
    return False


def gemm_rows(a, b, out, int nthreads):
    """out = a @ b with the rows of ``a`` split over ``nthreads`` OpenMP threads, each one BLAS
    call on its rows; False (nothing done) when no BLAS was set for the dtype or an array is
    laid out in a way CBLAS cannot take. ``a``, ``b``: 2-D, row-major or transposed views of
    row-major arrays; ``out``: C-contiguous, all three one dtype (float32 or float64)."""
    cdef int ta, tb, nt
    cdef int64_t lda, ldb, M, N, K
    dt = out.dtype
    if a.ndim != 2 or b.ndim != 2 or out.ndim != 2 or a.dtype != dt or b.dtype != dt:
        return False
    if b.shape[0] != a.shape[1] or out.shape[0] != a.shape[0] or out.shape[1] != b.shape[1]:
        raise ValueError(f"gemm_rows: {a.shape} @ {b.shape} does not fit an output shaped {out.shape}")
    if (dt == np.float32 and _sgemm == NULL) or (dt == np.float64 and _dgemm == NULL) \
            or dt not in (np.float32, np.float64):
        return False
    if not out.flags.c_contiguous or not _blas_layout(a, &ta, &lda) or not _blas_layout(b, &tb, &ldb):
        return False
    M, K, N = a.shape[0], a.shape[1], b.shape[1]
    if M == 0 or N == 0:
        return True
    if K == 0:
        out[...] = 0
        return True
    nt = max(1, min(nthreads, M))
    cdef _sgemm_t sgemm = _sgemm if dt == np.float32 else NULL
    cdef _dgemm_t dgemm = _dgemm if dt == np.float64 else NULL
    cdef const char* pa = <const char*><size_t>a.ctypes.data
    cdef const char* pb = <const char*><size_t>b.ctypes.data
    cdef char* po = <char*><size_t>out.ctypes.data
    with nogil:
        ns_gemm_rows(sgemm, dgemm, ta, tb, M, N, K, pa, lda, pb, ldb, po, nt)
    return True


def _worker_sleeps():
    """Whether idle OpenMP threads sleep at once (a passive policy, or a spin count of 0), as
    libgomp read it when it loaded (netspec.runtime sets it before this module is imported)."""
    policy = os.environ.get("OMP_WAIT_POLICY", "").strip().lower()
    spins = os.environ.get("GOMP_SPINCOUNT", "").strip()
    if spins:
        return spins == "0"
    return policy == "passive"


cdef Py_ssize_t _pass_min = PAR_MIN_PASS_SLEEPING if _worker_sleeps() else PAR_MIN_PASS_SPINNING


def _set_light_pass_min(Py_ssize_t elements):
    """Set the light-pass threshold (see PAR_MIN_PASS_SLEEPING); returns the previous one. For
    tests, which run the threaded path of these passes on small arrays, and for measuring."""
    global _pass_min
    old = _pass_min
    _pass_min = elements
    return old


# Work per element of each light pass in units of a ReLU's (the time per element on one thread,
# 100K-element maps in cache, divided by the ReLU's 0.1 ns): batchnorm's statistics 4.2x (two
# passes in double), forward 2.6x, backward 5.6x; max pooling 2.6x per input element.
cdef enum PassCost:
    COST_RELU = 1
    COST_BN_STATS = 4
    COST_BN_FORWARD = 3
    COST_BN_BACKWARD = 5
    COST_POOL = 3


cdef int _pass_threads(Py_ssize_t elements, PassCost cost) noexcept nogil:
    """Threads for a light pass over ``elements`` values (see PAR_MIN_PASS_SLEEPING)."""
    if elements * <Py_ssize_t>cost < _pass_min:
        return 1
    return netspec_max_threads()


def backend_info():
    """What the compiled backend was built with: OpenMP support and thread count."""
    v = CYTHON_HEX_VERSION
    return {
        "openmp": bool(netspec_has_openmp()),
        "openmp_max_threads": int(netspec_max_threads()),
        "compiled_with": f"Cython {v >> 24}.{(v >> 16) & 0xff}.{(v >> 8) & 0xff}",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "omp_spin_count": os.environ.get("GOMP_SPINCOUNT", ""),
        "light_pass_min_elements": _pass_min,   # batchnorm / ReLU passes below this: one thread
        "float16_kernel": bool(NS_HAS_FLOAT16),   # False: round_half uses the numpy reference
        "winograd": WINOGRAD,   # stride-1 3x3 convolutions by Winograd F(2x2, 3x3) (AVX-512 build)
        "dense_on_openmp": _sgemm != NULL,   # dense products: numpy's BLAS called from the OpenMP team
    }


cdef inline floating _sqrt(floating v) noexcept nogil:
    """sqrt in the argument's own precision (float stays float, as in numpy)."""
    if floating is float:
        return sqrtf(v)
    else:
        return sqrt(v)


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
# Column layout: row (c, i, j) of sample n starts at n*sample_stride + row*row_stride
# and holds OH*OW values. The batched public layout (N, C*kh*kw, OH*OW) and the
# wide chunk layout (C*kh*kw, nb*OH*OW) used by convolution differ only in strides.

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


cdef void _unroll(const floating* src, floating* dst, Py_ssize_t N, Py_ssize_t C,
                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                  Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t OH, Py_ssize_t OW,
                  Py_ssize_t sample_stride, Py_ssize_t row_stride,
                  bint adjoint, bint parallel) noexcept nogil:
    """im2col (src = images, dst = columns) or, with ``adjoint``, col2im (src = columns,
    dst = images, each plane zeroed first): one (sample, channel) plane per iteration."""
    cdef Py_ssize_t nc, n, image, cols
    cdef int nt = _nthreads(N * C * kh * kw * OH * OW) if parallel else 1
    for nc in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = nc // C
        image = nc * H * W
        cols = n * sample_stride + (nc - n * C) * kh * kw * row_stride
        if adjoint:
            memset(dst + image, 0, H * W * sizeof(floating))
            _col2im_plane(src + cols, dst + image, row_stride, H, W, kh, kw, stride, pad, OH, OW)
        else:
            _im2col_plane(src + image, dst + cols, row_stride, H, W, kh, kw, stride, pad, OH, OW)


def _unroll_into(const floating[::1] src, floating[::1] dst, tuple x_shape, Py_ssize_t n0,
                 Py_ssize_t nb, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                 bint wide, bint adjoint):
    """Samples n0..n0+nb of images (N, C, H, W) to columns, or back with ``adjoint``.

    Columns are batched, (N*C*kh*kw, OH*OW) rows, or ``wide``, (C*kh*kw, nb*OH*OW): the
    layout of one conv chunk, so that a single GEMM covers all its samples.
    """
    cdef Py_ssize_t C = x_shape[1], H = x_shape[2], W = x_shape[3]
    cdef Py_ssize_t OH = out_size(H, kh, stride, pad), OW = out_size(W, kw, stride, pad)
    cdef Py_ssize_t P = OH * OW, first = n0 * C * H * W
    cdef Py_ssize_t sample_stride = P if wide else C * kh * kw * P
    cdef Py_ssize_t row_stride = nb * P if wide else P
    if nb == 0 or C == 0 or P == 0 or H * W == 0:
        return
    with nogil:
        if adjoint:
            _unroll(&src[0], &dst[first], nb, C, H, W, kh, kw, stride, pad, OH, OW,
                    sample_stride, row_stride, True, not wide)
        else:
            _unroll(&src[first], &dst[0], nb, C, H, W, kh, kw, stride, pad, OH, OW,
                    sample_stride, row_stride, False, not wide)


def im2col(x, kh, kw, stride, pad):
    """x (N, C, H, W) -> col (N, C*kh*kw, OH*OW)."""
    if not _supported(x):
        return _ref.im2col(x, kh, kw, stride, pad)
    _check_window(kh, kw, stride, pad)
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    col = np.empty((N, C * kh * kw, OH * OW), dtype=x.dtype)
    if col.size:
        _unroll_into(x.reshape(-1), col.reshape(-1), x.shape, 0, N, kh, kw, stride, pad, False, False)
    return col


def col2im(col, x_shape, kh, kw, stride, pad):
    """Adjoint of im2col: col (N, C*kh*kw, OH*OW) -> dx (N, C, H, W), overlaps summed."""
    if not _supported(col):
        return _ref.col2im(col, x_shape, kh, kw, stride, pad)
    _check_window(kh, kw, stride, pad)
    N, C, H, W = x_shape
    OH, OW = out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)
    col = np.ascontiguousarray(col)
    x = np.zeros((N, C, H, W), dtype=col.dtype)
    if col.size:
        _unroll_into(col.reshape(-1), x.reshape(-1), x.shape, 0, N, kh, kw, stride, pad, False, True)
    return x


# --- convolution -------------------------------------------------------------

def _scatter_nchw(const floating[:, ::1] wide, floating[:, :, ::1] out, Py_ssize_t n0,
                  const floating[::1] b, bint has_bias):
    """out[n0 + n, f, :] = wide[f, n*P:(n+1)*P] (+ b[f]) for the nb samples of a chunk."""
    cdef Py_ssize_t F = wide.shape[0], P = out.shape[2], nb = wide.shape[1] // P
    cdef Py_ssize_t nf, n, f, p
    cdef floating bias
    cdef floating* dst
    cdef const floating* src
    with nogil:
        for nf in range(nb * F):
            n = nf // F
            f = nf - n * F
            dst = &out[n0 + n, f, 0]
            src = &wide[f, n * P]
            if not has_bias:
                memcpy(dst, src, P * sizeof(floating))
            else:
                bias = b[f]
                for p in range(P):
                    dst[p] = src[p] + bias


def _gather_nchw(const floating[:, :, ::1] dout, floating[:, ::1] wide, Py_ssize_t n0):
    """wide[f, n*P:(n+1)*P] = dout[n0 + n, f, :] for the nb samples of a chunk."""
    cdef Py_ssize_t F = wide.shape[0], P = dout.shape[2], nb = wide.shape[1] // P
    cdef Py_ssize_t n, f
    with nogil:
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


def chunk_samples(Py_ssize_t N, Py_ssize_t K, Py_ssize_t P, Py_ssize_t itemsize):
    """Samples per conv chunk, so that one chunk of K x P columns per sample is about 4 MB."""
    return max(1, min(N, CHUNK_BYTES // max(1, K * P * itemsize)))


def _chunks(Py_ssize_t N, Py_ssize_t nb):
    """(first sample, samples) of each chunk."""
    cdef Py_ssize_t n0
    for n0 in range(0, N, nb):
        yield n0, min(nb, N - n0)


def _is_pointwise(kh, kw, stride, pad):
    return kh == 1 and kw == 1 and stride == 1 and pad == 0


# the max pool the direct and Winograd kernels apply to each sample's output (conv2d_forward's pool)
POOL_FUSED = (2, 2, 2, 0)


def _pool_fuses(W_shape, stride, pad, pool, residual):
    """Whether a conv that the direct or Winograd kernel runs (float32, _direct_ok) pools inside
    it: a 2x2 stride-2 unpadded pool, no residual, not a pointwise product."""
    return (tuple(pool) == POOL_FUSED and not residual and W_shape[3] <= 8
            and not _is_pointwise(W_shape[2], W_shape[3], stride, pad))


def _conv_shapes(x, W, stride, pad):
    N, C, H, Wd = x.shape
    FN, C2, kh, kw = W.shape
    if C2 != C:
        raise ValueError(f"conv2d: input has {C} channels, filters expect {C2}")
    _check_window(kh, kw, stride, pad)
    return N, C, FN, kh, kw, out_size(H, kh, stride, pad), out_size(Wd, kw, stride, pad)


def conv2d_forward(x, W, b, stride, pad, out=None, residual=None, relu=False, packed=None, pool=None):
    """out[n, f] = sum_c W[f, c] (*) x[n, c] + b[f]; x (N,C,H,W), W (FN,C,kh,kw), b (FN,) or None.
    ``out``: a C-contiguous (N,FN,OH,OW) array of x's dtype to write into (else a new one).
    ``residual`` (an array shaped like the output, not in out's memory) is then added and with
    ``relu`` the ReLU applied: a conv, a residual add and a ReLU as one node. ``packed``: what
    conv2d_pack returned for these W and b (the direct kernel then skips laying them out).
    ``pool``: (kh, kw, stride, pad) of a max pool that then reads the result, which ``out``
    then holds instead: the direct and Winograd kernels pool each sample's output while it is
    in cache when the pool is 2x2 with stride 2 (POOL_FUSED), other paths pool after the conv."""
    if residual is not None and (residual.dtype != x.dtype or not residual.flags.c_contiguous):
        residual = np.ascontiguousarray(residual, dtype=x.dtype)
    if not _supported(x, W, b):
        return _ref.conv2d_forward(x, W, b, stride, pad, out=out, residual=residual, relu=relu, pool=pool)
    if pool is not None:
        if _direct_ok(x, W) and _pool_fuses(W.shape, stride, pad, pool, residual is not None):
            N, C, FN, kh, kw, OH, OW = _conv_shapes(x, W, stride, pad)
            if out is None:
                out = np.empty((N, FN, OH // 2, OW // 2), dtype=x.dtype)
            return _direct_forward(x, W, b, stride, pad, out, None, relu, packed, True)
        full = conv2d_forward(x, W, b, stride, pad, None, residual, relu, packed)
        return maxpool2d_infer(full, *pool, out=out)
    if (residual is not None or relu) and not _direct_ok(x, W):
        return _epilogue(conv2d_forward(x, W, b, stride, pad, out), residual, relu)
    N, C, FN, kh, kw, OH, OW = _conv_shapes(x, W, stride, pad)
    P, K = OH * OW, C * kh * kw
    x = np.ascontiguousarray(x)
    W2 = np.ascontiguousarray(W).reshape(FN, K)
    has_bias = b is not None
    b = np.ascontiguousarray(b).reshape(FN) if has_bias else np.zeros(0, x.dtype)
    if out is None:
        out = np.empty((N, FN, OH, OW), dtype=x.dtype)
    out3 = out.reshape(N, FN, P)
    if N == 0 or P == 0 or FN == 0:
        return out
    if _is_pointwise(kh, kw, stride, pad):
        np.matmul(W2, x.reshape(N, C, P), out=out3)
        if has_bias:
            out3 += b.reshape(1, FN, 1)
        return _epilogue(out, residual, relu)
    if _direct_ok(x, W):
        return _direct_forward(x, W, b if has_bias else None, stride, pad, out, residual, relu, packed)
    nb = chunk_samples(N, K, P, x.itemsize)
    colbuf = _buffer("col", K * nb * P, x.dtype)
    prodbuf = _buffer("prod", FN * nb * P, x.dtype)
    for n0, nbc in _chunks(N, nb):
        col = colbuf[:K * nbc * P].reshape(K, nbc * P)
        prod = prodbuf[:FN * nbc * P].reshape(FN, nbc * P)
        _unroll_into(x.reshape(-1), col.reshape(-1), x.shape, n0, nbc, kh, kw, stride, pad, True, False)
        np.matmul(W2, col, out=prod)
        _scatter_nchw(prod, out3, n0, b, has_bias)
    return out


def conv2d_backward(dout, x, W, stride, pad, need_dx=True, need_db=True):
    """dout (N,FN,OH,OW) and the forward input x -> (dx or None, dW, db or None); ``need_db=False``
    (a convolution without bias) skips db's pass over dout."""
    if not _supported(x, W) or dout.dtype != x.dtype:
        return _ref.conv2d_backward(dout, x, W, stride, pad, need_dx, need_db)
    N, C, FN, kh, kw, OH, OW = _conv_shapes(x, W, stride, pad)
    P, K = OH * OW, C * kh * kw
    if tuple(dout.shape) != (N, FN, OH, OW):
        raise ValueError(f"conv2d_backward: dout is shaped {tuple(dout.shape)}, "
                         f"the forward output was {(N, FN, OH, OW)}")
    x = np.ascontiguousarray(x)
    dout3 = np.ascontiguousarray(dout).reshape(N, FN, P)
    W2 = np.ascontiguousarray(W).reshape(FN, K)
    direct_dw = _direct_ok(x, W) and not _is_pointwise(kh, kw, stride, pad) and not (kh == 1 and kw == 1 and pad == 0)
    # d/dx by the stride-1 direct kernel comes back as a new array: no zeroed one to allocate
    direct_dx = need_dx and direct_dw and _direct_dx_ok(W, stride, pad) and C >= DIRECT_DX_MIN_CHANNELS
    dx = np.zeros(x.shape, dtype=x.dtype) if need_dx and not direct_dx else None
    dW = np.zeros((FN, K), dtype=x.dtype)
    db = np.zeros(FN, dtype=x.dtype) if need_db else None
    if N == 0 or P == 0 or FN == 0:
        return (np.zeros(x.shape, dtype=x.dtype) if need_dx else None), dW.reshape(W.shape), db
    if need_db:
        dout3.sum(axis=(0, 2), out=db)  # numpy's pairwise sum: vectorized, as in the reference
    if _is_pointwise(kh, kw, stride, pad):
        if need_dx:
            np.matmul(W2.T, dout3, out=dx.reshape(N, C, P))
        # dW = sum_n dout_n @ x_n^T, as one GEMM over the (n, p) axis pair
        dW[...] = np.tensordot(dout3, x.reshape(N, C, P), axes=([0, 2], [0, 2]))
        return dx, dW.reshape(W.shape), db
    if kh == 1 and kw == 1 and pad == 0:
        # a strided 1x1 convolution (a ResNet projection) reads every stride-th pixel: the same
        # two GEMMs on that subsampled input, and d/dx lands on those pixels (the rest stay 0)
        xs = np.ascontiguousarray(x[:, :, ::stride, ::stride]).reshape(N, C, P)
        dW[...] = np.tensordot(dout3, xs, axes=([0, 2], [0, 2]))
        if need_dx:
            dx[:, :, ::stride, ::stride] = np.matmul(W2.T, dout3).reshape(N, C, OH, OW)
        return dx, dW.reshape(W.shape), db
    if direct_dw:
        if _winograd_ok(C, FN, kh, kw, stride, pad, x.shape[2], x.shape[3]):
            dW[...] = _winograd_dw(x, dout3.reshape(N, FN, OH, OW), pad).reshape(FN, K)
        else:
            dW[...] = _direct_dw(x, dout3.reshape(N, FN, OH, OW), kh, kw, stride, pad).reshape(FN, K)
        if not need_dx:
            return dx, dW.reshape(W.shape), db
        if direct_dx:
            return _direct_dx(dout3.reshape(N, FN, OH, OW), W, pad), dW.reshape(W.shape), db
        if stride > 1 and C >= DIRECT_DX_MIN_CHANNELS:
            _direct_dx_phases(dout3.reshape(N, FN, OH, OW), W, stride, pad, dx)
            return dx, dW.reshape(W.shape), db
    # im2col: dW (unless the direct kernel gave it) and dx by chunks of samples
    nb = chunk_samples(N, K, P, x.itemsize)
    colbuf = _buffer("col", K * nb * P, x.dtype)
    dcolbuf = _buffer("prod", K * nb * P, x.dtype) if need_dx else None
    gbuf = _buffer("dout", FN * nb * P, x.dtype)
    dW_chunk = np.empty((FN, K), dtype=x.dtype)
    for n0, nbc in _chunks(N, nb):
        col = colbuf[:K * nbc * P].reshape(K, nbc * P)
        gw = gbuf[:FN * nbc * P].reshape(FN, nbc * P)
        _gather_nchw(dout3, gw, n0)
        if not direct_dw:
            _unroll_into(x.reshape(-1), col.reshape(-1), x.shape, n0, nbc, kh, kw, stride, pad, True, False)
            np.matmul(gw, col.T, out=dW if n0 == 0 else dW_chunk)
            if n0:
                dW += dW_chunk
        if need_dx:
            dcol = dcolbuf[:K * nbc * P].reshape(K, nbc * P)
            np.matmul(W2.T, gw, out=dcol)
            _unroll_into(dcol.reshape(-1), dx.reshape(-1), x.shape, n0, nbc, kh, kw, stride, pad, True, True)
    return dx, dW.reshape(W.shape), db


# --- direct float32 convolution (csrc/conv_direct.h) ----------------------------

cdef int LANES = 16


def _align64(buf, Py_ssize_t n):
    """The n floats of float32 ``buf`` (at least n + 15 long) that start on a 64-byte boundary."""
    cdef Py_ssize_t k = (-buf.ctypes.data // 4) % 16
    return buf[k:k + n]


def _aligned(shape, zero=False):
    """A new float32 array whose data starts on a 64-byte boundary: a cache line, so the kernels'
    16-float vector loads of it never straddle two lines. numpy's own arrays start where malloc
    puts them (16-byte aligned): with the weights of a layer 16 bytes off, its Winograd kernel
    ran 1.3-1.4x slower and its direct kernel 1.1-1.3x (one core, batch 100), which varied from
    process to process with the heap's state."""
    n = int(np.prod(shape))
    buf = np.zeros(n + 16, dtype=np.float32) if zero else np.empty(n + 16, dtype=np.float32)
    return _align64(buf, n).reshape(shape)


def _lanes(Py_ssize_t n):
    """n rounded up to a whole number of 16-float blocks."""
    return (n + LANES - 1) // LANES * LANES


def _lane_major(W4):
    """(F, C, kh, kw) filters as [C][kh][kw][Fp], F zero-padded to Fp lanes: 16 filters contiguous."""
    F, C, kh, kw = W4.shape
    wt = _aligned((C, kh, kw, _lanes(F)), zero=True)
    wt[..., :F] = W4.transpose(1, 2, 3, 0)
    return wt


cdef const float* _residual_ptr(residual) except? NULL:
    """The float32 (N, F, OH, OW) residual's data, or NULL for None (the caller keeps it alive)."""
    cdef const float[:, :, :, ::1] rv
    if residual is None:
        return NULL
    rv = residual
    return &rv[0, 0, 0, 0]


def _direct_conv(x, wt, bias, Py_ssize_t F, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                 Py_ssize_t ph, Py_ssize_t pw, out=None, residual=None, bint relu=False, bint pool=False):
    """out (N, F, OH, OW) = direct convolution of float32 x with lane-major weights (+ bias);
    into ``out`` when given; then + residual (same shape, not out's memory) and the ReLU, per
    sample while it is in cache; with ``pool``, out is (N, F, OH//2, OW//2): the 2x2 stride-2
    max pool of that."""
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] wv = wt
    cdef const float[::1] bv = bias
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out_size(H, kh, stride, ph), OW = out_size(W, kw, stride, pw)
    if out is None:
        out = np.empty((N, F, OH // 2, OW // 2) if pool else (N, F, OH, OW), dtype=np.float32)
    cdef float[:, :, :, ::1] ov = out
    cdef const float* rp = _residual_ptr(residual)
    cdef int rc = 0, nt = netspec_max_threads()
    # pooled: each thread's unpooled sample (a numpy array, so that what the memory plan counts
    # is what a measurement of the call sees)
    cdef float[::1] pv = _aligned((nt * F * OH * OW,)) if pool else None
    cdef float* pp = &pv[0] if pool else NULL
    if N and F and out.size:
        with nogil:
            rc = ns_conv_forward(&xv[0, 0, 0, 0], &wv[0, 0, 0, 0], &bv[0], &ov[0, 0, 0, 0], N, C, H, W, F,
                                 wv.shape[3], kh, kw, stride, ph, pw, OH, OW, nt, rp, relu, pp)
    if rc:
        raise MemoryError("conv2d: no memory for the padded-sample buffers")
    return out


def _direct_dw(x, dout, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad):
    """dW (F, C, kh, kw) of a float32 convolution, from its input and d/d(output)."""
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] dv = dout
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = dout.shape[1], OH = dout.shape[2], OW = dout.shape[3], Fp = _lanes(F)
    dw = np.zeros((C, kh, kw, Fp), dtype=np.float32)
    cdef float[:, :, :, ::1] wv = dw
    cdef int rc = 0, nt = netspec_max_threads()
    if N and C:
        with nogil:
            rc = ns_conv_backward_weights(&xv[0, 0, 0, 0], &dv[0, 0, 0, 0], &wv[0, 0, 0, 0], N, C, H, W, F, Fp,
                                          kh, kw, stride, pad, pad, OH, OW, nt)
    if rc:
        raise MemoryError("conv2d: no memory for the per-thread weight gradients")
    return np.ascontiguousarray(dw[..., :F].transpose(3, 0, 1, 2))


# d/dx through the direct kernel puts the input channels in the 16 SIMD lanes: with fewer
# than 8 (a first layer on 1-channel images) most lanes idle and im2col is faster (measured).
DIRECT_DX_MIN_CHANNELS = 8


def _direct_ok(x, W):
    """The direct kernels handle float32 with kernels up to 8 wide (d/dx: see _direct_dx_ok)."""
    return x.dtype == np.float32 and W.dtype == np.float32 and W.shape[3] <= 8 and x.shape[0] > 0


def _direct_dx_ok(W, stride, pad):
    """d/dx as a forward convolution needs stride 1 and pad <= k - 1 (a non-negative padding of dout)."""
    return stride == 1 and pad <= W.shape[2] - 1 and pad <= W.shape[3] - 1


def _direct_forward(x, W, b, stride, pad, out=None, residual=None, relu=False, packed=None, pool=False):
    F, C, kh, kw = W.shape
    wino = _winograd_ok(C, F, kh, kw, stride, pad, x.shape[2], x.shape[3])
    if packed is not None and packed[2] == W.shape and packed[3] == wino:
        wt, bias = packed[0], packed[1]
    else:
        wt, bias = _pack(W, b, wino, scratch=True)
    if wino:
        return _winograd_conv(np.ascontiguousarray(x), wt, bias, F, pad, out, residual, relu, pool)
    return _direct_conv(np.ascontiguousarray(x), wt, bias, F, kh, kw, stride, pad, pad, out, residual, relu, pool)


def _pack(W, b, wino=False, scratch=False):
    """(filters laid out for the kernel, bias zero-padded to whole lanes): lane-major for the
    direct kernel, Winograd's U for the Winograd kernel (``scratch``: see _winograd_filters)."""
    bias = _aligned((_lanes(W.shape[0]),), zero=True)
    if b is not None:
        bias[:W.shape[0]] = b
    return (_winograd_filters(W, scratch) if wino else _lane_major(W)), bias


# --- Winograd F(2x2, 3x3) (csrc/conv_winograd.h; AVX-512 build only) ------------------------

# Stride-1 3x3 float32 convolutions run Winograd's algorithm (2.25x fewer multiplies) where this
# build has it, the layer has at least WINOGRAD_MIN_CHANNELS input channels (its transforms work on
# 16 channels at a time) and the partly unused tiles of an odd-sized output leave it at most
# WINOGRAD_MAX_WORK of the direct kernel's multiplies. NETSPEC_WINOGRAD=0 turns it off (the direct
# kernel then runs these layers, as in builds without AVX-512).
WINOGRAD = bool(NS_HAS_WINOGRAD) and os.environ.get("NETSPEC_WINOGRAD", "1") != "0"
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MAX_WORK = 0.7


def _winograd_ok(C, F, kh, kw, stride, pad, H, W):
    if not (WINOGRAD and kh == 3 and kw == 3 and stride == 1 and 0 <= pad <= 2 and C >= WINOGRAD_MIN_CHANNELS):
        return False
    OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
    if OH < 1 or OW < 1:
        return False
    return 16 * ((OH + 1) // 2) * ((OW + 1) // 2) <= WINOGRAD_MAX_WORK * 9 * OH * OW


def _winograd_filters(W, scratch=False):
    """U [16][C][Fp] = G g G^T of every (F, C, 3, 3) float32 filter, filters in lanes; with
    ``scratch``, in the thread's scratch buffer (for use within one call: a fresh 1 MB array
    cost more in page faults than the transform itself)."""
    cdef const float[:, :, :, ::1] wv = np.ascontiguousarray(W, dtype=np.float32)
    cdef Py_ssize_t F = W.shape[0], C = W.shape[1], Fp = _lanes(F)
    if scratch:
        u = _align64(_buffer("winograd_u", 16 * C * Fp + 16, np.float32), 16 * C * Fp).reshape(16, C, Fp)
    else:
        u = _aligned((16, C, Fp))
    cdef float[:, :, ::1] uv = u
    if F and C:
        with nogil:
            nsw_filter_transform(&wv[0, 0, 0, 0], &uv[0, 0, 0], F, C, Fp)
    else:
        u[...] = 0
    return u


def _winograd_dw(x, dout, Py_ssize_t pad):
    """dW (F, C, 3, 3) of a stride-1 3x3 float32 convolution by Winograd's algorithm, from its
    input and d/d(output) (see csrc/conv_winograd.h)."""
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, :, ::1] dv = dout
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = dout.shape[1], Fp = _lanes(F)
    dw = _aligned((C, 3, 3, Fp))
    cdef float[:, :, :, ::1] wv = dw
    cdef int rc = 0, nt = netspec_max_threads()
    if N and C and F:
        with nogil:
            rc = nsw_conv_backward_weights(&xv[0, 0, 0, 0], &dv[0, 0, 0, 0], &wv[0, 0, 0, 0], N, C, H, W, F, Fp,
                                           pad, nt)
    else:
        dw[...] = 0
    if rc:
        raise MemoryError("conv2d: no memory for the Winograd weight-gradient buffers")
    return np.ascontiguousarray(dw[..., :F].transpose(3, 0, 1, 2))


def _winograd_conv(x, u, bias, Py_ssize_t F, Py_ssize_t pad, out=None, residual=None, bint relu=False,
                   bint pool=False):
    """out (N, F, OH, OW) = the stride-1 3x3 convolution of float32 x by Winograd's algorithm,
    from U (_winograd_filters) and the lane-padded bias; then + residual and the ReLU, or (no
    residual) the ReLU and the 2x2 stride-2 max pool, as _direct_conv."""
    cdef const float[:, :, :, ::1] xv = x
    cdef const float[:, :, ::1] uv = u
    cdef const float[::1] bv = bias
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = H + 2 * pad - 2, OW = W + 2 * pad - 2
    if out is None:
        out = np.empty((N, F, OH // 2, OW // 2) if pool else (N, F, OH, OW), dtype=np.float32)
    cdef float[:, :, :, ::1] ov = out
    cdef const float* rp = _residual_ptr(residual)
    cdef int rc = 0, nt = netspec_max_threads()
    # the threads' buffers, 64-byte aligned, for this call only (a numpy array, so that what the
    # memory plan counts is what a measurement of the call sees)
    cdef Py_ssize_t need = nsw_workspace_floats(C, H, W, F, pad, N, nt) if N and F else 0
    cdef float[::1] sv = _aligned((max(need, 1),))
    if N and F and out.size:
        with nogil:
            rc = nsw_conv_forward(&xv[0, 0, 0, 0], &uv[0, 0, 0], &bv[0], &ov[0, 0, 0, 0], N, C, H, W, F,
                                  uv.shape[2], pad, nt, rp, relu, pool, &sv[0])
    if rc:
        raise MemoryError("conv2d: no memory for the Winograd buffers")
    return out


def conv2d_pack(W, b, stride, pad, in_shape=None):
    """W and b laid out once for conv2d_forward's ``packed``, for weights that do not change
    (an inference graph's folded convolutions): re-laying out resnet_fashion's filters took
    0.5 ms of every predict. ``in_shape``: one sample's (C, H, W), which decides between the
    direct and the Winograd layout (without it, the channels alone decide, and conv2d_forward
    lays the filters out again where the input's size decides otherwise). None where
    conv2d_forward would not run the direct or Winograd kernel."""
    kh, kw = W.shape[2], W.shape[3]
    if (W.dtype != np.float32 or (b is not None and b.dtype != np.float32) or kw > 8
            or _is_pointwise(kh, kw, stride, pad)):
        return None
    F, C, kh, kw = W.shape
    H, Wd = (in_shape[1], in_shape[2]) if in_shape is not None else (64, 64)
    wino = _winograd_ok(C, F, kh, kw, stride, pad, H, Wd)
    wt, bias = _pack(np.ascontiguousarray(W), None if b is None else np.ascontiguousarray(b).reshape(-1), wino)
    return wt, bias, tuple(W.shape), wino


def _epilogue(out, residual, relu):
    """out + residual, then the ReLU, in place (for the paths whose kernel does not do it)."""
    if residual is not None:
        out += residual
    if relu:
        relu_forward(out, out=out)
    return out


def conv2d_workspace(x_shape, W_shape, stride, pad, itemsize, packed=False, pool=None):
    """Bytes conv2d_forward allocates besides its output, for the memory plan: the lane-major
    weights and bias (unless ``packed``: conv2d_pack made them beforehand) and each thread's
    padded sample (direct kernel; with a fused pool, also the sample's unpooled output), or the
    im2col chunk buffers, which stay allocated for later calls (other shapes, dtypes: the numpy
    reference's); with a pool that is not fused, the whole unpooled output too."""
    N, C, H, Wd = x_shape
    FN, _, kh, kw = W_shape
    OH, OW = out_size(H, kh, stride, pad), out_size(Wd, kw, stride, pad)
    if itemsize not in (4, 8):
        return _ref.conv2d_workspace(x_shape, W_shape, stride, pad, itemsize, pool=pool)
    if pool is not None:
        if itemsize == 4 and N > 0 and _pool_fuses(W_shape, stride, pad, pool, False):
            direct = not _winograd_ok(C, FN, kh, kw, stride, pad, H, Wd)
            return (conv2d_workspace(x_shape, W_shape, stride, pad, itemsize, packed)
                    + direct * 4 * (netspec_max_threads() * FN * OH * OW + 16))
        return (conv2d_workspace(x_shape, W_shape, stride, pad, itemsize, packed)
                + itemsize * N * FN * OH * OW + pool_workspace((N, FN, OH, OW), pool[3], itemsize))
    if _is_pointwise(kh, kw, stride, pad):
        return 0
    if itemsize == 4 and _winograd_ok(C, FN, kh, kw, stride, pad, H, Wd):
        weights = 0 if packed else 16 * C * _lanes(FN) + _lanes(FN)
        return 4 * (weights + 16 + nsw_workspace_floats(C, H, Wd, FN, pad, N, netspec_max_threads()))
    if itemsize == 4 and kw <= 8:
        Fp = _lanes(FN)
        per_thread = C * (H + 2 * pad) * (Wd + 2 * pad) + 6 * stride + kw + 16
        weights = 0 if packed else C * kh * kw * Fp + Fp
        return 4 * (weights + netspec_max_threads() * per_thread)
    P, K = OH * OW, C * kh * kw
    nb = chunk_samples(N, K, P, itemsize)
    return itemsize * (K * nb * P + FN * nb * P)


def _direct_dx(dout, W, pad):
    """d/dx of a stride-1 convolution: dout padded by k-1-pad, convolved with the filters rotated
    180 degrees and their in/out channels swapped."""
    F, C, kh, kw = W.shape
    rot = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    if _winograd_ok(F, C, kh, kw, 1, kh - 1 - pad, dout.shape[2], dout.shape[3]):
        return _winograd_conv(np.ascontiguousarray(dout), _winograd_filters(rot, scratch=True), np.zeros(_lanes(C), dtype=np.float32),
                              C, kh - 1 - pad)
    return _direct_conv(np.ascontiguousarray(dout), _lane_major(rot), np.zeros(_lanes(C), dtype=np.float32),
                        C, kh, kw, 1, kh - 1 - pad, kw - 1 - pad)


def _phase(Py_ssize_t r, Py_ssize_t k, Py_ssize_t stride, Py_ssize_t pad, Py_ssize_t n_in, Py_ssize_t n_out):
    """One axis of the phase r (the input positions i = stride*m + r) of a strided convolution's
    d/dx: (first tap, taps, outputs M, symmetric pad, offset). The taps reaching phase r are
    k0, k0 + stride, ... with k0 = (r + pad) mod stride, and
    dx[stride*m + r] = sum_u dout[m - P + u] * g[u] with g those taps reversed, P = taps - 1 - q,
    q = (r + pad - k0) / stride. A stride-1 convolution with symmetric pad ph >= P gives that
    sum at its output m + ph - P; ph is also large enough for all M outputs to exist."""
    k0 = (r + pad) % stride
    q = (r + pad - k0) // stride
    taps = len(range(k0, k, stride))
    M = len(range(r, n_in, stride))
    P = taps - 1 - q
    ph = max(0, P, M - 1 - P - n_out + taps)
    return k0, taps, M, ph, ph - P


def _scatter_phase(const float[:, :, :, ::1] y, float[:, :, :, ::1] dx, Py_ssize_t oh, Py_ssize_t ow,
                   Py_ssize_t rh, Py_ssize_t rw, Py_ssize_t stride, Py_ssize_t Mh, Py_ssize_t Mw):
    """dx[:, :, rh::stride, rw::stride] = y[:, :, oh:oh+Mh, ow:ow+Mw], planes split over the threads."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], nc, n, c, i, j
    cdef int nt = _nthreads(N * C * Mh * Mw)
    for nc in prange(N * C, nogil=True, schedule="static", num_threads=nt):
        n = nc // C
        c = nc - n * C
        for i in range(Mh):
            for j in range(Mw):
                dx[n, c, rh + i * stride, rw + j * stride] = y[n, c, oh + i, ow + j]


def _direct_dx_phases(dout, W, Py_ssize_t stride, Py_ssize_t pad, dx):
    """d/dx of a strided float32 convolution without im2col, into dx (every element written).

    The input pixels whose row and column have the same remainders mod the stride (a phase)
    are reached only by every stride-th tap of the filters: each phase is a stride-1 direct
    convolution of dout with that sub-filter (rotated, in/out channels swapped), written into
    its strided slice of dx (see _phase). No multiplication by an inserted zero, and the
    same FLOPs as the forward."""
    F, C, kh, kw = W.shape
    H, Wd = dx.shape[2], dx.shape[3]
    OH, OW = dout.shape[2], dout.shape[3]
    dout = np.ascontiguousarray(dout)
    zero = np.zeros(_lanes(C), dtype=np.float32)
    for rh in range(stride):
        h0, th, Mh, ph, oh = _phase(rh, kh, stride, pad, H, OH)
        for rw in range(stride):
            w0, tw, Mw, pw, ow = _phase(rw, kw, stride, pad, Wd, OW)
            if Mh == 0 or Mw == 0:
                continue
            if th == 0 or tw == 0:   # no tap reaches this phase (a kernel smaller than the stride)
                dx[:, :, rh::stride, rw::stride] = 0
                continue
            sub = W[:, :, h0::stride, w0::stride][:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
            y = _direct_conv(dout, _lane_major(np.ascontiguousarray(sub)), zero, C, th, tw, 1, ph, pw)
            _scatter_phase(y, dx, oh, ow, rh, rw, stride, Mh, Mw)


# --- batch normalisation (per channel of x viewed as (N, C, S)) --------------------

cdef inline double _row_total(const floating* p, Py_ssize_t S) noexcept nogil:
    """Sum of a row in double, in 8 independent partial sums (one chain of adds would wait
    on its own latency at every element: measured 4-5x slower)."""
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0
    cdef Py_ssize_t s = 0
    while s + 8 <= S:
        a0 += p[s]; a1 += p[s + 1]; a2 += p[s + 2]; a3 += p[s + 3]
        a4 += p[s + 4]; a5 += p[s + 5]; a6 += p[s + 6]; a7 += p[s + 7]
        s += 8
    while s < S:
        a0 += p[s]
        s += 1
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


cdef inline double _row_squares(const floating* p, Py_ssize_t S, double mu) noexcept nogil:
    """Sum of (p[s] - mu)^2 in double, 8 partial sums as in _row_total."""
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0, d0, d1, d2, d3, d4, d5, d6, d7
    cdef Py_ssize_t s = 0
    while s + 8 <= S:
        d0 = p[s] - mu; d1 = p[s + 1] - mu; d2 = p[s + 2] - mu; d3 = p[s + 3] - mu
        d4 = p[s + 4] - mu; d5 = p[s + 5] - mu; d6 = p[s + 6] - mu; d7 = p[s + 7] - mu
        a0 += d0 * d0; a1 += d1 * d1; a2 += d2 * d2; a3 += d3 * d3
        a4 += d4 * d4; a5 += d5 * d5; a6 += d6 * d6; a7 += d7 * d7
        s += 8
    while s < S:
        d0 = p[s] - mu
        a0 += d0 * d0
        s += 1
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


# Per-channel sums run over blocks of BN_BLOCK samples, in parallel: each block reads one
# contiguous stretch of memory (all channels of its samples) and keeps a partial sum per channel;
# the partials are then added in block order. The result does not depend on the thread count.
# (One thread per channel read N short rows per channel: 3-10x slower on 4x4 and 7x7 maps.)
cdef enum:
    BN_BLOCK = 4


cdef void _bn_block_sums(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, ptrdiff_t b0,
                         ptrdiff_t b1, const double* mu, double* part) noexcept nogil:
    """part[b, c] for the sample blocks b0 .. b1-1: the sum over the block's rows of channel c of
    the values (mu NULL) or of their squared distances to mu[c]; rows added in sample order."""
    cdef ptrdiff_t blk
    cdef Py_ssize_t c, n, n1
    cdef double* acc
    for blk in range(b0, b1):
        n1 = min((blk + 1) * BN_BLOCK, N)
        acc = part + blk * C
        for c in range(C):
            acc[c] = 0
        for n in range(blk * BN_BLOCK, n1):   # the block's memory in order, sample by sample
            for c in range(C):
                if mu == NULL:
                    acc[c] = acc[c] + _row_total(x + (n * C + c) * S, S)
                else:
                    acc[c] = acc[c] + _row_squares(x + (n * C + c) * S, S, mu[c])


def _bn_stats(const floating[:, :, ::1] x, floating[::1] mean, floating[::1] var):
    """Mean and biased variance per channel, accumulated in double, two passes: the sums, then
    the squared distances to the mean."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, b
    cdef ptrdiff_t nblk = (N + BN_BLOCK - 1) // BN_BLOCK, nxt, lo = 0, hi = 0, chunk
    cdef double acc
    cdef double[:, ::1] part = np.empty((nblk, C), dtype=np.float64)
    cdef double[::1] mu = np.empty(C, dtype=np.float64)
    cdef const double* centre = NULL   # the first pass sums the values, the second their squares
    cdef int done, step, nt = _pass_threads(N * C * S, COST_BN_STATS)
    chunk = ns_chunk(nblk, BN_BLOCK * C * S, nt)
    for step in range(2):
        nxt = 0
        done = 0
        with nogil, team(num_threads=nt):
            lo = ns_claim(&nxt, chunk, nblk)
            while lo >= 0:
                hi = min(lo + chunk, nblk)
                _bn_block_sums(&x[0, 0, 0], N, C, S, lo, hi, centre, &part[0, 0])
                lo = ns_claim(&nxt, chunk, nblk)
            ns_team_done(&done)
        for c in range(C):
            acc = 0
            for b in range(nblk):
                acc = acc + part[b, c]
            if centre == NULL:
                mu[c] = acc / (N * S)
            else:
                mean[c] = <floating>mu[c]
                var[c] = <floating>(acc / (N * S))
        centre = &mu[0]


cdef inline void _bn_row(const floating* x, floating* xhat, floating* out, Py_ssize_t S, floating mu,
                         floating inv, floating g, floating b, bint relu) noexcept nogil:
    """One (sample, channel) row of the forward; plain pointers and hoisted constants, so the compiler
    vectorizes both loops (the memoryview form ran at a fifth of a copy's speed)."""
    cdef Py_ssize_t s
    cdef floating h, o
    if relu:   # the ReLU after it, in the same pass: its expression, as _relu_span writes it
        for s in range(S):
            h = (x[s] - mu) * inv
            xhat[s] = h
            o = g * h + b
            out[s] = 0 if o <= 0 else o
    else:
        for s in range(S):
            h = (x[s] - mu) * inv
            xhat[s] = h
            out[s] = g * h + b


cdef void _bn_fwd_rows(const floating* x, const floating* gamma, const floating* beta, const floating* mean,
                      const floating* inv_std, floating* out, floating* xhat, Py_ssize_t C, Py_ssize_t S,
                      ptrdiff_t r0, ptrdiff_t r1, bint relu) noexcept nogil:
    """Rows r0 .. r1-1 of the (N*C, S) forward (row r is channel r % C)."""
    cdef ptrdiff_t r
    cdef Py_ssize_t c
    for r in range(r0, r1):
        c = r % C
        _bn_row(x + r * S, xhat + r * S, out + r * S, S, mean[c], inv_std[c], gamma[c], beta[c], relu)


def _bn_fwd(const floating[:, :, ::1] x, const floating[::1] gamma, const floating[::1] beta,
            const floating[::1] mean, const floating[::1] inv_std, floating[:, :, ::1] out,
            floating[:, :, ::1] xhat, bint relu):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef ptrdiff_t rows = N * C, nxt = 0, lo = 0, hi = 0, chunk
    cdef int done = 0, nt = _pass_threads(N * C * S, COST_BN_FORWARD)
    chunk = ns_chunk(rows, S, nt)
    with nogil, team(num_threads=nt):
        lo = ns_claim(&nxt, chunk, rows)
        while lo >= 0:
            hi = min(lo + chunk, rows)
            _bn_fwd_rows(&x[0, 0, 0], &gamma[0], &beta[0], &mean[0], &inv_std[0], &out[0, 0, 0],
                         &xhat[0, 0, 0], C, S, lo, hi, relu)
            lo = ns_claim(&nxt, chunk, rows)
        ns_team_done(&done)


cdef inline double _row_dot(const floating* p, const floating* q, Py_ssize_t S) noexcept nogil:
    """Sum of p[s] * q[s] in double, 8 partial sums as in _row_total."""
    cdef double a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0
    cdef Py_ssize_t s = 0
    while s + 8 <= S:
        a0 += <double>p[s] * q[s]; a1 += <double>p[s + 1] * q[s + 1]
        a2 += <double>p[s + 2] * q[s + 2]; a3 += <double>p[s + 3] * q[s + 3]
        a4 += <double>p[s + 4] * q[s + 4]; a5 += <double>p[s + 5] * q[s + 5]
        a6 += <double>p[s + 6] * q[s + 6]; a7 += <double>p[s + 7] * q[s + 7]
        s += 8
    while s < S:
        a0 += <double>p[s] * q[s]
        s += 1
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


cdef inline void _bn_dx_row(const floating* d, const floating* xh, floating* o, Py_ssize_t S, floating scale,
                            floating mb, floating mg) noexcept nogil:
    """One row of d/dx (o may be d: each element is read before it is written)."""
    cdef Py_ssize_t s
    for s in range(S):
        o[s] = scale * (d[s] - mb - xh[s] * mg)


cdef void _bn_bwd_block_sums(const floating* dout, const floating* xh, const floating* r, floating* o,
                             Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, ptrdiff_t b0, ptrdiff_t b1,
                             double* pb, double* pg) noexcept nogil:
    """pb[b, c] = sum of the upstream gradient, pg[b, c] = its dot product with xhat, over the rows
    of channel c in the sample blocks b0 .. b1-1, rows added in sample order. With r (the
    output of a fused ReLU), each row first passes the ReLU's backward into o (dout where
    r > 0, else 0: a loop the compiler vectorizes; a branch per element mispredicts on
    half-positive data, measured 3x slower) and the sums read o."""
    cdef ptrdiff_t blk
    cdef Py_ssize_t c, n, n1, row, s
    cdef double* sb
    cdef double* sg
    cdef const floating* src
    for blk in range(b0, b1):
        n1 = min((blk + 1) * BN_BLOCK, N)
        sb = pb + blk * C
        sg = pg + blk * C
        for c in range(C):
            sb[c] = 0
            sg[c] = 0
        for n in range(blk * BN_BLOCK, n1):   # the block's memory in order, sample by sample
            for c in range(C):
                row = (n * C + c) * S
                src = dout + row
                if r != NULL:
                    for s in range(S):
                        o[row + s] = dout[row + s] if r[row + s] > 0 else 0
                    src = o + row
                sb[c] = sb[c] + _row_total(src, S)
                sg[c] = sg[c] + _row_dot(src, xh + row, S)


cdef void _bn_dx_rows(const floating* src, const floating* xh, floating* o, const floating* k, Py_ssize_t C,
                      Py_ssize_t S, ptrdiff_t r0, ptrdiff_t r1) noexcept nogil:
    """Rows r0 .. r1-1 of d/dx; k holds the per-channel scale, mean of the gradient and mean of
    its product with xhat, as rows of C."""
    cdef ptrdiff_t r
    cdef Py_ssize_t c
    for r in range(r0, r1):
        c = r % C
        _bn_dx_row(src + r * S, xh + r * S, o + r * S, S, k[c], k[C + c], k[2 * C + c])


def _bn_bwd(const floating[:, :, ::1] dout, const floating[:, :, ::1] xhat, const floating[::1] gamma,
            const floating[::1] inv_std, bint train, floating[:, :, ::1] dx, floating[::1] dgamma,
            floating[::1] dbeta, const floating[:, :, ::1] relu_out):
    """relu_out: None, or the output of a ReLU fused into the forward. Then dx first receives the
    ReLU's backward of dout (in the pass that sums it), and the batchnorm's backward reads and
    overwrites it in place. The sums run by sample blocks (see BN_BLOCK)."""
    cdef Py_ssize_t N = dout.shape[0], C = dout.shape[1], S = dout.shape[2], c, b
    cdef ptrdiff_t nblk = (N + BN_BLOCK - 1) // BN_BLOCK, rows = N * C, nxt = 0, lo = 0, hi = 0, chunk
    cdef double sb, sg
    cdef double m = N * S
    cdef const floating* src = &dout[0, 0, 0]
    cdef const floating* r = NULL
    cdef floating* o = &dx[0, 0, 0]
    cdef const floating* xh = &xhat[0, 0, 0]
    cdef double[:, ::1] pb = np.empty((nblk, C), dtype=np.float64)
    cdef double[:, ::1] pg = np.empty((nblk, C), dtype=np.float64)
    cdef floating[:, ::1] k = np.empty((3, C), dtype=np.float32 if floating is float else np.float64)
    cdef int done = 0, nt = _pass_threads(N * C * S, COST_BN_BACKWARD)
    if relu_out is not None:
        r = &relu_out[0, 0, 0]
    chunk = ns_chunk(nblk, BN_BLOCK * C * S, nt)
    with nogil, team(num_threads=nt):
        lo = ns_claim(&nxt, chunk, nblk)
        while lo >= 0:
            hi = min(lo + chunk, nblk)
            _bn_bwd_block_sums(src, xh, r, o, N, C, S, lo, hi, &pb[0, 0], &pg[0, 0])
            lo = ns_claim(&nxt, chunk, nblk)
        ns_team_done(&done)
    if r != NULL:
        src = o
    for c in range(C):
        sb = 0
        sg = 0
        for b in range(nblk):
            sb = sb + pb[b, c]
            sg = sg + pg[b, c]
        dbeta[c] = <floating>sb
        dgamma[c] = <floating>sg
        k[0, c] = gamma[c] * inv_std[c]
        k[1, c] = <floating>(sb / m) if train else 0
        k[2, c] = <floating>(sg / m) if train else 0
    chunk = ns_chunk(rows, S, nt)
    nxt = 0
    done = 0
    with nogil, team(num_threads=nt):
        lo = ns_claim(&nxt, chunk, rows)
        while lo >= 0:
            hi = min(lo + chunk, rows)
            _bn_dx_rows(src, xh, o, &k[0, 0], C, S, lo, hi)
            lo = ns_claim(&nxt, chunk, rows)
        ns_team_done(&done)


def batchnorm_stats(x):
    """Per-channel mean and biased variance of x (N, C, S): over the N*S values of each channel."""
    if not _supported(x):
        return _ref.batchnorm_stats(x)
    x = np.ascontiguousarray(x)
    mean = np.empty(x.shape[1], dtype=x.dtype)
    var = np.empty(x.shape[1], dtype=x.dtype)
    if x.shape[0] * x.shape[2] == 0:
        return _ref.batchnorm_stats(x)
    _bn_stats(x, mean, var)
    return mean, var


def batchnorm_forward(x, gamma, beta, mean, inv_std, relu=False):
    """x (N, C, S) -> (out, xhat): xhat = (x - mean) * inv_std, out = gamma * xhat + beta per channel;
    with ``relu``, out is max(out, 0) written in the same pass."""
    if not _supported(x, gamma, beta, mean, inv_std):
        return _ref.batchnorm_forward(x, gamma, beta, mean, inv_std, relu)
    x = np.ascontiguousarray(x)
    out, xhat = np.empty_like(x), np.empty_like(x)
    if x.size:
        _bn_fwd(x, np.ascontiguousarray(gamma), np.ascontiguousarray(beta), np.ascontiguousarray(mean),
                np.ascontiguousarray(inv_std), out, xhat, relu)
    return out, xhat


def batchnorm_backward(dout, xhat, gamma, inv_std, train, relu_out=None):
    """(dx, dgamma, dbeta); see the reference for the formulas (batch or running statistics) and
    for ``relu_out`` (a ReLU fused into the forward: dout goes back through it first)."""
    if not _supported(dout, xhat, gamma, inv_std) or (relu_out is not None and not _supported(relu_out)):
        return _ref.batchnorm_backward(dout, xhat, gamma, inv_std, train, relu_out)
    dout, xhat = np.ascontiguousarray(dout), np.ascontiguousarray(xhat)
    if relu_out is not None:
        relu_out = np.ascontiguousarray(relu_out)
        if relu_out.shape != dout.shape or relu_out.dtype != dout.dtype:
            return _ref.batchnorm_backward(dout, xhat, gamma, inv_std, train, relu_out)
    dx = np.empty_like(dout)
    dgamma = np.zeros(dout.shape[1], dtype=dout.dtype)
    dbeta = np.zeros(dout.shape[1], dtype=dout.dtype)
    if dout.size:
        _bn_bwd(dout, xhat, np.ascontiguousarray(gamma), np.ascontiguousarray(inv_std), train, dx, dgamma, dbeta,
                relu_out)
    return dx, dgamma, dbeta


# --- comparing arrays -------------------------------------------------------------

def same_bits(pairs):
    """Whether the two arrays of every (a, b) pair have the same shape, dtype and bytes (the
    reference's rule): memcmp over C-contiguous pairs, one call for a model's weights (predict
    checks ~100 arrays against copies on every call; np.array_equal cost 4 us of Python each)."""
    cdef Py_buffer ba, bb
    cdef int diff = 0
    for a, b in pairs:
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not (a.flags.c_contiguous and b.flags.c_contiguous):
            if not _ref.same_bits([(a, b)]):
                return False
            continue
        PyObject_GetBuffer(a, &ba, PyBUF_C_CONTIGUOUS)
        try:
            PyObject_GetBuffer(b, &bb, PyBUF_C_CONTIGUOUS)
            with nogil:
                diff = memcmp(ba.buf, bb.buf, ba.len)
            PyBuffer_Release(&bb)
        finally:
            PyBuffer_Release(&ba)
        if diff:
            return False
    return True


# --- float16 rounding ------------------------------------------------------------

def round_half(x):
    """Round a float32 array to float16 precision in place (numpy's astype(float16) rule)."""
    cdef float[::1] v
    cdef int done = 1
    if not NS_HAS_FLOAT16 or x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        return _ref.round_half(x)
    v = x.reshape(-1)
    if v.shape[0]:
        with nogil:
            done = ns_round_half(&v[0], v.shape[0], netspec_max_threads())
    return x if done else _ref.round_half(x)


# --- ReLU ----------------------------------------------------------------------

cdef inline void _relu_span(const floating* x, floating* out, ptrdiff_t lo, ptrdiff_t hi) noexcept nogil:
    cdef ptrdiff_t i
    for i in range(lo, hi):
        out[i] = 0 if x[i] <= 0 else x[i]   # NaN stays NaN, as with numpy's maximum


cdef inline void _relu_mask_span(const floating* dout, const floating* out, floating* dx,
                                 ptrdiff_t lo, ptrdiff_t hi) noexcept nogil:
    cdef ptrdiff_t i
    for i in range(lo, hi):
        dx[i] = dout[i] if out[i] > 0 else 0


def _relu(const floating[::1] a, const floating[::1] b, floating[::1] out, bint backward):
    """out = max(a, 0); with ``backward``, out = a where b (the forward's output) > 0, else 0."""
    cdef ptrdiff_t n = a.shape[0], nxt = 0, lo = 0, hi = 0
    cdef int done = 0, nt = _pass_threads(n, COST_RELU)
    cdef ptrdiff_t chunk = ns_chunk(n, 1, nt)
    with nogil, team(num_threads=nt):
        lo = ns_claim(&nxt, chunk, n)
        while lo >= 0:
            hi = min(lo + chunk, n)
            if backward:
                _relu_mask_span(&a[0], &b[0], &out[0], lo, hi)
            else:
                _relu_span(&a[0], &out[0], lo, hi)
            lo = ns_claim(&nxt, chunk, n)
        ns_team_done(&done)


def relu_forward(x, out=None):
    """out = max(x, 0): a new array, or written into ``out`` (C-contiguous; may be ``x`` itself)."""
    if not _supported(x) or (out is not None and not out.flags.c_contiguous):
        return _ref.relu_forward(x, out=out)
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty_like(x)
    if x.size:
        flat = x.reshape(-1)
        _relu(flat, flat, out.reshape(-1), False)
    return out


def relu_backward(dout, out):
    """dx = dout where the forward output was positive (x > 0), else 0."""
    if not _supported(dout, out):
        return _ref.relu_backward(dout, out)
    dout, out = np.ascontiguousarray(dout), np.ascontiguousarray(out)
    dx = np.empty_like(dout)
    if dx.size:
        _relu(dout.reshape(-1), out.reshape(-1), dx.reshape(-1), True)
    return dx


# --- pooling -----------------------------------------------------------------

cdef void _maxpool_planes(const floating* x, floating* out, int64_t* arg, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                          Py_ssize_t pad, ptrdiff_t p0, ptrdiff_t p1) noexcept nogil:
    """Max pooling of the (sample, channel) planes p0 .. p1-1; arg NULL: no argmax wanted."""
    cdef ptrdiff_t nc
    cdef Py_ssize_t oh, ow, i, j, i0, i1, j0, j1, a
    cdef bint take
    cdef floating best, v
    cdef const floating* plane
    cdef const floating* row
    cdef floating* o
    cdef int64_t* ao
    for nc in range(p0, p1):
        plane = x + nc * H * W
        o = out + nc * OH * OW
        ao = arg + nc * OH * OW if arg != NULL else NULL
        for oh in range(OH):
            i0 = _win_lo(oh, stride, pad)
            i1 = _win_hi(oh, stride, pad, H, kh)
            for ow in range(OW):
                j0 = _win_lo(ow, stride, pad)
                j1 = _win_hi(ow, stride, pad, W, kw)
                # numpy's argmax over the window: the first maximum, or the first NaN (which
                # then stays); padding is -inf, so an all -inf window reports index 0.
                # Selects instead of branches: random data mispredicts them.
                best = -INFINITY
                a = 0
                for i in range(i0, i1):
                    row = plane + (oh * stride + i - pad) * W + ow * stride - pad
                    for j in range(j0, j1):
                        v = row[j]
                        take = (v > best) | ((v != v) & (best == best))
                        best = v if take else best
                        a = (i * kw + j) if take else a
                o[oh * OW + ow] = best
                if ao != NULL:
                    ao[oh * OW + ow] = a


cdef void _maxpool2x2(const floating* x, floating* out, int64_t* arg, Py_ssize_t H, Py_ssize_t W,
                      Py_ssize_t OH, Py_ssize_t OW, ptrdiff_t p0, ptrdiff_t p1) noexcept nogil:
    """The 2x2, stride-2, unpadded max pool (the book's and most CNNs'): the four candidates of a
    window in a straight line, no bounds to work out per output (measured 4-6x faster than the
    general loop). The general loop's result: the first maximum in row order, or the first NaN
    (as numpy's argmax). Written as selects only, so the compiler vectorizes the loop: the
    index kept by a chain of compare-and-take measured 10x slower (branches)."""
    cdef ptrdiff_t nc
    cdef Py_ssize_t oh, ow
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* o
    cdef int64_t* ao
    cdef floating best, v0, v1, v2, v3
    cdef bint n0, n1, n2, n3
    cdef int64_t a
    for nc in range(p0, p1):
        for oh in range(OH):
            r0 = x + nc * H * W + 2 * oh * W
            r1 = r0 + W
            o = out + nc * OH * OW + oh * OW
            ao = arg + nc * OH * OW + oh * OW if arg != NULL else NULL
            for ow in range(OW):
                v0 = r0[2 * ow]
                v1 = r0[2 * ow + 1]
                v2 = r1[2 * ow]
                v3 = r1[2 * ow + 1]
                n0 = v0 != v0
                n1 = v1 != v1
                n2 = v2 != v2
                n3 = v3 != v3
                best = v0 if v0 > v1 else v1   # the maximum of the non-NaN values (-inf if none) ...
                best = v0 if n1 else best
                best = v1 if n0 else best
                best = v2 if v2 > best else best
                best = v3 if v3 > best else best
                # ... unless one is NaN: their sum is then NaN
                best = (v0 + v1) + (v2 + v3) if n0 | n1 | n2 | n3 else best
                o[ow] = best
                if ao != NULL:
                    # the first that is the maximum, or the first NaN (then best is NaN: equals nothing)
                    a = 3
                    a = 2 if (v2 == best) | n2 else a
                    a = 1 if (v1 == best) | n1 else a
                    a = 0 if (v0 == best) | n0 else a
                    ao[ow] = a


def _maxpool_fwd(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] out,
                 int64_t[:, :, :, ::1] arg, Py_ssize_t kh, Py_ssize_t kw,
                 Py_ssize_t stride, Py_ssize_t pad):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef ptrdiff_t planes = N * C, nxt = 0, lo = 0, hi = 0, chunk
    cdef int64_t* arg0 = NULL   # None: inference, no argmax wanted
    cdef bint two = kh == 2 and kw == 2 and stride == 2 and pad == 0
    if arg is not None:
        arg0 = &arg[0, 0, 0, 0]
    cdef int done = 0, nt = _pass_threads(N * C * (H * W + OH * OW), COST_POOL)
    chunk = ns_chunk(planes, H * W + OH * OW, nt)
    with nogil, team(num_threads=nt):
        lo = ns_claim(&nxt, chunk, planes)
        while lo >= 0:
            hi = min(lo + chunk, planes)
            if two:
                _maxpool2x2(&x[0, 0, 0, 0], &out[0, 0, 0, 0], arg0, H, W, OH, OW, lo, hi)
            else:
                _maxpool_planes(&x[0, 0, 0, 0], &out[0, 0, 0, 0], arg0, H, W, OH, OW, kh, kw, stride, pad,
                                lo, hi)
            lo = ns_claim(&nxt, chunk, planes)
        ns_team_done(&done)


cdef void _maxpool_bwd_planes(const floating* dout, const int64_t* arg, floating* dx, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kw, Py_ssize_t stride,
                              Py_ssize_t pad, ptrdiff_t p0, ptrdiff_t p1) noexcept nogil:
    cdef ptrdiff_t nc
    cdef Py_ssize_t oh, ow, h, w, a, q
    cdef floating* plane
    for nc in range(p0, p1):
        plane = dx + nc * H * W
        memset(plane, 0, H * W * sizeof(floating))
        for oh in range(OH):
            for ow in range(OW):
                q = nc * OH * OW + oh * OW + ow
                a = arg[q]
                h = oh * stride + a // kw - pad
                w = ow * stride + a % kw - pad
                if h >= 0 and h < H and w >= 0 and w < W:
                    plane[h * W + w] += dout[q]


cdef void _maxpool2x2_bwd_planes(const floating* dout, const int64_t* arg, floating* dx, Py_ssize_t H,
                                 Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, ptrdiff_t p0,
                                 ptrdiff_t p1) noexcept nogil:
    """The backward of _maxpool2x2 on planes p0 .. p1-1: each window's four inputs written at once,
    dout (as 0 + dout, the value the general loop's zero-fill-and-add gives) at the winner and 0
    elsewhere, so no plane is cleared first and the loop vectorizes. A last row or column that
    no window covers (odd H or W) is zeroed."""
    cdef ptrdiff_t nc
    cdef Py_ssize_t oh, ow, h
    cdef const floating* d
    cdef const int64_t* ar
    cdef floating* q0
    cdef floating* q1
    cdef floating g, k, zero = 0
    for nc in range(p0, p1):
        for oh in range(OH):
            d = dout + nc * OH * OW + oh * OW
            ar = arg + nc * OH * OW + oh * OW
            q0 = dx + nc * H * W + 2 * oh * W
            q1 = q0 + W
            for ow in range(OW):
                g = zero + d[ow]
                k = <floating>ar[ow]   # as wide as g: with an int64 beside a float the loop did not vectorize
                q0[2 * ow] = g if k == 0 else zero
                q0[2 * ow + 1] = g if k == 1 else zero
                q1[2 * ow] = g if k == 2 else zero
                q1[2 * ow + 1] = g if k == 3 else zero
            if W > 2 * OW:
                q0[W - 1] = 0
                q1[W - 1] = 0
        for h in range(2 * OH, H):
            memset(dx + nc * H * W + h * W, 0, W * sizeof(floating))


def _maxpool_bwd(const floating[:, :, :, ::1] dout, const int64_t[:, :, :, ::1] arg,
                 floating[:, :, :, ::1] dx, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride,
                 Py_ssize_t pad):
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dout.shape[2], OW = dout.shape[3]
    cdef ptrdiff_t planes = N * C, nxt = 0, lo = 0, hi = 0, chunk
    cdef int done = 0, nt = _pass_threads(N * C * (OH * OW + H * W), COST_POOL)
    cdef bint two = kh == 2 and kw == 2 and stride == 2 and pad == 0
    chunk = ns_chunk(planes, H * W + OH * OW, nt)
    with nogil, team(num_threads=nt):
        lo = ns_claim(&nxt, chunk, planes)
        while lo >= 0:
            hi = min(lo + chunk, planes)
            if two:
                _maxpool2x2_bwd_planes(&dout[0, 0, 0, 0], &arg[0, 0, 0, 0], &dx[0, 0, 0, 0], H, W, OH, OW, lo, hi)
            else:
                _maxpool_bwd_planes(&dout[0, 0, 0, 0], &arg[0, 0, 0, 0], &dx[0, 0, 0, 0], H, W, OH, OW, kw, stride, pad, lo, hi)
            lo = ns_claim(&nxt, chunk, planes)
        ns_team_done(&done)


cdef void _avgpool_planes(const floating* x, floating* out, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                          Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                          ptrdiff_t p0, ptrdiff_t p1) noexcept nogil:
    """Window means of the planes p0 .. p1-1, padding counting as zeros in the divisor kh*kw."""
    cdef ptrdiff_t nc
    cdef Py_ssize_t oh, ow, i, j, h, i0, i1, j0, j1
    cdef floating t
    cdef floating area = kh * kw
    cdef const floating* plane
    for nc in range(p0, p1):
        plane = x + nc * H * W
        for oh in range(OH):
            i0 = _win_lo(oh, stride, pad)
            i1 = _win_hi(oh, stride, pad, H, kh)
            for ow in range(OW):
                j0 = _win_lo(ow, stride, pad)
                j1 = _win_hi(ow, stride, pad, W, kw)
                t = 0
                for i in range(i0, i1):
                    h = oh * stride + i - pad
                    for j in range(j0, j1):
                        t = t + plane[h * W + ow * stride + j - pad]
                out[nc * OH * OW + oh * OW + ow] = t / area


cdef void _avgpool_bwd_planes(const floating* dout, floating* dx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                              Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride, Py_ssize_t pad,
                              ptrdiff_t p0, ptrdiff_t p1) noexcept nogil:
    """Adjoint of _avgpool_planes: every input in a window gets dout / (kh*kw); dx is overwritten.
    A separate loop nest rather than a flag on the forward one: measured 15-25% faster."""
    cdef ptrdiff_t nc
    cdef Py_ssize_t oh, ow, i, j, h, i0, i1, j0, j1
    cdef floating share
    cdef floating area = kh * kw
    cdef floating* plane
    for nc in range(p0, p1):
        plane = dx + nc * H * W
        memset(plane, 0, H * W * sizeof(floating))
        for oh in range(OH):
            i0 = _win_lo(oh, stride, pad)
            i1 = _win_hi(oh, stride, pad, H, kh)
            for ow in range(OW):
                j0 = _win_lo(ow, stride, pad)
                j1 = _win_hi(ow, stride, pad, W, kw)
                share = dout[nc * OH * OW + oh * OW + ow] / area
                for i in range(i0, i1):
                    h = oh * stride + i - pad
                    for j in range(j0, j1):
                        plane[h * W + ow * stride + j - pad] += share


def _avgpool(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] out, Py_ssize_t kh, Py_ssize_t kw,
             Py_ssize_t stride, Py_ssize_t pad, bint adjoint):
    """Average pooling of x (N, C, H, W) into out (N, C, OH, OW); with ``adjoint``, its backward:
    the gradient out (N, C, OH, OW) spread into x (N, C, H, W), which it overwrites. (Both typed
    read-only, so a read-only input is accepted either way; the caller's destination is a fresh
    array.)"""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = out.shape[2], OW = out.shape[3]
    cdef ptrdiff_t planes = N * C, nxt = 0, lo = 0, hi = 0, chunk
    cdef int done = 0, nt = _pass_threads(N * C * (H * W + OH * OW * kh * kw), COST_POOL)
    chunk = ns_chunk(planes, H * W + OH * OW * kh * kw, nt)
    with nogil, team(num_threads=nt):
        lo = ns_claim(&nxt, chunk, planes)
        while lo >= 0:
            hi = min(lo + chunk, planes)
            if adjoint:
                _avgpool_bwd_planes(&out[0, 0, 0, 0], <floating*>&x[0, 0, 0, 0], H, W, OH, OW, kh, kw, stride,
                                    pad, lo, hi)
            else:
                _avgpool_planes(&x[0, 0, 0, 0], <floating*>&out[0, 0, 0, 0], H, W, OH, OW, kh, kw, stride, pad,
                                lo, hi)
            lo = ns_claim(&nxt, chunk, planes)
        ns_team_done(&done)


def _pool_shape(x_shape, kh, kw, stride, pad):
    _check_window(kh, kw, stride, pad)
    N, C, H, W = x_shape
    return N, C, out_size(H, kh, stride, pad), out_size(W, kw, stride, pad)


def maxpool2d_forward(x, kh, kw, stride, pad):
    """x (N,C,H,W) -> (out (N,C,OH,OW), argmax int64 flat window index)."""
    if not _supported(x):
        return _ref.maxpool2d_forward(x, kh, kw, stride, pad)
    x = np.ascontiguousarray(x)
    oshape = _pool_shape(x.shape, kh, kw, stride, pad)
    out = np.empty(oshape, dtype=x.dtype)
    arg = np.empty(oshape, dtype=np.int64)
    if out.size:
        _maxpool_fwd(x, out, arg, kh, kw, stride, pad)
    return out, arg


def maxpool2d_infer(x, kh, kw, stride, pad, out=None):
    """The max of each window, without the argmax training needs; written into ``out`` if given."""
    if not _supported(x) or (out is not None and not out.flags.c_contiguous):
        return _ref.maxpool2d_infer(x, kh, kw, stride, pad, out=out)
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(_pool_shape(x.shape, kh, kw, stride, pad), dtype=x.dtype)
    if out.size:
        _maxpool_fwd(x, out, None, kh, kw, stride, pad)
    return out


def pool_workspace(x_shape, pad, itemsize):
    """Bytes maxpool2d_infer / avgpool2d_forward allocate besides the output: none (the numpy
    reference's padded copy for other dtypes)."""
    return 0 if itemsize in (4, 8) else _ref.pool_workspace(x_shape, pad, itemsize)


def maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad):
    """Route each dout element to the input position that won its window."""
    if not _supported(dout):
        return _ref.maxpool2d_backward(dout, argmax, x_shape, kh, kw, stride, pad)
    _check_window(kh, kw, stride, pad)
    dout = np.ascontiguousarray(dout)
    argmax = np.ascontiguousarray(argmax, dtype=np.int64)
    dx = np.empty(tuple(x_shape), dtype=dout.dtype)
    if dx.size:
        _maxpool_bwd(dout, argmax, dx, kh, kw, stride, pad)
    return dx


def avgpool2d_forward(x, kh, kw, stride, pad, out=None):
    """Mean over each window; padding counts as zeros in the divisor kh*kw."""
    if not _supported(x) or (out is not None and not (out.flags.c_contiguous and out.flags.writeable)):
        return _ref.avgpool2d_forward(x, kh, kw, stride, pad, out=out)
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(_pool_shape(x.shape, kh, kw, stride, pad), dtype=x.dtype)
    if out.size:
        _avgpool(x, out, kh, kw, stride, pad, False)
    return out


cdef floating _pairwise_sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """The sum of a[0 .. n) in a's own precision, in numpy's pairwise order (its add.reduce
    over a contiguous run): one chain below 8 values; 8 interleaved partial sums, combined as
    ((0+1)+(2+3))+((4+5)+(6+7)), then the tail, up to 128; halves (the first a multiple of 8)
    above that. The same order gives the same rounding: values equal to numpy's bit for bit."""
    cdef floating res, r0, r1, r2, r3, r4, r5, r6, r7
    cdef Py_ssize_t i, n2
    if n < 8:
        res = 0
        for i in range(n):
            res = res + a[i]
        return res
    if n <= 128:
        r0 = a[0]; r1 = a[1]; r2 = a[2]; r3 = a[3]; r4 = a[4]; r5 = a[5]; r6 = a[6]; r7 = a[7]
        i = 8
        while i < n - n % 8:
            r0 = r0 + a[i]; r1 = r1 + a[i + 1]; r2 = r2 + a[i + 2]; r3 = r3 + a[i + 3]
            r4 = r4 + a[i + 4]; r5 = r5 + a[i + 5]; r6 = r6 + a[i + 6]; r7 = r7 + a[i + 7]
            i = i + 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res = res + a[i]
            i = i + 1
        return res
    n2 = n // 2
    n2 = n2 - n2 % 8
    return _pairwise_sum(a, n2) + _pairwise_sum(a + n2, n - n2)


cdef void _gap_rows(const floating* x, floating* out, Py_ssize_t S, ptrdiff_t r0, ptrdiff_t r1) noexcept nogil:
    cdef ptrdiff_t r
    cdef floating zero = 0, count = S
    for r in range(r0, r1):
        # numpy's mean: the reduction starts from add's identity, then divides in x's dtype
        out[r] = (zero + _pairwise_sum(x + r * S, S)) / count


def _gap_fwd(const floating[:, ::1] x, floating[::1] out):
    cdef Py_ssize_t S = x.shape[1]
    cdef ptrdiff_t planes = x.shape[0], nxt = 0, lo = 0, hi = 0, chunk
    cdef int done = 0, nt = _pass_threads(planes * S, COST_RELU)
    chunk = ns_chunk(planes, S, nt)
    with nogil, team(num_threads=nt):
        lo = ns_claim(&nxt, chunk, planes)
        while lo >= 0:
            hi = min(lo + chunk, planes)
            _gap_rows(&x[0, 0], &out[0], S, lo, hi)
            lo = ns_claim(&nxt, chunk, planes)
        ns_team_done(&done)


def global_avgpool_forward(x, out=None):
    """(N, C, H, W) -> (N, C): the mean of each channel's map, in x's dtype: numpy's values
    (the same order of additions, see _pairwise_sum), in one pass over contiguous rows split
    over the threads (numpy's mean over two short axes took 0.34 ms on resnet_fashion's last
    maps, 100x128x4x4)."""
    if x.ndim != 4 or not _supported(x) or (out is not None and not out.flags.c_contiguous):
        return _ref.global_avgpool_forward(x, out=out)
    N, C, H, W = x.shape
    if out is None:
        out = np.empty((N, C), dtype=x.dtype)
    if N * C and H * W:
        _gap_fwd(np.ascontiguousarray(x).reshape(N * C, H * W), out.reshape(N * C))
    elif N * C:
        out[...] = np.nan   # the mean of nothing, as numpy gives it
    return out


def avgpool2d_backward(dout, x_shape, kh, kw, stride, pad):
    """Each input in a window receives dout / (kh*kw)."""
    if not _supported(dout):
        return _ref.avgpool2d_backward(dout, x_shape, kh, kw, stride, pad)
    _check_window(kh, kw, stride, pad)
    dout = np.ascontiguousarray(dout)
    dx = np.empty(tuple(x_shape), dtype=dout.dtype)
    if dx.size:
        _avgpool(dx, dout, kh, kw, stride, pad, True)
    return dx


# --- optimizer updates ---------------------------------------------------------
# One pass over contiguous memory per update, in plain loops the C compiler
# vectorizes. Each loop mirrors the reference's operation order term by term,
# so both backends round alike: the hyper-parameters arrive as Python floats,
# are combined in double where the reference combines them in Python
# (e.g. (1 + m) * lr), and are rounded once to the parameter's dtype, as
# numpy does with a Python scalar. The build enables no FMA contraction.

cdef struct Hyper:
    # every hyper-parameter an update may read, already combined as the loops need it
    double lr             # learning rate (Adam: the bias-corrected lr_t)
    double momentum       # m
    double momentum_sq    # m * m (Nesterov)
    double lr_plus        # (1 + m) * lr (Nesterov)
    double decay          # RMSprop's d
    double one_minus_decay
    double one_minus_beta1
    double one_minus_beta2
    double eps
    double weight_decay


cdef enum Update:
    SGD, MOMENTUM, NESTEROV, ADAGRAD, RMSPROP, ADAM


cdef inline floating _grad(const floating* g, const floating* p, Py_ssize_t i,
                           floating wd) noexcept nogil:
    """The gradient with weight decay: g + wd * p (exactly g when wd is 0)."""
    return g[i] + wd * p[i] if wd != 0 else g[i]


cdef void _sgd(floating* p, const floating* g, Py_ssize_t n,
               floating lr, floating wd) noexcept nogil:
    """p -= lr * g."""
    cdef Py_ssize_t i
    for i in range(n):
        p[i] = p[i] - lr * _grad(g, p, i, wd)


cdef void _momentum(floating* p, const floating* g, floating* v, Py_ssize_t n,
                    floating lr, floating momentum, floating wd) noexcept nogil:
    """v = m*v - lr*g; p += v."""
    cdef Py_ssize_t i
    cdef floating gi, vi
    for i in range(n):
        gi = _grad(g, p, i, wd)
        vi = v[i] * momentum - lr * gi
        v[i] = vi
        p[i] = p[i] + vi


cdef void _nesterov(floating* p, const floating* g, floating* v, Py_ssize_t n,
                    floating lr, floating momentum, floating momentum_sq, floating lr_plus,
                    floating wd) noexcept nogil:
    """p += m*m*v - (1+m)*lr*g with the old v; then v = m*v - lr*g."""
    cdef Py_ssize_t i
    cdef floating gi
    for i in range(n):
        gi = _grad(g, p, i, wd)
        p[i] = (p[i] + momentum_sq * v[i]) - lr_plus * gi
        v[i] = v[i] * momentum - lr * gi


cdef void _rmsprop(floating* p, const floating* g, floating* h, Py_ssize_t n,
                   floating lr, floating decay, floating one_minus_decay, floating eps,
                   floating wd) noexcept nogil:
    """h = d*h + (1-d)*g*g; p -= lr * g / (sqrt(h) + eps)."""
    cdef Py_ssize_t i
    cdef floating gi, hi
    for i in range(n):
        gi = _grad(g, p, i, wd)
        hi = h[i] * decay + (one_minus_decay * gi) * gi
        h[i] = hi
        p[i] = p[i] - (lr * gi) / (_sqrt(hi) + eps)


cdef void _adam(floating* p, const floating* g, floating* m, floating* v, Py_ssize_t n,
                floating lr_t, floating one_minus_beta1, floating one_minus_beta2, floating eps,
                floating wd) noexcept nogil:
    """m += (1-b1)(g-m); v += (1-b2)(g*g-v); p -= lr_t * m / (sqrt(v) + eps)."""
    cdef Py_ssize_t i
    cdef floating gi, mi, vi
    for i in range(n):
        gi = _grad(g, p, i, wd)
        mi = m[i] + one_minus_beta1 * (gi - m[i])
        vi = v[i] + one_minus_beta2 * (gi * gi - v[i])
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (lr_t * mi) / (_sqrt(vi) + eps)


cdef void _update_block(Update kind, floating* p, const floating* g, floating* s1, floating* s2,
                        Py_ssize_t n, const Hyper* hp) noexcept nogil:
    """One thread's contiguous block of an update; s1, s2 are the state arrays (or unused)."""
    cdef floating wd = <floating>hp.weight_decay
    if kind == SGD:
        _sgd(p, g, n, lr=<floating>hp.lr, wd=wd)
    elif kind == MOMENTUM:
        _momentum(p, g, s1, n, lr=<floating>hp.lr, momentum=<floating>hp.momentum, wd=wd)
    elif kind == NESTEROV:
        _nesterov(p, g, s1, n, lr=<floating>hp.lr, momentum=<floating>hp.momentum,
                  momentum_sq=<floating>hp.momentum_sq, lr_plus=<floating>hp.lr_plus, wd=wd)
    elif kind == ADAGRAD:
        # h += g*g is RMSprop's h = 1*h + (1*g)*g, bit for bit (multiplying by 1 is exact)
        _rmsprop(p, g, s1, n, lr=<floating>hp.lr, decay=1, one_minus_decay=1, eps=<floating>hp.eps, wd=wd)
    elif kind == RMSPROP:
        _rmsprop(p, g, s1, n, lr=<floating>hp.lr, decay=<floating>hp.decay,
                 one_minus_decay=<floating>hp.one_minus_decay, eps=<floating>hp.eps, wd=wd)
    else:
        _adam(p, g, s1, s2, n, lr_t=<floating>hp.lr, one_minus_beta1=<floating>hp.one_minus_beta1,
              one_minus_beta2=<floating>hp.one_minus_beta2, eps=<floating>hp.eps, wd=wd)


def _update(Update kind, floating[::1] p, const floating[::1] g, floating[::1] s1,
            floating[::1] s2, Hyper hp):
    """Split p into one contiguous block per thread and update each block in one pass."""
    cdef Py_ssize_t n = p.shape[0], blk, lo, hi
    cdef floating* pp = &p[0]
    cdef const floating* gp = &g[0]
    cdef floating* p1 = &s1[0] if s1.shape[0] else NULL
    cdef floating* p2 = &s2[0] if s2.shape[0] else NULL
    cdef int nb = _nthreads(n // 4)
    for blk in prange(nb, nogil=True, schedule="static", num_threads=nb):
        lo = blk * n // nb
        hi = (blk + 1) * n // nb
        _update_block(kind, pp + lo, gp + lo, (p1 + lo) if p1 != NULL else NULL,
                      (p2 + lo) if p2 != NULL else NULL, hi - lo, &hp)


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


def _run_update(Update kind, p, g, states, Hyper hp):
    """Dispatch one update; False when the arrays need the reference path."""
    flat = _flat_state(p, *states)
    if flat is None or p.size == 0:
        return False
    g = np.ascontiguousarray(g, dtype=p.dtype)
    if g.shape != p.shape:
        g = np.broadcast_to(g, p.shape).copy()
    empty = np.zeros(0, dtype=p.dtype)
    s1 = flat[1] if len(flat) > 1 else empty
    s2 = flat[2] if len(flat) > 2 else empty
    _update(kind, flat[0], g.reshape(-1), s1, s2, hp)
    return True


def sgd_update(p, g, lr, weight_decay):
    """p -= lr * g."""
    cdef Hyper hp = Hyper(lr=lr, weight_decay=weight_decay)
    if not _run_update(SGD, p, g, (), hp):
        _ref.sgd_update(p, g, lr, weight_decay)


def momentum_update(p, g, v, lr, momentum, weight_decay):
    """v = m*v - lr*g; p += v."""
    cdef Hyper hp = Hyper(lr=lr, momentum=momentum, weight_decay=weight_decay)
    if not _run_update(MOMENTUM, p, g, (v,), hp):
        _ref.momentum_update(p, g, v, lr, momentum, weight_decay)


def nesterov_update(p, g, v, lr, momentum, weight_decay):
    """p += m*m*v - (1+m)*lr*g with the old v; then v = m*v - lr*g."""
    cdef Hyper hp = Hyper(lr=lr, momentum=momentum, momentum_sq=momentum * momentum,
                          lr_plus=(1 + momentum) * lr, weight_decay=weight_decay)
    if not _run_update(NESTEROV, p, g, (v,), hp):
        _ref.nesterov_update(p, g, v, lr, momentum, weight_decay)


def adagrad_update(p, g, h, lr, eps, weight_decay):
    """h += g*g; p -= lr * g / (sqrt(h) + eps)."""
    cdef Hyper hp = Hyper(lr=lr, eps=eps, weight_decay=weight_decay)
    if not _run_update(ADAGRAD, p, g, (h,), hp):
        _ref.adagrad_update(p, g, h, lr, eps, weight_decay)


def rmsprop_update(p, g, h, lr, decay, eps, weight_decay):
    """h = d*h + (1-d)*g*g; p -= lr * g / (sqrt(h) + eps)."""
    cdef Hyper hp = Hyper(lr=lr, decay=decay, one_minus_decay=1 - decay, eps=eps,
                          weight_decay=weight_decay)
    if not _run_update(RMSPROP, p, g, (h,), hp):
        _ref.rmsprop_update(p, g, h, lr, decay, eps, weight_decay)


def adam_update(p, g, m, v, lr_t, beta1, beta2, eps, weight_decay):
    """m += (1-b1)(g-m); v += (1-b2)(g*g-v); p -= lr_t * m / (sqrt(v) + eps)."""
    cdef Hyper hp = Hyper(lr=lr_t, one_minus_beta1=1 - beta1, one_minus_beta2=1 - beta2, eps=eps,
                          weight_decay=weight_decay)
    if not _run_update(ADAM, p, g, (m, v), hp):
        _ref.adam_update(p, g, m, v, lr_t, beta1, beta2, eps, weight_decay)
