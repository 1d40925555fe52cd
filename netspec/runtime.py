"""Process settings for netspec's compiled kernels, applied once, when they load — never on import.

What ``configure()`` does, each step keeping a value the user already set:
- OpenMP idle threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``).
  A spinning idle thread holds a core: on a 2-core machine that starved a
  BLAS product beside it (conv steps measured 10-100x slower), and beside a
  busy process a ~1 ms spin (``GOMP_SPINCOUNT=100000``) made the 2-thread
  train steps 8.0-8.5x slower than quiet (3.0-3.9x for torch; 1.4-1.6x
  sleeping). Sleeping has its own cost: waking a sleeping thread took 70-125
  us on the 2-core VMs this is measured on, so the compiled kernels end
  their parallel loops so that the master thread is not the one asleep
  (``ns_team_done`` in csrc/team.h). Any ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` you set is kept (see docs/kernels.md for what a spin
  buys on a quiet machine). libgomp reads these once, when it loads, so
  this runs before the compiled module is imported.
- Under an MPI launcher, each rank gets cores / ranks-on-this-host OpenMP
  threads (``OMP_NUM_THREADS``) and as many BLAS threads.
- glibc's malloc keeps large blocks for reuse (``configure_allocator``;
  ``NETSPEC_MALLOC=0`` leaves malloc alone).

``netspec.kernels.load()`` calls it when the first model is built (or when a
kernel is first used), so importing netspec, validating a spec or printing
the schema changes nothing in the process. While a compiled model runs, BLAS
is held at one thread (``netspec.kernels.blas_scope``) and given back after
each call; see netspec.threads.
"""
import ctypes
import os
import sys

from .distributed import launched_size, local_ranks
from .threads import limit_blas_threads

_applied = None


def configure(compiled=True):
    """Apply the settings once (the OpenMP and malloc ones only for the compiled kernels);
    return what was applied: {"omp_wait_policy", "omp_threads_per_rank", "malloc_tuned"}."""
    global _applied
    if _applied is None:
        _applied = {"omp_threads_per_rank": configure_threads(),
                    "omp_wait_policy": configure_openmp() if compiled else None,
                    "malloc_tuned": configure_allocator() if compiled else False}
    return _applied


def applied():
    """What ``configure`` applied, or None while it has not run."""
    return _applied


def configure_openmp():
    """Default OMP_WAIT_POLICY to PASSIVE unless the user chose a policy or a libgomp spin
    count; returns the policy in use ("spin <count>" for a spin count alone)."""
    if "GOMP_SPINCOUNT" in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        return "spin " + os.environ["GOMP_SPINCOUNT"]
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads():
    """Under an MPI launcher, give each rank cores / ranks-on-this-host OpenMP threads.

    Must run before the compiled kernels load (libgomp reads OMP_NUM_THREADS once);
    a value the user set is kept. Returns the thread count chosen, or None.
    """
    if launched_size() <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, cores // max(1, local_ranks()))
    os.environ["OMP_NUM_THREADS"] = str(n)
    limit_blas_threads(n)  # numpy's BLAS pool too: K ranks x all cores would oversubscribe
    return n


def configure_allocator():
    """Keep large arrays in the malloc heap instead of fresh mmap'd pages (glibc only).

    By default glibc serves every allocation above 128 KB-32 MB with mmap and returns
    it with munmap on free, so each activation array of a training step (5 MB for
    deep_convnet's first layers) comes back as fresh pages that fault in on first touch.
    Raising the mmap threshold to 32 MB (glibc's maximum) and the trim threshold to
    128 MB lets freed blocks be reused: measured, a deep_convnet train step at 2
    threads went from 50-54 ms to 45.5-47 ms. Set NETSPEC_MALLOC=0 to leave malloc
    alone; returns True when the setting was applied.
    """
    if os.environ.get("NETSPEC_MALLOC", "") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 128 << 20))
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
