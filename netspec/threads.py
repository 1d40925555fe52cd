"""Thread pools at run time: BLAS thread limits, and dense products split over threads.

Design: two thread pools can run netspec's arithmetic — the OpenMP team of the
compiled kernels (convolutions, pooling, optimizer updates) and the BLAS behind
numpy's matmul. Their settings at load time (OpenMP's wait policy, threads per
MPI rank) are netspec.runtime's; this module changes BLAS limits while running.

``limit_blas_threads(n)`` caps the BLAS pool at run time through threadpoolctl
(no environment variable has to be set before numpy is imported). Scripts that
run many tiny matrix products (tests, examples) call it with 1.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits


def limit_blas_threads(n):
    """Cap the BLAS thread pools of this process at ``n`` threads (for the rest of the process).

    Returns the threadpoolctl limiter (``.restore_original_limits()`` undoes it).
    """
    return threadpool_limits(limits=n, user_api="blas")


_controller = None


def single_threaded_blas():
    """Context in which numpy's BLAS uses one thread.

    The compiled backend runs its own OpenMP threads (convolutions, pooling,
    updates). A multi-threaded OpenBLAS call leaves its worker threads spinning
    for a while afterwards, on the very cores the next convolution needs; the
    dense layers' small products lose little by running on one thread.
    """
    global _controller
    if _controller is None:  # it lists the loaded libraries once: not at import
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def blas_info():
    """[{library, version, threads}] of the BLAS pools loaded in this process."""
    return [{"library": i.get("internal_api"), "version": i.get("version"), "threads": i.get("num_threads")}
            for i in threadpool_info() if i.get("user_api") == "blas"]


_pool = None


def row_parallel_matmul(a, b, threads, out=None):
    """a @ b with the rows of ``a`` split over ``threads`` Python threads, each calling a
    one-thread BLAS (numpy releases the GIL inside matmul). Used while BLAS is capped at one
    thread (``single_threaded_blas``) so the dense layers still use every core, without
    BLAS worker threads left spinning against the OpenMP kernels afterwards. Small
    products (under ~4 MFLOP) stay on the calling thread: waking a thread costs more."""
    global _pool
    rows = a.shape[0]
    if threads < 2 or rows < 2 * threads or 2 * a.shape[0] * a.shape[1] * b.shape[1] < 4_000_000:
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
