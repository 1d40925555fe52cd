"""The kernel seam: one place chooses the backend, once, at import.

Design: ``_numpy`` is the reference and defines the full list of kernel names.
The compiled module (built from csrc/) overrides them name for name. It is built
in instruction-set variants of the same source (see setup.py): ``_compiled_avx2``
and the baseline ``_compiled`` (an ``_avx512`` entry is recognised when a build
provides one); the best one this CPU supports is loaded. ``NETSPEC_ISA=baseline|avx2|avx512``
caps the choice (for tests and comparisons). ``NETSPEC_PUREPYTHON=1`` forces numpy;
``NETSPEC_REQUIRE_CYTHON=1`` turns a missing or broken build into an ImportError
instead of a silent fallback. Layers and optimizers call ``netspec.kernels.<name>``
and never a backend directly.
"""
import contextlib
import importlib
import importlib.util
import os
import warnings

from . import _numpy
from ..distributed import configure_threads
from ..threads import configure_allocator, configure_openmp, row_parallel_matmul, single_threaded_blas

BACKEND = "numpy"
BACKEND_ERROR = None  # why the compiled backend is not in use, if it is not
ISA = None            # the compiled variant in use: "avx512", "avx2" or "baseline"

# variant -> (module suffix, CPU features it needs, as numpy names them)
VARIANTS = {
    "avx512": ("_avx512", ("AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ", "AVX2", "FMA3")),
    "avx2": ("_avx2", ("AVX2", "FMA3", "F16C")),
    "baseline": ("", ()),
}


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


_impl = _numpy
configure_threads()  # under mpiexec: cores / ranks-on-this-host threads per rank (before libgomp loads)
if os.environ.get("NETSPEC_PUREPYTHON", "") not in ("", "0"):
    BACKEND_ERROR = "disabled by NETSPEC_PUREPYTHON"
else:
    try:
        variants = usable_variants()
        if not variants:
            raise ModuleNotFoundError("the compiled kernels are not built (reinstall with a C "
                                      "compiler; `pip install -v .` shows why the build failed)")
        configure_openmp()  # before libgomp loads with the compiled module
        configure_allocator()
        ISA = variants[0]
        _impl = importlib.import_module(f"{__name__}._compiled{VARIANTS[ISA][0]}")
        BACKEND = "cython"
    except ImportError as exc:
        ISA = None
        if os.environ.get("NETSPEC_REQUIRE_CYTHON", "") not in ("", "0"):
            raise ImportError(f"NETSPEC_REQUIRE_CYTHON is set but {exc}") from exc
        BACKEND_ERROR = (str(exc) if isinstance(exc, ModuleNotFoundError) and "not built" in str(exc)
                         else f"the compiled kernels failed to import ({exc})")
        warnings.warn(f"netspec: {BACKEND_ERROR}; using the numpy fallback kernels, which give the "
                      "same results more slowly. Set NETSPEC_PUREPYTHON=1 to choose them silently.",
                      RuntimeWarning, stacklevel=2)

__all__ = list(_numpy.__all__) + ["BACKEND", "BACKEND_ERROR", "ISA", "numpy_kernels", "compiled_module",
                                  "out_size", "backend_info", "usable_variants", "blas_scope", "matmul"]

numpy_kernels = _numpy
out_size = _numpy.out_size


def blas_scope():
    """Context for running a model: with the compiled backend, numpy's BLAS uses one thread
    (the kernels bring their own OpenMP threads; see netspec.threads); with numpy, BLAS keeps
    all its threads, since it is the only parallel part."""
    return single_threaded_blas() if BACKEND == "cython" else contextlib.nullcontext()


def matmul(a, b):
    """a @ b for the dense layers: with the compiled backend, rows split over its threads
    (each a one-thread BLAS call, see blas_scope); with numpy, numpy's own BLAS threads."""
    if BACKEND == "cython":
        return row_parallel_matmul(a, b, _impl.backend_info()["openmp_max_threads"])
    return a @ b


def compiled_module():
    """The compiled module in use, or None on the numpy backend."""
    return _impl if BACKEND == "cython" else None


def backend_info():
    """What the compiled backend was built with (OpenMP, threads, Cython, ISA variant), or {} on numpy."""
    return {**_impl.backend_info(), "isa": ISA} if BACKEND == "cython" else {}


for _name in _numpy.__all__:
    globals()[_name] = getattr(_impl, _name, getattr(_numpy, _name))
del _name
