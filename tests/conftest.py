"""Shared test fixtures: where the repo's specs are, spec text written to tmp files, the backend in the header.

Every test goes through ``netspec.kernels``, so the suite exercises whichever
backend is live; CI runs it twice, once with NETSPEC_PUREPYTHON=1.
"""
from pathlib import Path

import pytest

import netspec.kernels

REPO = Path(__file__).resolve().parent.parent
SPECS_DIR = REPO / "specs"


def pytest_report_header(config):
    note = f" ({netspec.kernels.BACKEND_ERROR})" if netspec.kernels.BACKEND_ERROR else ""
    return f"netspec kernel backend: {netspec.kernels.BACKEND}{note}"


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
