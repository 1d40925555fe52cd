"""One data-parallel timing job for benchmarks/mpi_bench.py (run under mpiexec, or alone for 1 rank).

    python _mpi_worker.py SPEC WARMUP STEPS

Trains SPEC (its own data and global batch) for WARMUP steps, then times STEPS
steps between two barriers; rank 0 prints one JSON line: seconds per step, the
Allreduce seconds per step it saw, ranks and OpenMP threads.
"""
import json
import os
import sys
import time

from netspec.distributed import world
from netspec.runner import trainer_for
from netspec.threads import limit_blas_threads


def main(spec, warmup, steps):
    limit_blas_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    comm = world()
    tr = trainer_for(spec, save=False, quiet=True, progress=False)
    for _ in range(warmup):
        tr.train_step(tr.sampler.next())
    comm.barrier()
    reduce0 = getattr(comm, "allreduce_seconds", 0.0)
    per_step = []
    for _ in range(steps):
        t0 = time.perf_counter()
        tr.train_step(tr.sampler.next())
        per_step.append(time.perf_counter() - t0)
    comm.barrier()
    if comm.rank == 0:
        per_step.sort()
        print(json.dumps({"ranks": comm.size, "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
                          "median_step": per_step[len(per_step) // 2],
                          "mean_step": sum(per_step) / len(per_step),
                          "allreduce_per_step": (getattr(comm, "allreduce_seconds", 0.0) - reduce0) / steps}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
