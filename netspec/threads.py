"""Thread pools at run time: BLAS thread limits, and dense products split over threads.

Design: two thread pools can run netspec's arithmetic — the OpenMP team of the
compiled kernels (convolutions, pooling, optimizer updates) and the BLAS behind
numpy's matmul. Their settings at load time (OpenMP's wait policy, threads per
MPI rank) are netspec.runtime's; this module changes BLAS limits while running.

``limit_blas_threads(n)`` caps the BLAS pool at run time through threadpoolctl
(no environment variable has to be set before numpy is imported). Scripts that
run many tiny matrix products (tests, examples) call it with 1.

``blas_gemm_addresses()`` finds cblas_sgemm and cblas_dgemm in the BLAS library
numpy loaded, so the compiled kernels can call it from their own OpenMP threads
(``gemm_rows`` in csrc/_compiled.pyx); ``row_parallel_matmul`` is the Python-thread
split used where they cannot.
"""
import ctypes
import platform

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits


def limit_blas_threads(n):
    """Cap the BLAS thread pools of this process at ``n`` threads (for the rest of the process).

    Returns the threadpoolctl limiter (``.restore_original_limits()`` undoes it).
    """
    return threadpool_limits(limits=n, user_api="blas")


_blas_libraries = None


class _OneBlasThread:
    """numpy's BLAS pools at one thread inside the block, their own counts given back after."""

    def __enter__(self):
        self.saved = [(lib, lib.get_num_threads()) for lib in _blas_libraries]
        for lib, n in self.saved:
            if n != 1:
                lib.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for lib, n in self.saved:
            if n != 1:
                lib.set_num_threads(n)
        return False


def single_threaded_blas():
    """Context in which numpy's BLAS uses one thread.

    The compiled backend runs its own OpenMP threads (convolutions, pooling,
    updates). A multi-threaded OpenBLAS call leaves its worker threads spinning
    for a while afterwards, on the very cores the next convolution needs; the
    dense layers' small products lose little by running on one thread. The BLAS
    libraries are listed once (threadpoolctl), and each use only reads and sets
    their thread counts: 3 us, where a threadpoolctl limit took 17 us of every
    predict.
    """
    global _blas_libraries
    if _blas_libraries is None:  # listing the loaded libraries is slow: once, not at import
        _blas_libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _OneBlasThread()


def blas_info():
    """[{library, version, threads}] of the BLAS pools loaded in this process."""
    return [{"library": i.get("internal_api"), "version": i.get("version"), "threads": i.get("num_threads")}
            for i in threadpool_info() if i.get("user_api") == "blas"]


# CBLAS entry points, by how OpenBLAS builds name them: numpy's wheels bundle an ILP64 build
# whose symbols carry a scipy_ prefix and a 64_ suffix; system builds export plain names.
_GEMM_NAMES = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"), ("cblas_sgemm64_", "cblas_dgemm64_"),
               ("scipy_cblas_sgemm", "scipy_cblas_dgemm"), ("cblas_sgemm", "cblas_dgemm"))


def blas_gemm_addresses():
    """(address of cblas_sgemm, of cblas_dgemm) in the BLAS library numpy loaded, or (0, 0) when
    it cannot be found or called safely from C here (only x86-64 and AArch64 Linux, whose calling
    conventions let one call take both 32- and 64-bit integer arguments; see gemm_rows)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        return 0, 0
    for info in threadpool_info():
        if info.get("user_api") != "blas" or not info.get("filepath"):
            continue
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for s_name, d_name in _GEMM_NAMES:
            try:
                s_fn, d_fn = getattr(lib, s_name), getattr(lib, d_name)
            except AttributeError:
                continue
            return ctypes.cast(s_fn, ctypes.c_void_p).value, ctypes.cast(d_fn, ctypes.c_void_p).value
    return 0, 0


_pool = None


def split_worthwhile(a, b, threads):
    """Whether a @ b is worth splitting by rows over ``threads``: at least two rows a thread and
    4 MFLOP in all (below that, waking a thread costs more than it saves)."""
    return threads >= 2 and a.shape[0] >= 2 * threads and 2 * a.shape[0] * a.shape[1] * b.shape[1] >= 4_000_000


def row_parallel_matmul(a, b, threads, out=None):
    """a @ b with the rows of ``a`` split over ``threads`` Python threads, each calling a
    one-thread BLAS (numpy releases the GIL inside matmul). Used while BLAS is capped at one
    thread (``single_threaded_blas``) so the dense layers still use every core, without
    BLAS worker threads left spinning against the OpenMP kernels afterwards. Small
    products (under ~4 MFLOP) stay on the calling thread: waking a thread costs more."""
    global _pool
    rows = a.shape[0]
    if not split_worthwhile(a, b, threads):
        return np.matmul(a, b, out=out)
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="netspec-matmul")
    if out is None:
        out = np.empty((rows, b.shape[1]), dtype=np.result_type(a, b))
    cuts = [rows * k // threads for k in range(threads + 1)]

    def part(k):
        np.matmul(a[cuts[k]:cuts[k + 1]], b, out=out[cuts[k]:cuts[k + 1]])

    futures = [_pool.submit(part, k) for k in range(1, threads)]
    part(0)
    for f in futures:
        f.result()
    return out
