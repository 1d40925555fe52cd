"""Build netspec, compiling the Cython kernels in csrc/ when possible.

Design: the extensions are optional. If Cython, numpy headers or a C compiler
are missing, or a compile fails, the install still succeeds with the numpy
fallback and a loud warning, unless NETSPEC_REQUIRE_CYTHON=1 asks for the build
to be mandatory (CI sets it). OpenMP is used when the compiler accepts it.

The kernels are compiled more than once from the same source: a baseline
module that runs on any CPU (``netspec.kernels._compiled``), and, on x86-64
compilers that accept the flags, copies built for AVX2+FMA (``_compiled_avx2``)
and for AVX-512 (``_compiled_avx512``: F, VL, BW, DQ; csrc/conv_direct.h has
512-bit convolution kernels for it, not only the AVX2 code recompiled).
``netspec.kernels`` loads the best one the running CPU supports, so a wheel built here still runs on older CPUs
and ``-march=native`` is never needed (NETSPEC_MARCH_NATIVE=1 adds it to every
variant, for a build that only runs on the machine that built it). A variant
that fails to compile is skipped with a warning; only the baseline is required.
Floating-point contraction is off (``-ffp-contract=off``), so a product and a
sum are rounded separately, as in the numpy reference, whichever variant runs.
"""
import os
import platform
import shutil
import sys
import glob
import tempfile

from setuptools import setup
from setuptools.command.build_ext import build_ext

REQUIRE = os.environ.get("NETSPEC_REQUIRE_CYTHON", "") not in ("", "0")
BASE = "netspec.kernels._compiled"
# module suffix -> compiler flags of that instruction-set variant. The AVX-512 copy keeps
# auto-vectorized loops at 256 bits (-mprefer-vector-width=256; conv_direct.h's explicit
# 512-bit types are not affected): with 512-bit auto-vectorization col2im, ReLU and average
# pooling ran 5-8% slower than the AVX2 build, with 256 bits within 3% (1 thread, Zen 4).
ISA_VARIANTS = {
    "_avx2": ["-mavx2", "-mfma", "-mf16c"],
    "_avx512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
                "-mprefer-vector-width=256"],
}
GENERATED = os.path.join("build", "isa_sources")
FLOAT16_PROBE = "float f(float x) { return (float)(_Float16)x; }\nint main(void) { return (int)f(1.5f); }\n"


def _warn(msg):
    bar = "*" * 72
    sys.stderr.write(f"\n{bar}\nnetspec: {msg}\nnetspec: installing with the pure-numpy fallback kernels.\n{bar}\n\n")


def _variant_sources(src):
    """Copies of src named for each ISA variant (Cython names a module after its file)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    os.makedirs(GENERATED, exist_ok=True)
    stem = os.path.splitext(os.path.basename(src))[0]
    out = {}
    for suffix in ISA_VARIANTS:
        dst = os.path.join(GENERATED, f"{stem}{suffix}.pyx")
        shutil.copyfile(src, dst)
        out[suffix] = dst
    return out


def _extensions():
    """The baseline extension per csrc/*.pyx (netspec.kernels.<stem>) plus its ISA variants."""
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

    def extension(name, path):
        return Extension(name, [path], include_dirs=[numpy.get_include(), "csrc"],
                         depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),
                         define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])

    exts = []
    for src in sources:
        stem = os.path.splitext(os.path.basename(src))[0]
        exts.append(extension(f"netspec.kernels.{stem}", src))
        for suffix, path in _variant_sources(src).items():
            exts.append(extension(f"netspec.kernels.{stem}{suffix}", path))
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
    """build_ext that adds -O3/OpenMP/ISA flags when supported and tolerates failure."""

    def _accepts(self, *flags, source="int main(void){return 0;}\n", link=False):
        """Whether the compiler builds ``source`` with ``flags`` (and links it, with ``link``)."""
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "t.c")
            with open(src, "w") as f:
                f.write(source)
            try:
                objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=list(flags))
                if link:
                    self.compiler.link_executable(objects, "t", output_dir=tmp)
                return True
            except Exception:
                return False

    def build_extensions(self):
        cflags, lflags = ["-O3", "-g0"], []
        try:
            # no errno from sqrt lets the optimizer loops vectorize; no contraction keeps
            # products and sums separately rounded, as in the numpy reference
            for flag in ("-fno-math-errno", "-ffp-contract=off"):
                if self._accepts(flag):
                    cflags.append(flag)
            if self._accepts("-fopenmp"):
                cflags.append("-fopenmp")
                lflags.append("-fopenmp")
            if os.environ.get("NETSPEC_MARCH_NATIVE", "") not in ("", "0") and self._accepts("-march=native"):
                cflags.append("-march=native")
        except Exception:
            pass
        # half.h's float16 rounding needs C's _Float16 (GCC 12+, clang 15+): tested on its
        # own, so an older compiler loses that one kernel (numpy rounds instead), not all
        macros = []
        if not self._accepts(*cflags, source=FLOAT16_PROBE, link=True):
            sys.stderr.write("netspec: the C compiler has no _Float16; float16 rounding uses the numpy reference\n")
            macros.append(("NETSPEC_NO_FLOAT16", "1"))
        keep = []
        for ext in self.extensions:
            suffix = ext.name[len(BASE):] if ext.name.startswith(BASE) else ""
            isa = ISA_VARIANTS.get(suffix, [])
            if isa and not self._accepts(*isa):
                sys.stderr.write(f"netspec: the compiler does not accept {' '.join(isa)}; skipping {ext.name}\n")
                continue
            ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags + isa
            ext.define_macros = list(ext.define_macros or []) + macros
            ext.extra_link_args = list(ext.extra_link_args or []) + lflags
            keep.append(ext)
        self.extensions = keep
        try:
            super().build_extensions()
        except Exception as exc:
            if REQUIRE:
                raise
            _warn(f"compiling the extensions failed ({exc})")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if ext.name == BASE or not ext.name.startswith(BASE):
                raise
            sys.stderr.write(f"netspec: building the optional variant {ext.name} failed ({exc}); skipping it\n")

    def run(self):
        try:
            super().run()
        except Exception as exc:
            if REQUIRE:
                raise
            _warn(f"build_ext failed ({exc})")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
