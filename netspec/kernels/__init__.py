"""The kernel seam: one place chooses the backend, once, at import.

Design: ``_numpy`` is the reference and defines the full list of kernel names.
The compiled module ``netspec.kernels._compiled`` (built from csrc/) overrides
them name for name. ``NETSPEC_PUREPYTHON=1`` forces numpy; ``NETSPEC_REQUIRE_CYTHON=1``
turns a missing or broken build into an ImportError instead of a silent fallback.
Layers and optimizers call ``netspec.kernels.<name>`` and never a backend directly.
"""
import importlib.util
import os
import warnings

from . import _numpy
from ..threads import configure_openmp

BACKEND = "numpy"
BACKEND_ERROR = None  # why the compiled backend is not in use, if it is not

_impl = _numpy
if os.environ.get("NETSPEC_PUREPYTHON", "") not in ("", "0"):
    BACKEND_ERROR = "disabled by NETSPEC_PUREPYTHON"
else:
    try:
        if importlib.util.find_spec(__name__ + "._compiled") is None:
            raise ModuleNotFoundError("the compiled kernels are not built (reinstall with a C "
                                      "compiler; `pip install -v .` shows why the build failed)")
        configure_openmp()  # before libgomp loads with the compiled module
        from . import _compiled as _impl  # noqa: F811
        BACKEND = "cython"
    except ImportError as exc:
        if os.environ.get("NETSPEC_REQUIRE_CYTHON", "") not in ("", "0"):
            raise ImportError(f"NETSPEC_REQUIRE_CYTHON is set but {exc}") from exc
        BACKEND_ERROR = (str(exc) if isinstance(exc, ModuleNotFoundError) and "not built" in str(exc)
                         else f"the compiled kernels failed to import ({exc})")
        warnings.warn(f"netspec: {BACKEND_ERROR}; using the numpy fallback kernels, which give the "
                      "same results more slowly. Set NETSPEC_PUREPYTHON=1 to choose them silently.",
                      RuntimeWarning, stacklevel=2)

__all__ = list(_numpy.__all__) + ["BACKEND", "BACKEND_ERROR", "numpy_kernels", "out_size", "backend_info"]

numpy_kernels = _numpy
out_size = _numpy.out_size



def backend_info():
    """What the compiled backend was built with (OpenMP, threads, Cython), or {} on numpy."""
    return _impl.backend_info() if BACKEND == "cython" else {}


for _name in _numpy.__all__:
    globals()[_name] = getattr(_impl, _name, getattr(_numpy, _name))
del _name
