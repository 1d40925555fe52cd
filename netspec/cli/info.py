"""``netspec info``: versions, the active kernel backend, threads, MPI."""
import os
import platform

import numpy as np

from .. import jsonout, kernels
from .._version import __version__
from ..distributed import info as mpi_info
from ..threads import blas_info


def cmd_info(args):
    info = {
        "netspec": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "backend": kernels.BACKEND,
        "backend_note": kernels.BACKEND_ERROR,
    }
    for mod in ("pydantic", "yaml", "Cython", "tqdm", "matplotlib", "torch", "sklearn"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    info.update(kernels.backend_info())
    for pool in blas_info():
        info[f"blas ({pool['library']} {pool['version']})"] = f"{pool['threads']} threads"
    info["cpu_count"] = os.cpu_count()
    mpi = mpi_info()
    if mpi["launched_by_mpi"]:
        info.update({f"mpi_{k}": v for k, v in mpi.items() if k != "launched_by_mpi"})
    if args.json:
        print(jsonout.dumps(info, indent=2))
    else:
        for key, v in info.items():
            if v is not None:
                print(f"{key:>24}: {v}")
    return 0


def add_info_arguments(s):
    s.add_argument("--json", action="store_true")


COMMANDS = {"info": (add_info_arguments, cmd_info)}
