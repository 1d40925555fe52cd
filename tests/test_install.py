"""Installing netspec: a failed compile still installs, on the numpy fallback, and says so."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clean_copy(dest):
    """The tracked files as they are in the work tree, without in-place builds or build/."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in files.stdout.splitlines():
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return dest


def venv_for_install(tmp_path):
    """(python, env) of a new venv that sees this environment's packages (numpy, Cython,
    pydantic...) through a path file (the .pth hooks there, such as an editable netspec's,
    do not run), with setuptools recent enough for pyproject.toml's SPDX license."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_parent_env.pth").write_text("".join(f"{p}\n" for p in sorted(parent)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSPEC_") and k not in ("CC", "CFLAGS")}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "setuptools>=77"], env=env, check=True, timeout=600)
    return py, env


def pip_install(py, src, env):
    res = subprocess.run([str(py), "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", str(src)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout + res.stderr


@pytest.mark.slow
def test_install_with_a_broken_compiler_falls_back(tmp_path):
    src = clean_copy(tmp_path / "src")
    py, env = venv_for_install(tmp_path)
    # only the extension build should fail: setuptools is already in the venv
    log = pip_install(py, src, {**env, "CC": "/bin/false"})
    assert "installing with the pure-numpy fallback kernels" in log
    probe = ("import netspec, netspec.kernels as k; print(k.BACKEND); "
             "m = netspec.compile({'input': {'shape': [1, 6, 6]}, 'layers': "
             "[{'type': 'conv2d', 'filters': 2, 'kernel': 3}], 'loss': 'mse'}); print(m.predict([[[[0.0] * 6] * 6]]).shape)")
    run = subprocess.run([str(py), "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["numpy", "(1,", "2,", "4,", "4)"]
    assert "compiled kernels are not built" in run.stderr and "numpy fallback" in run.stderr


@pytest.mark.slow
def test_a_compiler_without_float16_loses_only_the_rounding_kernel(tmp_path):
    """An older C compiler (no _Float16) still builds every other compiled kernel; float16
    rounding then runs the numpy reference, with the same values."""
    src = clean_copy(tmp_path / "src")
    py, env = venv_for_install(tmp_path)
    # _Float16 made an unknown type: the feature test fails as it does on GCC < 12
    log = pip_install(py, src, {**env, "CFLAGS": "-D_Float16=ns_no_such_type"})
    assert "the C compiler has no _Float16; float16 rounding uses the numpy reference" in log
    probe = ("import numpy as np, netspec.kernels as k; k.load(); "
             "x = np.array([1.0001, 65519.0, 70000.0, -2.5e-8, 0.1], np.float32); "
             "print(k.BACKEND, k.backend_info()['float16_kernel'], "
             "np.array_equal(k.round_half(x.copy()), x.astype(np.float16).astype(np.float32)))")
    run = subprocess.run([str(py), "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["cython", "False", "True"]
