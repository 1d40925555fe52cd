"""AVX2 against AVX-512: the same kernels and models under two NETSPEC_ISA caps, alternated pairs of fresh processes.

Usage:
    python benchmarks/isa.py [--a avx2] [--b avx512] [--threads 1,2] [--pairs 6] [--quick]

Each job is one fresh process (this file with --worker) whose NETSPEC_ISA cap picks the
compiled variant; it checks that the variant loaded is the one asked for, then times, in
order, conv2d_forward and conv2d_backward without d/dx (the weight gradient, plus the bias
sum) on the conv layers of specs/ at batch 100, a few of the module's other kernels (max
pooling, im2col/col2im, ReLU, Adam), and Model.predict of resnet_fashion and deep_convnet at
batch 100. Per thread count, pair k runs A then B when k is even and B then
A when it is odd, after a fresh process has measured numpy's float32 sgemm (2048^3) with the
same threads. The table gives, per row, each side's median over pairs of its process median
and the median over pairs of the per-pair ratio B/A (below 1: B is faster) with its range.

The kernels must be built in place (python setup.py build_ext --inplace) with both variants,
and the CPU must run both. Timings on a shared machine drift; "others" is the share of the
CPUs other processes used while this run's jobs timed their calls (median over jobs).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH = 100
KERNEL_TIMING = {"warmup": 2, "min_reps": 5, "max_reps": 200, "budget": 0.3, "cap": 10.0}
MODEL_TIMING = {"warmup": 2, "min_reps": 5, "max_reps": 200, "budget": 1.0, "cap": 20.0}
SGEMM_TIMING = {"warmup": 2, "min_reps": 5, "max_reps": 50, "budget": 1.0, "cap": 10.0}
# conv layers of specs/ (C, H=W, F, k, stride, pad); the same list as tests/test_isa_variants.py
LAYERS = [
    ("deep_convnet conv1", 1, 28, 16, 3, 1, 1), ("deep_convnet conv2", 16, 28, 16, 3, 1, 1),
    ("deep_convnet conv3", 16, 14, 32, 3, 1, 1), ("deep_convnet conv4", 32, 14, 32, 3, 1, 2),
    ("deep_convnet conv5", 32, 7, 64, 3, 1, 1), ("deep_convnet conv6", 64, 7, 64, 3, 1, 1),
    ("resnet stem", 1, 28, 32, 3, 1, 1), ("resnet stage1", 32, 14, 32, 3, 1, 1),
    ("resnet stage2 down", 32, 14, 64, 3, 2, 1), ("resnet stage2 proj", 32, 14, 64, 1, 2, 0),
    ("resnet stage2", 64, 7, 64, 3, 1, 1), ("resnet stage3 down", 64, 7, 128, 3, 2, 1),
    ("resnet stage3 proj", 64, 7, 128, 1, 2, 0), ("resnet stage3", 128, 4, 128, 3, 1, 1),
    ("simple_convnet conv1", 1, 28, 30, 5, 1, 0),
]
MODELS = ["resnet_fashion", "deep_convnet"]
QUICK_LAYERS = {"deep_convnet conv2", "resnet stage2", "simple_convnet conv1"}


def worker(isa, quick):
    """Time every row with the variant NETSPEC_ISA loads; print one JSON line."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    import numpy as np

    import _worker
    import netspec
    import netspec.kernels as K
    K.load()
    if K.ISA != isa:
        sys.exit(f"NETSPEC_ISA={os.environ.get('NETSPEC_ISA')} loaded {K.ISA}, not {isa}")
    pools = _worker.limit_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = {}
    rng = np.random.default_rng(0)
    with K.blas_scope():
        for label, C, H, F, k, s, p in LAYERS:
            if quick and label not in QUICK_LAYERS:
                continue
            x = rng.standard_normal((BATCH, C, H, H)).astype(np.float32)
            w = rng.standard_normal((F, C, k, k)).astype(np.float32)
            b = rng.standard_normal(F).astype(np.float32)
            out = K.conv2d_forward(x, w, b, s, p)
            dout = rng.standard_normal(out.shape).astype(np.float32)
            OH, OW = out.shape[2:]
            flops = 2 * BATCH * F * OH * OW * C * k * k
            name = f"{label} {C}->{F}@{H} {k}x{k} s{s}"
            rows[f"conv fwd {name}"] = dict(_worker.measure(lambda: K.conv2d_forward(x, w, b, s, p),
                                                            KERNEL_TIMING), flops=flops)
            rows[f"conv dW {name}"] = dict(_worker.measure(
                lambda: K.conv2d_backward(dout, x, w, s, p, need_dx=False), KERNEL_TIMING), flops=flops)
    with K.blas_scope():   # the auto-vectorized kernels of the module, for the whole picture
        x = rng.standard_normal((BATCH, 30, 24, 24)).astype(np.float32)
        out, arg = K.maxpool2d_forward(x, 2, 2, 2, 0)
        rows["maxpool fwd+bwd 30@24 2x2 s2"] = _worker.measure(
            lambda: K.maxpool2d_backward(out, K.maxpool2d_forward(x, 2, 2, 2, 0)[1], x.shape, 2, 2, 2, 0),
            KERNEL_TIMING)
        x = rng.standard_normal((BATCH, 16, 28, 28)).astype(np.float32)
        col = K.im2col(x, 3, 3, 1, 1)
        rows["im2col + col2im 16@28 3x3"] = _worker.measure(
            lambda: (K.im2col(x, 3, 3, 1, 1), K.col2im(col, x.shape, 3, 3, 1, 1)), KERNEL_TIMING)
        rows["relu fwd+bwd 16@28"] = _worker.measure(lambda: K.relu_backward(x, K.relu_forward(x)), KERNEL_TIMING)
        p, g = rng.standard_normal((2, 1_000_000)).astype(np.float32)
        m, v = np.zeros_like(p), np.zeros_like(p)
        rows["adam update 1M params"] = _worker.measure(
            lambda: K.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, 0.0), KERNEL_TIMING)
    for name in MODELS:
        model = netspec.compile(netspec.load_spec(os.path.join(ROOT, "specs", name + ".yaml")))
        x = rng.random((BATCH,) + tuple(model.input_shape)).astype(np.float32)
        rows[f"{name} predict (batch {BATCH})"] = _worker.measure(lambda: model.predict(x), MODEL_TIMING)
    for r in rows.values():
        r["median_ms"] = statistics.median(r["ms"])
    print(json.dumps({"rows": rows, "isa": K.ISA, "backend_info": K.backend_info(), "pools": pools}))


