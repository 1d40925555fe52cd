"""Shared test fixtures: where the repo's specs are, spec text written to tmp files, the backend in the header.

Every test goes through ``netspec.kernels``, so the suite exercises whichever
backend is live; CI runs it twice, once with NETSPEC_PUREPYTHON=1.
"""
import os
from pathlib import Path

import pytest
from hypothesis import settings

import netspec
import netspec.kernels
from netspec.threads import blas_info, limit_blas_threads

# Test arrays are tiny: a threaded BLAS only adds hand-offs, and on a busy machine its
# spinning threads made the spec gradient checks 30x slower. The compiled kernels keep
# their OpenMP threads (the tests should run the parallel loops); netspec.kernels has
# already made idle OpenMP threads sleep instead of spin (netspec/threads.py).
limit_blas_threads(1)
# The runs tests start as subprocesses (`netspec run`, then resumed here) get the same one BLAS
# thread: OpenBLAS's sgemm does not round the same at 1 and 2 threads, so on the numpy backend
# a run interrupted in a 2-thread subprocess and resumed in this process would end a bit apart
# from one trained here, and the bit-identical resume tests would fail for that alone. Only
# OpenBLAS's variable (numpy's BLAS): torch, imported by the parity tests, reads MKL_NUM_THREADS
# and would set the OpenMP team it shares with the compiled kernels (one libgomp) to that size.
os.environ["OPENBLAS_NUM_THREADS"] = "1"


def _cache_database():
    from hypothesis.database import DirectoryBasedExampleDatabase
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return DirectoryBasedExampleDatabase(cache / "netspec" / "hypothesis")


REPO = Path(__file__).resolve().parent.parent
SPECS_DIR = REPO / "specs"

# Hypothesis: no example database inside the checkout (CI: none at all, so every run draws
# afresh), and a failing example always printed with the blob that replays it
# (@reproduce_failure). HYPOTHESIS_PROFILE picks one; CI=true picks "ci".
settings.register_profile("ci", database=None, print_blob=True)
settings.register_profile("dev", print_blob=True, database=_cache_database())
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_report_header(config):
    note = f" ({netspec.kernels.BACKEND_ERROR})" if netspec.kernels.BACKEND_ERROR else ""
    return (f"netspec {Path(netspec.__file__).parent}, kernel backend: {netspec.kernels.BACKEND}{note}; "
            f"BLAS threads {[pool['threads'] for pool in blas_info()]}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}")


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path, monkeypatch):
    """Every test runs in its own empty folder, so a `python -m netspec` child imports the
    installed package, never a checkout that happens to be the current directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def repo():
    return REPO


@pytest.fixture
def write_spec(tmp_path):
    """Write spec text to a file in tmp_path and return its path (suffix picks YAML or JSON)."""
    def write(text, name="spec.yaml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path
    return write
