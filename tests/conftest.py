"""Shared test fixtures: where the repo's specs are, spec text written to tmp files, the backend in the header.

Every test goes through ``netspec.kernels``, so the suite exercises whichever
backend is live; CI runs it twice, once with NETSPEC_PUREPYTHON=1.
"""
import os
from pathlib import Path

import pytest

import netspec.kernels
from netspec.threads import blas_info, limit_blas_threads

# Test arrays are tiny: a threaded BLAS only adds hand-offs, and on a busy machine its
# spinning threads made the spec gradient checks 30x slower. The compiled kernels keep
# their OpenMP threads (the tests should run the parallel loops); netspec.kernels has
# already made idle OpenMP threads sleep instead of spin (netspec/threads.py).
limit_blas_threads(1)

REPO = Path(__file__).resolve().parent.parent
SPECS_DIR = REPO / "specs"


def pytest_report_header(config):
    note = f" ({netspec.kernels.BACKEND_ERROR})" if netspec.kernels.BACKEND_ERROR else ""
    return (f"netspec kernel backend: {netspec.kernels.BACKEND}{note}; "
            f"BLAS threads {[pool['threads'] for pool in blas_info()]}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


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
