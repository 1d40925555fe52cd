"""Benchmark netspec's kernels and seed networks against numpy and PyTorch.

Usage:  python benchmarks/bench.py [--quick] [--write] [--skip-models] [--skip-memory]

Everything runs in one process (memory in subprocesses): each case is warmed
up, then timed repeatedly, and the median is reported in milliseconds.
Columns: netspec compiled float32 / float64, netspec numpy fallback float64
(``netspec.kernels.numpy_kernels`` called directly), PyTorch CPU float32 /
float64 at the same thread count when torch is importable, and ratios.
``--write`` stores the table, with date and machine, in benchmarks/README.md.

Timings on a shared machine are noise: the script reports the load average
before it starts; with another process busy, 2-thread BLAS was seen to slow
down 15-46x.
"""
import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # benchmark the checkout, built in place

# torch first: importing netspec's compiled kernels sets OMP_WAIT_POLICY=PASSIVE
# (see csrc/_compiled.pyx), which must not leak into torch's own OpenMP runtime
try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    torch = None

import netspec.kernels as K  # noqa: E402
from netspec.kernels import numpy_kernels as NP  # noqa: E402

try:
    from netspec.kernels import _compiled as CY
except ImportError:  # the table then shows only the fallback
    CY = None

THREADS = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
if torch is not None:
    torch.set_num_threads(THREADS)

BUDGET = 1.0  # seconds of timed runs per cell (after warm-up)
MAX_WAIT = 10.0  # seconds to wait for a quiet machine before each cell
BUSY = 0.15  # fraction of CPU time used by others above which a cell is marked


