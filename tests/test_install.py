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


@pytest.mark.slow
def test_install_with_a_broken_compiler_falls_back(tmp_path):
    src = clean_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the new venv sees this environment's packages (numpy, Cython, pydantic...) through a
    # path file; the .pth hooks in there, such as an editable netspec's, do not run
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_parent_env.pth").write_text("".join(f"{p}\n" for p in sorted(parent)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSPEC_")}
    # the build requirements of pyproject.toml (an SPDX license string needs setuptools 77),
    # installed before the compiler is broken: only the extension build should fail
    subprocess.run([str(py), "-m", "pip", "install", "-q", "setuptools>=77"], env=env, check=True, timeout=600)
    env["CC"] = "/bin/false"
    res = subprocess.run([str(py), "-m", "pip", "install", "-v", "--no-deps", "--no-build-isolation", str(src)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "installing with the pure-numpy fallback kernels" in res.stdout + res.stderr
    probe = ("import netspec, netspec.kernels as k; print(k.BACKEND); "
             "m = netspec.compile({'input': {'shape': [1, 6, 6]}, 'layers': "
             "[{'type': 'conv2d', 'filters': 2, 'kernel': 3}], 'loss': 'mse'}); print(m.predict([[[[0.0] * 6] * 6]]).shape)")
    run = subprocess.run([str(py), "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["numpy", "(1,", "2,", "4,", "4)"]
    assert "compiled kernels are not built" in run.stderr and "numpy fallback" in run.stderr
