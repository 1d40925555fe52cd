"""Shared test fixtures: where the repo's specs are, spec text written to tmp files, the backend in the header.

Every test goes through ``netspec.kernels``, so the suite exercises whichever
backend is live; CI runs it twice, once with NETSPEC_PUREPYTHON=1.
"""
import os
import sys
from pathlib import Path

# Test arrays are tiny: a threaded BLAS only adds hand-offs, and on a busy machine its
# spinning threads made the spec gradient checks 30x slower. Must precede numpy's import.
if "numpy" not in sys.modules:
    for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
# The compiled kernels keep their OpenMP threads (the tests should run the parallel
# loops), but waiting threads sleep instead of spinning: with more busy processes than
# cores, libgomp's spin-wait made each small conv 50x slower. Read when libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

import netspec.kernels  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPECS_DIR = REPO / "specs"


def pytest_report_header(config):
    note = f" ({netspec.kernels.BACKEND_ERROR})" if netspec.kernels.BACKEND_ERROR else ""
    return (f"netspec kernel backend: {netspec.kernels.BACKEND}{note}; "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
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