def busy_fraction(dt=0.25):
    """Share of all CPUs' time spent busy over dt seconds while this process sleeps."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = snap()
        time.sleep(dt)
        t1, i1 = snap()
    except OSError:  # not Linux: cannot tell
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet():
    """Wait up to MAX_WAIT s for other processes to go idle; returns the last busy fraction."""
    start = time.perf_counter()
    b = busy_fraction()
    while b > BUSY and time.perf_counter() - start < MAX_WAIT:
        b = busy_fraction()
    return b


def timeit(fn, budget=None, min_reps=5, max_reps=200, warmup=2):
    """Median wall time of fn() in ms, after warm-up."""
    budget = BUDGET if budget is None else budget
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def matmul_peak(dtype, n=1536):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
    c = np.empty_like(a)
    wait_quiet()
    ms = timeit(lambda: np.matmul(a, a, out=c), budget=0.5)
    return 2 * n ** 3 / ms / 1e6  # GFLOP/s


# --- kernel cases ---------------------------------------------------------------
# Each case maps a backend label to a zero-argument callable (or None when
# unavailable) and may give the FLOPs of one call.

def _rng():
    return np.random.default_rng(0)


def conv_cases(N, C, H, W, F, k, stride, pad):
    OH, OW = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    flops_fwd = 2 * N * F * C * k * k * OH * OW
    rng = _rng()
    fwd, bwd, i2c, c2i = {}, {}, {}, {}
    for label, mod, dt in (("cy32", CY, np.float32), ("cy64", CY, np.float64), ("np64", NP, np.float64)):
        if mod is None:
            continue
        x = rng.standard_normal((N, C, H, W)).astype(dt)
        Wt = rng.standard_normal((F, C, k, k)).astype(dt)
        b = rng.standard_normal(F).astype(dt)
        ws = {}
        out = mod.conv2d_forward(x, Wt, b, stride, pad, ws)
        dout = rng.standard_normal(out.shape).astype(dt)
        col = mod.im2col(x, k, k, stride, pad)
        fwd[label] = (lambda m=mod, x=x, Wt=Wt, b=b, ws=ws: m.conv2d_forward(x, Wt, b, stride, pad, ws))
        bwd[label] = (lambda m=mod, d=dout, x=x, Wt=Wt, ws=ws: m.conv2d_backward(d, x.shape, Wt, stride, pad, ws))
        i2c[label] = (lambda m=mod, x=x: m.im2col(x, k, k, stride, pad))
        c2i[label] = (lambda m=mod, c=col, x=x: m.col2im(c, x.shape, k, k, stride, pad))
    if torch is not None:
        for label, dt in (("pt32", torch.float32), ("pt64", torch.float64)):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(N, C, H, W, dtype=dt, generator=g)
            Wt = torch.randn(F, C, k, k, dtype=dt, generator=g)
            b = torch.randn(F, dtype=dt, generator=g)
            dout = torch.randn(N, F, OH, OW, dtype=dt, generator=g)
            col = TF.unfold(x, k, padding=pad, stride=stride)

            def tf(x=x, Wt=Wt, b=b):
                with torch.no_grad():
                    return TF.conv2d(x, Wt, b, stride=stride, padding=pad)

            def tb(x=x, Wt=Wt, dout=dout):
                return torch.ops.aten.convolution_backward(
                    dout, x, Wt, [F], [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1,
                    [True, True, True])

            def tu(x=x):
                with torch.no_grad():
                    return TF.unfold(x, k, padding=pad, stride=stride)

            def tfo(col=col):
                with torch.no_grad():
                    return TF.fold(col, (H, W), k, padding=pad, stride=stride)
            fwd[label], bwd[label], i2c[label], c2i[label] = tf, tb, tu, tfo
    shape = f"{N}x{C}x{H}x{W} -> {F}@{k}x{k} s{stride} p{pad}"
    return [
        (f"im2col {shape}", i2c, None),
        (f"col2im {shape}", c2i, None),
        (f"conv fwd {shape}", fwd, flops_fwd),
        (f"conv bwd {shape}", bwd, 2 * flops_fwd),
    ]


def maxpool_case(N, C, H, W, k, stride):
    rng = _rng()
    cases = {}
    for label, mod, dt in (("cy32", CY, np.float32), ("cy64", CY, np.float64), ("np64", NP, np.float64)):
        if mod is None:
            continue
        x = rng.standard_normal((N, C, H, W)).astype(dt)
        out, _ = mod.maxpool2d_forward(x, k, k, stride, 0)
        dout = rng.standard_normal(out.shape).astype(dt)

        def run(m=mod, x=x, dout=dout):
            _, arg = m.maxpool2d_forward(x, k, k, stride, 0)
            return m.maxpool2d_backward(dout, arg, x.shape, k, k, stride, 0)
        cases[label] = run
    if torch is not None:
        for label, dt in (("pt32", torch.float32), ("pt64", torch.float64)):
            x = torch.randn(N, C, H, W, dtype=dt)
            OH = (H - k) // stride + 1
            dout = torch.randn(N, C, OH, (W - k) // stride + 1, dtype=dt)

            def trun(x=x, dout=dout):
                with torch.no_grad():
                    out, idx = torch.ops.aten.max_pool2d_with_indices(x, [k, k], [stride, stride])
                    return torch.ops.aten.max_pool2d_with_indices_backward(
                        dout, x, [k, k], [stride, stride], [0, 0], [1, 1], False, idx)
            cases[label] = trun
    return [(f"maxpool fwd+bwd {N}x{C}x{H}x{W} {k}x{k} s{stride}", cases, None)]


def adam_case(n=1_000_000):
    rng = _rng()
    cases = {}
    for label, mod, dt in (("cy32", CY, np.float32), ("cy64", CY, np.float64), ("np64", NP, np.float64)):
        if mod is None:
            continue
        p = rng.standard_normal(n).astype(dt)
        g = rng.standard_normal(n).astype(dt)
        m, v = np.zeros_like(p), np.zeros_like(p)
        cases[label] = (lambda mod=mod, p=p, g=g, m=m, v=v:
                        mod.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0))
    if torch is not None:
        for label, dt in (("pt32", torch.float32), ("pt64", torch.float64)):
            p = torch.nn.Parameter(torch.randn(n, dtype=dt))
            p.grad = torch.randn(n, dtype=dt)
            opt = torch.optim.Adam([p], lr=1e-3, eps=1e-8, fused=True)
            cases[label] = opt.step
    return [(f"adam update {n // 1000}k params (fused)", cases, None)]


# --- model cases ---------------------------------------------------------------

def _torch_net(name, dt):
    nn = torch.nn
    if name == "simple_convnet":
        net = nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                            nn.Linear(30 * 12 * 12, 100), nn.ReLU(), nn.Linear(100, 10))
    elif name == "deep_convnet":
        def c(i, o, p=1):
            return [nn.Conv2d(i, o, 3, padding=p), nn.ReLU()]
        net = nn.Sequential(*c(1, 16), *c(16, 16), nn.MaxPool2d(2, 2),
                            *c(16, 32), *c(32, 32, 2), nn.MaxPool2d(2, 2),
                            *c(32, 64), *c(64, 64), nn.MaxPool2d(2, 2), nn.Flatten(),
                            nn.Linear(64 * 4 * 4, 50), nn.ReLU(), nn.Dropout(0.5),
                            nn.Linear(50, 10), nn.Dropout(0.5))
    elif name == "two_layer_net":
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 50), nn.Sigmoid(), nn.Linear(50, 10))
    else:
        raise KeyError(name)
    return net.to(dt)


def _torch_optimizer(name, net):
    if name == "two_layer_net":
        return torch.optim.SGD(net.parameters(), lr=0.1)
    return torch.optim.Adam(net.parameters(), lr=1e-3)


def netspec_model(name, dtype, kernels_module=None):
    """(train_step, infer) callables for a seed spec at batch 100, or raise."""
    import netspec
    from netspec.optim import make_optimizer
    spec = netspec.load_spec(os.path.join(ROOT, "specs", name + ".yaml"))
    model = netspec.compile(spec, dtype=dtype)
    opt = make_optimizer(spec.train.optimizer)
    rng = _rng()
    x = rng.random((100,) + tuple(model.input_shape)).astype(dtype)
    t = rng.integers(0, 10, 100)

    def step():
        grads = model.gradient(x, t)
        opt.update(model.params, grads)

    return step, (lambda: model.predict(x))


def torch_model(name, dt):
    net = _torch_net(name, dt)
    opt = _torch_optimizer(name, net)
    shape = (100, 784) if name == "two_layer_net" else (100, 1, 28, 28)
    x = torch.rand(shape, dtype=dt)
    t = torch.randint(0, 10, (100,))

    def step():
        net.train()
        opt.zero_grad(set_to_none=False)
        TF.cross_entropy(net(x), t).backward()
        opt.step()

    def infer():
        net.eval()
        with torch.no_grad():
            return net(x)
    return step, infer


def model_cases(names):
    rows = []
    for name in names:
        steps, infers = {}, {}
        for label, dt, use_numpy in (("cy32", "float32", False), ("cy64", "float64", False),
                                     ("np64", "float64", True)):
            if not use_numpy and CY is None:
                continue
            steps[label], infers[label] = _with_backend(
                use_numpy, lambda dt=dt: netspec_model(name, dt))
        if torch is not None:
            for label, dt in (("pt32", torch.float32), ("pt64", torch.float64)):
                steps[label], infers[label] = torch_model(name, dt)
        rows.append((f"{name} train step (batch 100)", steps, None))
        rows.append((f"{name} inference (batch 100)", infers, None))
    return rows


def _with_backend(use_numpy, build):
    """Build a model whose calls run on the numpy reference (or the active backend)."""
    step, infer = build()
    if not use_numpy:
        return step, infer
    saved = {n: getattr(K, n) for n in NP.__all__}

    def swap(fn):
        def run():
            for n in NP.__all__:
                setattr(K, n, getattr(NP, n))
            try:
                return fn()
            finally:
                for n, f in saved.items():
                    setattr(K, n, f)
        return run
    return swap(step), swap(infer)


# --- memory ----------------------------------------------------------------------

MEM_CHILD = r"""
import json, os, sys
sys.path.insert(0, {root!r})
which = {which!r}

