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
    compiled = importlib.import_module("netspec.kernels._compiled")
    assert kernels.BACKEND == "cython", f"expected the cython backend, found {kernels.BACKEND}"
    assert kernels.BACKEND_ERROR is None
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
