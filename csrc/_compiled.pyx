# cython: language_level=3
"""Entry point of the compiled backend: netspec.kernels._compiled.

Design: the kernels live in ``_ckernels``, built with OpenMP. This module is
built without it, so it can choose libgomp's wait policy before libgomp is
loaded: by default idle OpenMP threads spin for milliseconds, and on a
2-core machine that spinning starves the BLAS threads of the very next matrix
product (measured: conv steps 10-100x slower). ``OMP_WAIT_POLICY=PASSIVE``
makes idle threads sleep; a value already set by the user is kept. The
setting is process-wide and inherited by subprocesses, and it only takes
effect if no other library loaded libgomp earlier in the process.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from netspec.kernels import _ckernels  # noqa: E402  (after the environment is set)

__all__ = list(_ckernels.__all__)
globals().update({name: getattr(_ckernels, name) for name in __all__})