def job(args, threads):
    """One fresh process: (rows, info) of a worker (args: the --worker arguments) or of the sgemm job."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.pop("NETSPEC_PUREPYTHON", None)
    env["NETSPEC_REQUIRE_CYTHON"] = "1"
    if args[0] == "sgemm":
        payload = {"framework": "blas", "case": "sgemm", "threads": threads, "timing": SGEMM_TIMING,
                   "sgemm_n": 2048}
        cmd = [sys.executable, os.path.join(HERE, "_worker.py"), json.dumps(payload)]
    else:
        env["NETSPEC_ISA"] = args[1]
        cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + list(args[1:])
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def fmt(ms):
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default="avx2", help="variant A (the reference)")
    ap.add_argument("--b", default="avx512", help="variant B")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--quick", action="store_true", help="three conv layers only (a smoke test)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.worker:
        return worker(opts.worker[0], "quick" in opts.worker[1:])
    extra = ["quick"] if opts.quick else []
    load0 = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    results = {}   # threads -> {"a": [rows per pair], "b": [...], "sgemm": [GFLOP/s], "others": [...]}
    info = None
    for threads in [int(t) for t in opts.threads.split(",")]:
        res = results[threads] = {"a": [], "b": [], "sgemm": [], "others": []}
        for k in range(opts.pairs):
            row = job(["sgemm"], threads)["rows"]["sgemm"]
            res["sgemm"].append(row["flops"] / statistics.median(row["ms"]) / 1e6)
            for side in (("a", "b") if k % 2 == 0 else ("b", "a")):
                out = job(["worker", getattr(opts, side)] + extra, threads)
                info = out if side == "b" else info
                res[side].append({r: v["median_ms"] for r, v in out["rows"].items()})
                res["others"] += [v["others"] for v in out["rows"].values() if v.get("others") is not None]
                flops = {r: v.get("flops") for r, v in out["rows"].items()}
            print(f"{threads} thread(s): pair {k + 1}/{opts.pairs} done (sgemm {res['sgemm'][-1]:.0f} GFLOP/s)",
                  file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    print(f"date: {started}; {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"backend of B's jobs {json.dumps(info['backend_info'])}")
    print(f"A = NETSPEC_ISA={opts.a}, B = NETSPEC_ISA={opts.b}; {opts.pairs} alternated pairs of fresh processes "
          f"per thread count; cells: median over pairs of each process's median")
    print(f"1-minute load average: {load0[0]:.2f} before, {load1[0]:.2f} after (after includes this run)")
    for threads, res in results.items():
        print(f"{threads} thread(s): numpy float32 sgemm {min(res['sgemm']):.0f}-{max(res['sgemm']):.0f} GFLOP/s "
              f"(median {statistics.median(res['sgemm']):.0f}); other processes' share of the CPUs while "
              f"timing: median {statistics.median(res['others']):.0%}, max {max(res['others']):.0%}")
    print()
    print("| row | threads | A ms | B ms | B GFLOP/s | B / A (median of pairs) | B / A range |")
    print("|---|---|---|---|---|---|---|")
    for row in results[next(iter(results))]["a"][0]:
        for threads, res in results.items():
            a = [p[row] for p in res["a"]]
            b = [p[row] for p in res["b"]]
            ratios = [y / x for x, y in zip(a, b)]
            gflops = f"{flops[row] / statistics.median(b) / 1e6:.0f}" if flops.get(row) else ""
            print(f"| {row} | {threads} | {fmt(statistics.median(a))} | {fmt(statistics.median(b))} | {gflops} | "
                  f"{statistics.median(ratios):.2f} | {min(ratios):.2f}-{max(ratios):.2f} |")


if __name__ == "__main__":
    main()
