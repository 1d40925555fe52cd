"""Data-parallel throughput over MPI: deep_convnet steps per second for ranks x threads.

Usage:  python benchmarks/mpi_bench.py [--rounds 3] [--steps 40] [--spec specs/deep_convnet.yaml] [--force]

Configurations: 1 rank x 1 thread, 2 ranks x 1 thread (``mpiexec -n 2``) and
1 rank x 2 threads, each job in fresh processes (benchmarks/_mpi_worker.py), in
``--rounds`` rounds with the order rotated. A job warms up, then times each of
``--steps`` training steps of the spec's global batch; a cell is the median over
rounds of the per-job median step time (lowest-highest beside it). Allreduce is
the time rank 0 spent inside the one Allreduce per step (including waiting for
the slower rank). The target: 2 ranks x 1 thread at >= 1.8x the steps per second
of 1 rank x 1 thread. Refuses to start when the 1-minute load average is above
0.5 (``--force`` overrides).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = [(1, 1), (2, 1), (1, 2)]


def job(ranks, threads, spec, steps):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_"))}
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(HERE / "_mpi_worker.py"), spec, "5", str(steps)]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode:
        sys.exit(f"job {ranks}x{threads} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--spec", default=str(HERE.parent / "specs" / "deep_convnet.yaml"))
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    load = os.getloadavg()[0]
    if load > 0.5 and not args.force:
        sys.exit(f"1-minute load average is {load:.2f} (> 0.5): the machine is busy; wait, or --force")
    results = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
        for c in order:
            results[c].append(job(*c, args.spec, args.steps))
            print(f"round {r + 1}: {c[0]} rank(s) x {c[1]} thread(s): "
                  f"{1000 * results[c][-1]['median_step']:.1f} ms/step", file=sys.stderr, flush=True)
    base = statistics.median(j["median_step"] for j in results[(1, 1)])
    print(f"spec: {Path(args.spec).name}; load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} round(s) x {args.steps} timed steps per job\n")
    print("| ranks x threads | ms / step | steps / s | vs 1 x 1 | Allreduce ms / step |")
    print("|---|---|---|---|---|")
    for c in CONFIGS:
        steps = [j["median_step"] for j in results[c]]
        med = statistics.median(steps)
        reduce_ms = statistics.median(j["allreduce_per_step"] for j in results[c]) * 1000
        print(f"| {c[0]} x {c[1]} | {1000 * med:.1f} ({1000 * min(steps):.1f}-{1000 * max(steps):.1f}) | "
              f"{1 / med:.2f} | {base / med:.2f}x | {reduce_ms:.2f} |" if c[0] > 1 else
              f"| {c[0]} x {c[1]} | {1000 * med:.1f} ({1000 * min(steps):.1f}-{1000 * max(steps):.1f}) | "
              f"{1 / med:.2f} | {base / med:.2f}x | - |")
    two = statistics.median(j["median_step"] for j in results[(2, 1)])
    print(f"\ntarget 2 ranks x 1 thread >= 1.8x of 1 x 1: {base / two:.2f}x -> "
          f"{'holds' if base / two >= 1.8 else 'MISSED'}")


if __name__ == "__main__":
    main()
