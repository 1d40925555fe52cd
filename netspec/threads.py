"""Threads, in one place: OpenMP's wait policy for the compiled kernels, and BLAS thread limits.

Design: two thread pools can run netspec's arithmetic — the OpenMP team of the
compiled kernels (pooling, im2col, optimizer updates) and the BLAS behind
numpy's matmul. By default libgomp's idle threads spin for milliseconds after
each parallel loop; on a 2-core machine that spinning starves the BLAS threads
of the very next matrix product (measured: conv steps 10-100x slower).
``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep; it is read once, when
libgomp loads, so ``netspec.kernels`` calls ``configure_openmp()`` before it
imports the compiled module. A value the user set is kept.

``limit_blas_threads(n)`` caps the BLAS pool at run time through threadpoolctl
(no environment variable has to be set before numpy is imported). Scripts that
run many tiny matrix products (tests, examples) call it with 1.
"""
import contextlib
import os


def configure_openmp():
    """Default OMP_WAIT_POLICY to PASSIVE unless the user chose a policy; returns the policy."""
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def limit_blas_threads(n):
    """Cap the BLAS thread pools of this process at ``n`` threads (for the rest of the process).

    Returns the threadpoolctl limiter (``.restore_original_limits()`` undoes it), or None
    when threadpoolctl is not installed.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=n, user_api="blas")


_controller = None


def single_threaded_blas():
    """Context in which numpy's BLAS uses one thread; a no-op without threadpoolctl.

    The compiled backend runs its own OpenMP threads (convolutions, pooling,
    updates). A multi-threaded OpenBLAS call leaves its worker threads spinning
    for a while afterwards, on the very cores the next convolution needs; the
    dense layers' small products lose little by running on one thread.
    """
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return contextlib.nullcontext()
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def blas_info():
    """[{library, version, threads}] of the BLAS pools loaded in this process (empty without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"library": i.get("internal_api"), "version": i.get("version"), "threads": i.get("num_threads")}
            for i in threadpool_info() if i.get("user_api") == "blas"]