def status_mb(key):
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith(key + ":"):
                return int(ln.split()[1]) / 1024

if which == "torch":
    import torch
    torch.set_num_threads({threads})
    sys.path.insert(0, {here!r})
    import bench
    step, _ = bench.torch_model("deep_convnet", torch.float32)
else:
    if which == "numpy":
        os.environ["NETSPEC_PUREPYTHON"] = "1"
    sys.path.insert(0, {here!r})
    import bench
    step, _ = bench.netspec_model("deep_convnet", "float32")
base = status_mb("VmRSS")
try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
for _ in range(3):
    step()
peak = status_mb("VmHWM")  # per address space: not inherited from the parent, unlike ru_maxrss
print(json.dumps({{"base_mb": base, "peak_mb": peak}}))
"""


def peak_memory(which):
    """Peak RSS growth (MB) over three deep_convnet float32 train steps, in a fresh process."""
    code = MEM_CHILD.format(root=ROOT, here=HERE, which=which, threads=THREADS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode:
        return None, out.stderr.strip().splitlines()[-1:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["peak_mb"] - r["base_mb"], None


def traced_peak_netspec():
    """Peak numpy allocation (MB) inside one deep_convnet float32 train step, via tracemalloc."""
    import tracemalloc
    step, _ = netspec_model("deep_convnet", "float32")
    step()
    step()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


# --- table ------------------------------------------------------------------------

COLS = ("cy32", "cy64", "np64", "pt32", "pt64")


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def run_rows(rows, peak32):
    lines = []
    head = ("| case | cy f32 ms | cy f64 ms | numpy f64 ms | torch f32 ms | torch f64 ms "
            "| cy32/torch32 | cy64/torch64 | numpy64/cy64 | cy f32 GFLOP/s (% peak) |")
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    print(head, flush=True)
    for name, cases, flops in rows:
        t, noisy = {}, set()
        for col in COLS:
            fn = cases.get(col)
            if fn is None:
                t[col] = None
                continue
            busy = wait_quiet()
            if busy > BUSY:
                noisy.add(col)
            try:
                t[col] = timeit(fn)
            except Exception as exc:  # a broken case should not hide the others
                print(f"  {name} [{col}] failed: {exc!r}", file=sys.stderr)
                t[col] = None
            gc.collect()

        def ratio(a, b):
            return None if t[a] is None or t[b] is None else t[a] / t[b]
        gf = None
        if flops and t["cy32"]:
            g = flops / t["cy32"] / 1e6
            gf = f"{g:.0f} ({100 * g / peak32:.0f}%)"
        c = {k: fmt(v) + ("*" if k in noisy else "") for k, v in t.items()}
        line = (f"| {name} | {c['cy32']} | {c['cy64']} | {c['np64']} | "
                f"{c['pt32']} | {c['pt64']} | {fmt(ratio('cy32', 'pt32'), '{:.2f}x')} | "
                f"{fmt(ratio('cy64', 'pt64'), '{:.2f}x')} | {fmt(ratio('np64', 'cy64'), '{:.1f}x')} | "
                f"{gf or '-'} |")
        print(line, flush=True)
        lines.append(line)
    return lines


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"


def main(argv=None):
    global BUDGET, MAX_WAIT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing budget per cell")
    ap.add_argument("--write", action="store_true", help="store the table in benchmarks/README.md")
    ap.add_argument("--skip-models", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--only", help="substring filter on case names")
    ap.add_argument("--max-wait", type=float, default=MAX_WAIT,
                    help="seconds to wait for a quiet machine before each cell (default 10)")
    args = ap.parse_args(argv)
    MAX_WAIT = args.max_wait
    if args.quick:
        BUDGET = 0.3

    load = os.getloadavg()[0]
    header = [
        f"date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"machine: {machine()}",
        f"numpy {np.__version__}; netspec backend {K.BACKEND}"
        + (f" {json.dumps(CY.backend_info())}" if CY else f" ({K.BACKEND_ERROR})")
        + (f"; torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else "; torch not installed"),
        f"threads: {THREADS}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')!r}; "
        f"load average at start {load:.2f}" + ("  (NOT QUIET: timings unreliable)" if load > 0.5 else ""),
    ]
    peak32, peak64 = matmul_peak(np.float32), matmul_peak(np.float64)
    header.append(f"numpy matmul peak: {peak32:.0f} GFLOP/s float32, {peak64:.0f} GFLOP/s float64")
    for h in header:
        print(h)
    print()

    rows = []
    # the seed networks' layers: simple_convnet conv1, deep_convnet conv2/conv4/conv6
    rows += conv_cases(100, 1, 28, 28, 30, 5, 1, 0)
    rows += conv_cases(100, 16, 28, 28, 16, 3, 1, 1)
    rows += conv_cases(100, 32, 14, 14, 32, 3, 1, 2)
    rows += conv_cases(100, 64, 8, 8, 64, 3, 1, 1)
    rows += maxpool_case(100, 30, 24, 24, 2, 2)
    rows += maxpool_case(100, 16, 28, 28, 2, 2)
    rows += adam_case()
    notes = []
    if not args.skip_models:
        try:
            import netspec
            netspec.compile  # noqa: B018
            rows += model_cases(["simple_convnet", "deep_convnet", "two_layer_net"])
        except Exception as exc:
            notes.append(f"model rows skipped: {exc!r}")
    if args.only:
        rows = [r for r in rows if args.only in r[0]]
    lines = run_rows(rows, peak32)
    lines += ["", "`*`: another process was using more than 15% of the CPUs when this cell started; "
              "treat it as noise."]

    if not args.skip_memory:
        mem = {}
        for which in ("netspec", "numpy") + (("torch",) if torch else ()):
            mem[which], err = peak_memory(which)
            if err:
                notes.append(f"memory [{which}] failed: {err}")
        try:
            traced = traced_peak_netspec()
        except Exception as exc:
            traced = None
            notes.append(f"tracemalloc failed: {exc!r}")
        memline = ("peak memory of a deep_convnet float32 train step (RSS growth over 3 steps, "
                   "fresh process): " + ", ".join(f"{k} {fmt(v, '{:.0f}')} MB" for k, v in mem.items())
                   + f"; netspec numpy allocations inside one warm step (tracemalloc): {fmt(traced, '{:.1f}')} MB")
        print()
        print(memline)
        lines += ["", memline]
    for n in notes:
        print(n)
    lines += [""] + notes if notes else []
    if args.write:
        write_readme(header, lines)


def write_readme(header, lines):
    path = os.path.join(HERE, "README.md")
    intro = textwrap.dedent("""\
    # Benchmarks

    `python benchmarks/bench.py` (about 5 minutes; `--quick` for less, `--write` to
    refresh the table below). Medians of repeated runs after warm-up, all in one
    process; the peak-memory line runs each framework in a fresh subprocess.
    Build the extension first (`pip install -e . --no-build-isolation` or
    `python setup.py build_ext --inplace`). PyTorch columns need `pip install
    torch==2.13.0` (optional, never a netspec dependency).

    Columns: `cy` is netspec's compiled backend, `numpy` the pure-numpy fallback
    (`netspec.kernels.numpy_kernels`), `torch` PyTorch CPU at the same thread
    count. Ratios below 1 mean netspec is faster. GFLOP/s is relative to the
    machine's float32 numpy matmul peak. Run it on a quiet machine: another busy
    process makes 2-thread BLAS timings meaningless.

    ## Latest run

    """)
    body = "\n".join(["```"] + header + ["```", ""] + lines) + "\n"
    with open(path, "w") as f:
        f.write(intro + body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
