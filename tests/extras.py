"""Optional dependencies in tests: skip where one is missing, fail where the run demands them all.

``need("torch")`` returns the module, or skips the test (or the module, at import
time) with the missing name as the reason. With ``NETSPEC_REQUIRE_EXTRAS=1``,
which CI sets, a missing optional dependency is a failure instead: a CI run
whose torch, onnx or MPI install broke must not pass by skipping every test
that checks netspec against an independent reference.
"""
import importlib
import os
import shutil
import sys

import pytest

REQUIRE_EXTRAS = os.environ.get("NETSPEC_REQUIRE_EXTRAS", "") not in ("", "0")


def _missing(what):
    if REQUIRE_EXTRAS:
        pytest.fail(f"{what} (NETSPEC_REQUIRE_EXTRAS=1: optional dependencies must be installed)",
                    pytrace=False)
    pytest.skip(what, allow_module_level=True)


def need(module):
    """Import an optional dependency, or skip (fail under NETSPEC_REQUIRE_EXTRAS=1)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _missing(f"optional dependency {module!r} is not installed ({exc})")


def need_program(name, hint, dirs=()):
    """The path of a program on PATH, beside this Python or in ``dirs``, or skip (fail under
    NETSPEC_REQUIRE_EXTRAS=1)."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join([os.path.dirname(sys.executable), *dirs]))
    if path is None:
        _missing(f"{name} not found ({hint})")
    return path


def has(module):
    """Whether an optional dependency is importable; under NETSPEC_REQUIRE_EXTRAS=1 it must be."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        if REQUIRE_EXTRAS:
            need(module)
        return False
