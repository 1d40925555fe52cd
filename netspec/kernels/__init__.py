"""The kernel seam: one place chooses the backend, once, when the first kernel is needed.

Design: ``_numpy`` is the reference and defines the full list of kernel names.
The compiled module (built from csrc/) overrides them name for name. It is built
in instruction-set variants of the same source (see setup.py): ``_compiled_avx512``
(with 512-bit convolution kernels), ``_compiled_avx2`` and the baseline ``_compiled``;
the best one this CPU supports (numpy's run-time detection, OS support included) is
loaded. ``NETSPEC_ISA=baseline|avx2|avx512`` caps the choice (for tests and comparisons;
tests/test_isa_variants.py tests every variant the CPU runs, whichever is loaded).
``NETSPEC_PUREPYTHON=1`` forces numpy; ``NETSPEC_REQUIRE_CYTHON=1`` turns a missing or
broken build into an ImportError instead of a silent fallback. Layers and optimizers call
``<kernels>.<name>`` and never a backend directly.

Importing this module does nothing but define names: ``load()`` chooses the
backend and applies netspec.runtime's process settings (which must precede the
compiled module's import). A Model calls it when it is built; reading a kernel
or ``BACKEND``, ``BACKEND_ERROR``, ``ISA`` from this module calls it too.
"""
import contextlib
import importlib
import importlib.util
import os
import sys
import warnings

import numpy as np

from . import _numpy
from .. import runtime
from ..threads import blas_gemm_addresses, row_parallel_matmul, single_threaded_blas, split_worthwhile

# variant -> (module suffix, CPU features it needs, as numpy names them)
VARIANTS = {
    "avx512": ("_avx512", ("AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ", "AVX2", "FMA3", "F16C")),
    "avx2": ("_avx2", ("AVX2", "FMA3", "F16C")),
    "baseline": ("", ()),
}
# set by load(): the backend ("cython" or "numpy"), why the compiled one is not in use
# (None if it is), and the compiled variant in use ("avx512", "avx2", "baseline" or None)
_STATE_NAMES = ("BACKEND", "BACKEND_ERROR", "ISA")
_impl = None   # the module in use, once load() has run
_state = {}    # BACKEND, BACKEND_ERROR, ISA, once load() has run

__all__ = list(_numpy.__all__) + list(_STATE_NAMES) + [
    "load", "numpy_kernels", "compiled_module", "out_size", "backend_info", "usable_variants",
    "blas_scope", "matmul"]

numpy_kernels = _numpy
out_size = _numpy.out_size   # netspec.numerics.out_size, re-exported for the compiled module


def cpu_features():
    """The CPU features numpy detected at run time (OS support included), or {} if unknown."""
    for where in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return dict(importlib.import_module(where).__cpu_features__)
        except (ImportError, AttributeError):
            continue
    return {}


def usable_variants():
    """Compiled variants that are built and that this CPU runs, best first."""
    features = cpu_features()
    cap = os.environ.get("NETSPEC_ISA", "").strip().lower() or "avx512"
    if cap not in VARIANTS:
        raise ImportError(f"NETSPEC_ISA={cap!r}: expected one of {', '.join(VARIANTS)}")
    names = list(VARIANTS)[list(VARIANTS).index(cap):]
    out = []
    for name in names:
        suffix, needs = VARIANTS[name]
        if all(features.get(f) for f in needs) and importlib.util.find_spec(f"{__name__}._compiled{suffix}"):
            out.append(name)
    return out


def _choose():
    """(module, backend, error, isa): the compiled variant to use, or numpy and why."""
    if os.environ.get("NETSPEC_PUREPYTHON", "") not in ("", "0"):
        runtime.configure(compiled=False)
        return _numpy, "numpy", "disabled by NETSPEC_PUREPYTHON", None
    try:
        variants = usable_variants()
        if not variants:
            raise ModuleNotFoundError("the compiled kernels are not built (reinstall with a C "
                                      "compiler; `pip install -v .` shows why the build failed)")
        runtime.configure(compiled=True)  # before libgomp loads with the compiled module
        module = importlib.import_module(f"{__name__}._compiled{VARIANTS[variants[0]][0]}")
        module.set_blas_gemm(*blas_gemm_addresses())   # dense products on the OpenMP team (matmul)
        return module, "cython", None, variants[0]
    except ImportError as exc:
        if os.environ.get("NETSPEC_REQUIRE_CYTHON", "") not in ("", "0"):
            raise ImportError(f"NETSPEC_REQUIRE_CYTHON is set but {exc}") from exc
        error = (str(exc) if isinstance(exc, ModuleNotFoundError) and "not built" in str(exc)
                 else f"the compiled kernels failed to import ({exc})")
        warnings.warn(f"netspec: {error}; using the numpy fallback kernels, which give the "
                      "same results more slowly. Set NETSPEC_PUREPYTHON=1 to choose them silently.",
                      RuntimeWarning, stacklevel=3)
        runtime.configure(compiled=False)
        return _numpy, "numpy", error, None


def load():
    """Choose the backend (once) and bind every kernel name here; returns this module."""
    global _impl
    if _impl is None:
        module, backend, error, isa = _choose()
        _state.update(zip(_STATE_NAMES, (backend, error, isa)))
        globals().update(_state)
        globals().update({name: getattr(module, name, getattr(_numpy, name)) for name in _numpy.__all__})
        _impl = module
    return sys.modules[__name__]


def _is_compiled():
    load()
    return _state["BACKEND"] == "cython"


def __getattr__(name):
    """Kernel names and the backend state are bound by ``load()`` on first use."""
    if name in _STATE_NAMES or name in _numpy.__all__:
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def blas_scope():
    """Context for running a model: with the compiled backend, numpy's BLAS uses one thread
    (the kernels bring their own OpenMP threads; see netspec.threads); with numpy, BLAS keeps
    all its threads, since it is the only parallel part."""
    return single_threaded_blas() if _is_compiled() else contextlib.nullcontext()


def matmul(a, b, out=None):
    """a @ b for the dense layers: with the compiled backend, rows split over its OpenMP threads,
    each a one-thread BLAS call (see blas_scope; Python threads where that BLAS could not be
    found); with numpy, numpy's own BLAS threads. ``out``: where to write it (else a new array)."""
    if not _is_compiled():
        return np.matmul(a, b, out=out)
    threads = _impl.backend_info()["openmp_max_threads"]
    if a.ndim == 2 and b.ndim == 2 and split_worthwhile(a, b, threads):
        dest = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b)) if out is None else out
        if _impl.gemm_rows(a, b, dest, threads):
            return dest
    return row_parallel_matmul(a, b, threads, out=out)


def compiled_module():
    """The compiled module in use, or None on the numpy backend."""
    return _impl if _is_compiled() else None


def backend_info():
    """What the compiled backend was built with (OpenMP, threads, Cython, ISA variant), or {} on numpy."""
    return {**_impl.backend_info(), "isa": _state["ISA"]} if _is_compiled() else {}
