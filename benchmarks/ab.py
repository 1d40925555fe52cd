"""A/B: the same workloads on two netspec checkouts, alternated pairs of fresh processes.

Usage:
    python benchmarks/ab.py A_DIR B_DIR [--cases deep_convnet.train,deep_convnet.predict]
                            [--threads 2] [--pairs 6]

For checking that a change keeps (or improves) speed: each pair runs A then B, the
next pair B then A, every job in its own fresh process through that checkout's own
benchmarks/_worker.py (so each side runs with its own code and build). The machine's
speed drifts (numpy's sgemm measured 91-196 GFLOP/s within minutes on a shared host),
so the report gives, per case, the median over pairs of the per-pair ratio B/A (below
1: B is faster), its range, each side's median ms, and numpy's sgemm peak measured in
the same run before each pair. Both checkouts need their kernels built (in place).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TIMING = {"warmup": 3, "min_reps": 5, "max_reps": 200, "budget": 2.0, "cap": 20.0}
SETTINGS = {"timing": TIMING, "kernel_timing": TIMING, "fp16_images": 300, "sgemm_n": 2048, "quick": False}


def job(tree, framework, case, threads):
    """Median ms (or the sgemm row) of one job run by ``tree``'s worker in a fresh process."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.pop("NETSPEC_PUREPYTHON", None)
    env["NETSPEC_REQUIRE_CYTHON"] = "1"
    payload = {**SETTINGS, "framework": framework, "case": case, "threads": threads}
    worker = os.path.join(tree, "benchmarks", "_worker.py")
    done = subprocess.run([sys.executable, worker, json.dumps(payload)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"{tree}: {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["rows"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="checkout A (the reference)")
    ap.add_argument("b", help="checkout B (the change)")
    ap.add_argument("--cases", default="deep_convnet.train,deep_convnet.predict,simple_convnet.train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=6)
    args = ap.parse_args()
    cases = args.cases.split(",")
    ms = {(side, c): [] for side in "ab" for c in cases}
    peaks = []
    for k in range(args.pairs):
        row = job(args.a, "blas", "sgemm", args.threads)["sgemm"]
        peaks.append(row["flops"] / row["median_ms"] / 1e6)
        for c in cases:
            order = ("a", "b") if k % 2 == 0 else ("b", "a")
            for side in order:
                rows = job(getattr(args, side), "netspec", c, args.threads)
                ms[side, c].append(rows[c]["median_ms"])
        print(f"pair {k + 1}/{args.pairs} done (sgemm {peaks[-1]:.0f} GFLOP/s)", file=sys.stderr, flush=True)
    print(f"A = {args.a}, B = {args.b}; {args.threads} thread(s), {args.pairs} alternated pairs of fresh processes; "
          f"numpy sgemm {min(peaks):.0f}-{max(peaks):.0f} GFLOP/s over the run\n")
    print("| case | A ms (median) | B ms (median) | B / A (median of pairs) | B / A range |")
    print("|---|---|---|---|---|")
    for c in cases:
        a, b = ms["a", c], ms["b", c]
        ratios = [y / x for x, y in zip(a, b)]
        print(f"| {c} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | "
              f"{statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |")


if __name__ == "__main__":
    main()
