"""Which kernel backend is live, and whether the compiled one is complete.

CI runs the suite twice: with NETSPEC_REQUIRE_CYTHON=1 these tests fail
unless the compiled kernels are the ones the layers call; with
NETSPEC_PUREPYTHON=1 they check that the numpy reference is.
"""
import importlib
import os
import subprocess
import sys

import pytest

import netspec.kernels as kernels
from netspec.kernels import _numpy


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


@pytest.mark.skipif(not _flag("NETSPEC_REQUIRE_CYTHON") or _flag("NETSPEC_PUREPYTHON"),
                    reason="NETSPEC_REQUIRE_CYTHON not set")
def test_compiled_backend_is_in_use():
    compiled = kernels.compiled_module()
    assert kernels.BACKEND == "cython", f"expected the cython backend, found {kernels.BACKEND}"
    assert compiled.__name__ == "netspec.kernels._compiled" + kernels.VARIANTS[kernels.ISA][0]
    assert kernels.ISA == kernels.usable_variants()[0], "the best variant this CPU runs is the one loaded"
    assert kernels.BACKEND_ERROR is None
    assert kernels.backend_info()["float16_kernel"]  # this CI's compiler has _Float16
    for name in _numpy.__all__:
        assert getattr(kernels, name) is getattr(compiled, name), (
            f"netspec.kernels.{name} is not the compiled kernel")


@pytest.mark.skipif(not _flag("NETSPEC_PUREPYTHON"), reason="NETSPEC_PUREPYTHON not set")
def test_numpy_backend_is_forced():
    assert kernels.BACKEND == "numpy"
    assert "NETSPEC_PUREPYTHON" in kernels.BACKEND_ERROR
    for name in _numpy.__all__:
        assert getattr(kernels, name) is getattr(_numpy, name)


def test_compiled_module_exports_every_kernel():
    compiled = pytest.importorskip("netspec.kernels._compiled",
                                   reason="compiled kernels not built")
    missing = [n for n in _numpy.__all__ if not callable(getattr(compiled, n, None))]
    assert not missing, f"compiled module lacks kernels: {missing}"


def test_backend_info():
    compiled = pytest.importorskip("netspec.kernels._compiled",
                                   reason="compiled kernels not built")
    info = compiled.backend_info()
    assert isinstance(info["openmp"], bool)
    assert info["openmp_max_threads"] >= 1
    assert "Cython" in info["compiled_with"]


def test_purepython_switch_in_subprocess():
    """NETSPEC_PUREPYTHON=1 wins even when a compiled build exists."""
    env = dict(os.environ, NETSPEC_PUREPYTHON="1")
    env.pop("NETSPEC_REQUIRE_CYTHON", None)
    out = subprocess.run(
        [sys.executable, "-c", "import netspec.kernels as k; print(k.BACKEND)"],
        env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"


def _variants():
    if _flag("NETSPEC_PUREPYTHON"):
        return []
    return kernels.usable_variants()


@pytest.mark.parametrize("isa", _variants() or [pytest.param("none", marks=pytest.mark.skip("nothing built"))])
def test_every_built_variant_matches_the_reference(isa):
    """Each instruction-set variant of the compiled kernels (the one in use and the others
    this CPU can run) agrees with the numpy reference."""
    import numpy as np
    mod = importlib.import_module("netspec.kernels._compiled" + kernels.VARIANTS[isa][0])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    # (conv forward and backward of every variant: test_kernels.py, with tolerances scaled by the terms summed)
    for a, r in zip(mod.maxpool2d_forward(x, 2, 2, 2, 0), _numpy.maxpool2d_forward(x, 2, 2, 2, 0)):
        np.testing.assert_array_equal(a, r)
    p, m, v = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    v = np.abs(v)
    g = rng.standard_normal(1000).astype(np.float32)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    mod.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, 0.01)
    _numpy.adam_update(p2, g, m2, v2, 1e-3, 0.9, 0.999, 1e-7, 0.01)
    np.testing.assert_allclose(p, p2, rtol=1e-6, atol=1e-7)


def test_isa_cap_in_subprocess():
    """NETSPEC_ISA=baseline loads the module that runs on any CPU."""
    pytest.importorskip("netspec.kernels._compiled", reason="compiled kernels not built")
    env = dict(os.environ, NETSPEC_ISA="baseline")
    env.pop("NETSPEC_PUREPYTHON", None)
    out = subprocess.run(
        [sys.executable, "-c", "import netspec.kernels as k; print(k.ISA, k.compiled_module().__name__)"],
        env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["baseline", "netspec.kernels._compiled"]
