"""Build netspec, compiling the Cython kernels in csrc/ when possible.

Design: the extensions are optional. If Cython, numpy headers or a C compiler
are missing, or a compile fails, the install still succeeds with the numpy
fallback and a loud warning, unless NETSPEC_REQUIRE_CYTHON=1 asks for the build
to be mandatory (CI sets it). OpenMP is used when the compiler accepts it.
"""
import os
import sys
import glob
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("NETSPEC_REQUIRE_CYTHON", "") not in ("", "0")


def _warn(msg):
    bar = "*" * 72
    sys.stderr.write(f"\n{bar}\nnetspec: {msg}\nnetspec: installing with the pure-numpy fallback kernels.\n{bar}\n\n")


def _extensions():
    """One extension per csrc/*.pyx, named netspec.kernels.<stem>."""
    sources = sorted(glob.glob(os.path.join("csrc", "*.pyx")))
    if not sources:
        return []
    try:
        import numpy
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError as exc:
        if REQUIRE:
            raise
        _warn(f"cannot cythonize ({exc})")
        return []
    exts = [
        Extension(
            "netspec.kernels." + os.path.splitext(os.path.basename(src))[0],
            [src],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    try:
        return cythonize(exts, language_level=3, quiet=True,
                         compiler_directives={"boundscheck": False, "wraparound": False,
                                              "cdivision": True, "initializedcheck": False})
    except Exception as exc:  # Cython compile errors
        if REQUIRE:
            raise
        _warn(f"cythonize failed ({exc})")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that adds -O3/OpenMP when supported and tolerates failure."""

    def _accepts(self, flag):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "t.c")
            with open(src, "w") as f:
                f.write("int main(void){return 0;}\n")
            try:
                self.compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
                return True
            except Exception:
                return False

    def build_extensions(self):
        cflags, lflags = ["-O3", "-g0"], []
        try:
            # no errno from sqrt lets the optimizer loops vectorize
            if self._accepts("-fno-math-errno"):
                cflags.append("-fno-math-errno")
            if self._accepts("-fopenmp"):
                cflags.append("-fopenmp")
                lflags.append("-fopenmp")
        except Exception:
            pass
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags
            ext.extra_link_args = list(ext.extra_link_args or []) + lflags
        try:
            super().build_extensions()
        except Exception as exc:
            if REQUIRE:
                raise
            _warn(f"compiling the extensions failed ({exc})")

    def run(self):
        try:
            super().run()
        except Exception as exc:
            if REQUIRE:
                raise
            _warn(f"build_ext failed ({exc})")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
