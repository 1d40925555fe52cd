"""One benchmark job in a fresh process, started by benchmarks/bench.py; prints one JSON line.

Usage:  python benchmarks/_worker.py '{"framework": "netspec", "case": "deep_convnet.train", ...}'

Frameworks: ``netspec`` (compiled kernels; NETSPEC_REQUIRE_CYTHON is set by the parent so
a missing build fails instead of falling back), ``numpy`` (netspec with
NETSPEC_PUREPYTHON=1), ``torch`` (the same networks built with torch.nn), ``ort``
(onnxruntime on the ONNX model netspec exported, predict only) and ``blas``
(numpy's float32 matmul, for the peak). A netspec or numpy job never imports torch and a
torch job never imports netspec, so neither library's thread pools exist in the other's
process.

Cases: ``<net>.train`` and ``<net>.predict`` for net in simple_convnet, deep_convnet,
resnet_fashion (float32, batch 100; the ResNet's torch twin is built from its flat spec); ``float16`` (netspec only: deep_convnet predict of 300 images in
batches of 100, float32 then float16, in the same process); ``kernels`` (the im2col,
col2im, conv, max-pool and Adam rows); ``sgemm`` (blas only).

Threads come from the parent through OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
MKL_NUM_THREADS, and are applied again here at run time with threadpoolctl (BLAS and
OpenMP pools) and, for torch, torch.set_num_threads.

Output: {"rows": {row: {"ms": [timed calls], "median_ms", "others", "flops" (when known)}},
"extra": {...}, "info": {...}}; "others" is the share of the machine's CPU time that other
processes used during the timed calls. Train and predict jobs (netspec and onnxruntime) also
report "peak_mb": the growth of the resident-set high-water mark (VmHWM) over all their calls,
above the resident set after setup (for predict: after the inference graph or session is built).
"""
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH = 100


# --- measuring -------------------------------------------------------------------

def measure(fn, timing):
    """{"ms": times of the timed calls of fn, "others": share of the CPUs other processes used}.

    timing: warmup (calls, stopped early once they have taken `budget` s; always at least
    one), min_reps, max_reps, budget (s of timed calls to reach), cap (s after which timing
    stops even below min_reps, for very slow calls). "others" covers the timed calls only
    (None when they took under 0.1 s, too short for /proc/stat's 10 ms ticks).
    """
    start = time.perf_counter()
    for _ in range(max(1, timing["warmup"])):
        fn()
        if time.perf_counter() - start > timing["budget"]:
            break
    times = []
    busy0, own0, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    while len(times) < timing["max_reps"]:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
        if elapsed > timing["cap"] or (len(times) >= timing["min_reps"] and elapsed >= timing["budget"]):
            break
    elapsed, busy1, own1 = time.perf_counter() - start, busy_cpu_seconds(), own_cpu_seconds()
    others = None
    if busy0 is not None and busy1 is not None and elapsed >= 0.1:
        others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (elapsed * (os.cpu_count() or 1))
    return {"ms": times, "others": others}


def busy_cpu_seconds():
    """CPU seconds spent busy on all CPUs since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]  # user .. steal (guest is in user)
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def own_cpu_seconds():
    """CPU seconds used by this process, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def status_kb(key):
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_high_water_mark():
    """Set VmHWM back to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_with_memory(fn, timing):
    """(measure(fn, timing), peak_mb): peak_mb is the VmHWM growth over warm-up and timed calls."""
    base = status_kb("VmRSS")
    exact = reset_high_water_mark()
    result = measure(fn, timing)
    peak = status_kb("VmHWM")
    if base is None or peak is None or not exact:  # without the reset, VmHWM may hold an older mark
        return result, None
    return result, (peak - base) / 1024


def limit_threads(n):
    """Cap every BLAS and OpenMP pool loaded so far at n threads; returns their description."""
    from threadpoolctl import threadpool_info, threadpool_limits
    threadpool_limits(limits=n)
    return [{"api": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads")}
            for p in threadpool_info()]


# --- netspec (compiled or numpy fallback) ------------------------------------------

def netspec_setup(name, dtype="float32", n=BATCH):
    """(model, optimizer, x, t) of a seed spec, seeded inputs."""
    sys.path.insert(0, ROOT)  # benchmark the checkout
    import numpy as np

    import netspec
    from netspec.optim import make_optimizer
    spec = netspec.load_spec(os.path.join(ROOT, "specs", name + ".yaml"))
    model = netspec.compile(spec, dtype=dtype)
    rng = np.random.default_rng(0)
    x = rng.random((n,) + tuple(model.input_shape)).astype(dtype)
    t = rng.integers(0, 10, n)
    return model, make_optimizer(spec.train.optimizer), x, t


def netspec_info():
    import numpy as np

    import netspec
    import netspec.kernels as K
    return {"netspec": netspec.__version__, "numpy": np.__version__, "backend": K.BACKEND,
            "backend_info": K.backend_info(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}


def netspec_job(case, args):
    from netspec.summary import summarize
    if case == "float16":
        rows = {}
        for dtype in ("float32", "float16"):
            model, _, x, _ = netspec_setup("deep_convnet", dtype, n=args["fp16_images"])
            rows[f"deep_convnet predict {dtype}"] = measure(
                lambda m=model, x=x: m.predict(x, batch_size=BATCH), args["timing"])
        return rows, {}
    name, what = case.split(".")
    model, opt, x, t = netspec_setup(name)
    forward = summarize(model)["total_flops"] * BATCH
    if what == "predict":
        model.inference_graph()   # the graph's passes (folded weights), like an onnxruntime session's, come first
        result, peak = measure_with_memory(lambda: model.predict(x), args["timing"])
        return {case: dict(result, flops=forward)}, {"peak_mb": peak}

    def step():
        _, grads = model.gradient(x, t)
        opt.update(model.params, grads)
    result, peak = measure_with_memory(step, args["timing"])
    return {case: dict(result, flops=3 * forward)}, {"peak_mb": peak}  # backward ~ 2x forward


def conv_shapes(quick):
    """(N, C, H, W, filters, k, stride, pad): simple_convnet conv1, deep_convnet conv2/4/6."""
    shapes = [(100, 1, 28, 28, 30, 5, 1, 0), (100, 16, 28, 28, 16, 3, 1, 1),
              (100, 32, 14, 14, 32, 3, 1, 2), (100, 64, 8, 8, 64, 3, 1, 1)]
    return shapes[:1] if quick else shapes


def pool_shapes(quick):
    shapes = [(100, 30, 24, 24, 2, 2), (100, 16, 28, 28, 2, 2)]
    return shapes[:1] if quick else shapes


def conv_label(N, C, H, W, F, k, s, p):
    return f"{N}x{C}x{H}x{W} -> {F}@{k}x{k} s{s} p{p}"


def conv_flops(N, C, H, W, F, k, s, p):
    OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    return 2 * N * F * C * k * k * OH * OW


def netspec_kernel_cases(quick):
    """[(row, flops, fn)] on netspec.kernels (compiled, or numpy under NETSPEC_PUREPYTHON)."""
    sys.path.insert(0, ROOT)
    import numpy as np

    import netspec.kernels as K
    rng = np.random.default_rng(0)
    f32 = np.float32
    cases = []
    for shape in conv_shapes(quick):
        N, C, H, W, F, k, s, p = shape
        x = rng.standard_normal((N, C, H, W)).astype(f32)
        w = rng.standard_normal((F, C, k, k)).astype(f32)
        b = rng.standard_normal(F).astype(f32)
        out = K.conv2d_forward(x, w, b, s, p)
        dout = rng.standard_normal(out.shape).astype(f32)
        col = K.im2col(x, k, k, s, p)
        lab, fl = conv_label(*shape), conv_flops(*shape)
        cases += [
            (f"im2col {lab}", None, lambda x=x, k=k, s=s, p=p: K.im2col(x, k, k, s, p)),
            (f"col2im {lab}", None, lambda c=col, x=x, k=k, s=s, p=p: K.col2im(c, x.shape, k, k, s, p)),
            (f"conv fwd {lab}", fl, lambda x=x, w=w, b=b, s=s, p=p: K.conv2d_forward(x, w, b, s, p)),
            (f"conv bwd {lab}", 2 * fl, lambda d=dout, x=x, w=w, s=s, p=p: K.conv2d_backward(d, x, w, s, p)),
        ]
    for N, C, H, W, k, s in pool_shapes(quick):
        x = rng.standard_normal((N, C, H, W)).astype(f32)
        out, _ = K.maxpool2d_forward(x, k, k, s, 0)
        dout = rng.standard_normal(out.shape).astype(f32)

        def pool(x=x, dout=dout, k=k, s=s):
            _, arg = K.maxpool2d_forward(x, k, k, s, 0)
            return K.maxpool2d_backward(dout, arg, x.shape, k, k, s, 0)
        cases.append((f"maxpool fwd+bwd {N}x{C}x{H}x{W} {k}x{k} s{s}", None, pool))
    n = 1_000_000
    p, g = rng.standard_normal(n).astype(f32), rng.standard_normal(n).astype(f32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    cases.append(("adam update 1M params", None,
                  lambda: K.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0)))
    return cases


# --- torch ---------------------------------------------------------------------------

def torch_net(name):
    """The seed network as torch.nn layers: the same shapes, torch's default initialisation."""
    from torch import nn
    if name == "simple_convnet":
        return nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                             nn.Linear(30 * 12 * 12, 100), nn.ReLU(), nn.Linear(100, 10))
    if name == "deep_convnet":
        def conv(i, o, pad=1):
            return [nn.Conv2d(i, o, 3, padding=pad), nn.ReLU()]
        return nn.Sequential(*conv(1, 16), *conv(16, 16), nn.MaxPool2d(2, 2),
                             *conv(16, 32), *conv(32, 32, 2), nn.MaxPool2d(2, 2),
                             *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2, 2), nn.Flatten(),
                             nn.Linear(64 * 4 * 4, 50), nn.ReLU(), nn.Dropout(0.5),
                             nn.Linear(50, 10), nn.Dropout(0.5))
    return TorchGraph(flat_spec(name))


def flat_spec(name):
    """The flat layer list of specs/<name>.yaml, as `netspec expand --json` wrote it for this run
    (the parent writes it: a torch process never imports netspec)."""
    with open(os.path.join(HERE, "_out", f"{name}.flat.json")) as f:
        return json.load(f)


def _torch_graph_class():
    import torch
    from torch import nn

    class Graph(nn.Module):
        """A flat netspec spec (layers with optional named inputs) as torch.nn modules, run in order.

        Covers the layer types the benchmarked specs use (conv2d, batchnorm, relu, maxpool2d, add,
        globalavgpool2d, dense, dropout); the same shapes as netspec's, torch's own initialisation.
        """

        def __init__(self, spec):
            super().__init__()
            shape = {"input": tuple(spec["input"]["shape"])}
            self.plan, self.mods = [], nn.ModuleList()
            prev = "input"
            for layer in spec["layers"]:
                kind, name = layer["type"], layer["name"]
                inputs = layer.get("inputs") or [prev]
                c, h, w = (shape[inputs[0]] + (1, 1))[:3]
                if kind == "conv2d":
                    kh, kw = layer["kernel"]
                    s, p = layer["stride"], layer["pad"]
                    mod = nn.Conv2d(c, layer["filters"], (kh, kw), s, p, bias=layer["bias"])
                    out = (layer["filters"], (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1)
                elif kind == "batchnorm":
                    mod, out = nn.BatchNorm2d(c, eps=layer["eps"], momentum=1 - layer["momentum"]), (c, h, w)
                elif kind == "relu":
                    mod, out = nn.ReLU(), shape[inputs[0]]
                elif kind == "dropout":
                    mod, out = nn.Dropout(layer["ratio"]), shape[inputs[0]]
                elif kind == "maxpool2d":
                    kh, kw = layer["size"]
                    stride = layer["stride"] or [kh, kw]
                    stride = stride if isinstance(stride, list) else [stride, stride]
                    p = layer["pad"]
                    mod = nn.MaxPool2d((kh, kw), tuple(stride), p)
                    out = (c, (h + 2 * p - kh) // stride[0] + 1, (w + 2 * p - kw) // stride[1] + 1)
                elif kind == "add":
                    mod, out = None, shape[inputs[0]]
                elif kind == "globalavgpool2d":
                    mod, out = nn.AdaptiveAvgPool2d(1), (c,)
                elif kind == "dense":
                    n_in = 1
                    for d in shape[inputs[0]]:
                        n_in *= d
                    mod, out = nn.Sequential(nn.Flatten(), nn.Linear(n_in, layer["units"], bias=layer["bias"])), \
                        (layer["units"],)
                else:
                    raise KeyError(f"layer type {kind!r} has no torch twin here")
                self.plan.append((name, kind, inputs, len(self.mods) if mod is not None else None))
                if mod is not None:
                    self.mods.append(mod)
                shape[name] = out
                prev = name

        def forward(self, x):
            values = {"input": x}
            for name, kind, inputs, m in self.plan:
                if kind == "add":
                    y = values[inputs[0]]
                    for other in inputs[1:]:
                        y = y + values[other]
                else:
                    y = self.mods[m](values[inputs[0]])
                    if kind == "globalavgpool2d":
                        y = torch.flatten(y, 1)
                values[name] = y
            return y

    return Graph


def TorchGraph(spec):
    return _torch_graph_class()(spec)


def torch_optimizer(name, params):
    """The optimizer of specs/<name>.yaml in torch (Adam for the book's nets, Nesterov SGD for the ResNet)."""
    import torch
    if name == "resnet_fashion":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return torch.optim.Adam(params, lr=1e-3)


def torch_job(case, args):
    import torch
    import torch.nn.functional as TF
    if case == "kernels":
        return run_kernel_cases(torch_kernel_cases(args["quick"]), args), {}
    name, what = case.split(".")
    torch.manual_seed(0)
    net = torch_net(name)
    x = torch.rand(BATCH, 1, 28, 28)
    t = torch.randint(0, 10, (BATCH,))
    if what == "predict":
        net.eval()

        def predict():
            with torch.inference_mode():
                return net(x)
        return {case: measure(predict, args["timing"])}, {}
    net.train()
    opt = torch_optimizer(name, net.parameters())

    def step():
        opt.zero_grad()
        TF.cross_entropy(net(x), t).backward()
        opt.step()
    result, peak = measure_with_memory(step, args["timing"])
    return {case: result}, {"peak_mb": peak}


def torch_kernel_cases(quick):
    """The rows of netspec_kernel_cases, on torch's own operators (unfold, fold, ...)."""
    import torch
    import torch.nn.functional as TF
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape in conv_shapes(quick):
        N, C, H, W, F, k, s, p = shape
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        x = torch.randn(N, C, H, W, generator=g)
        w = torch.randn(F, C, k, k, generator=g)
        b = torch.randn(F, generator=g)
        dout = torch.randn(N, F, OH, OW, generator=g)
        col = TF.unfold(x, k, padding=p, stride=s)
        lab, fl = conv_label(*shape), conv_flops(*shape)

        def unfold(x=x, k=k, s=s, p=p):
            with torch.inference_mode():
                return TF.unfold(x, k, padding=p, stride=s)

        def fold(col=col, H=H, W=W, k=k, s=s, p=p):
            with torch.inference_mode():
                return TF.fold(col, (H, W), k, padding=p, stride=s)

        def fwd(x=x, w=w, b=b, s=s, p=p):
            with torch.inference_mode():
                return TF.conv2d(x, w, b, stride=s, padding=p)

        def bwd(dout=dout, x=x, w=w, F=F, s=s, p=p):
            return torch.ops.aten.convolution_backward(
                dout, x, w, [F], [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, True, True])
        cases += [(f"im2col {lab}", None, unfold), (f"col2im {lab}", None, fold),
                  (f"conv fwd {lab}", fl, fwd), (f"conv bwd {lab}", 2 * fl, bwd)]
    for N, C, H, W, k, s in pool_shapes(quick):
        x = torch.randn(N, C, H, W, generator=g)
        dout = torch.randn(N, C, (H - k) // s + 1, (W - k) // s + 1, generator=g)

        def pool(x=x, dout=dout, k=k, s=s):
            with torch.inference_mode():
                _, idx = torch.ops.aten.max_pool2d_with_indices(x, [k, k], [s, s])
                return torch.ops.aten.max_pool2d_with_indices_backward(
                    dout, x, [k, k], [s, s], [0, 0], [1, 1], False, idx)
        cases.append((f"maxpool fwd+bwd {N}x{C}x{H}x{W} {k}x{k} s{s}", None, pool))
    p = torch.nn.Parameter(torch.randn(1_000_000, generator=g))
    p.grad = torch.randn(1_000_000, generator=g)
    opt = torch.optim.Adam([p], lr=1e-3, eps=1e-8, fused=True)
    cases.append(("adam update 1M params", None, opt.step))
    return cases


def torch_info():
    import torch
    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}


# --- shared --------------------------------------------------------------------------

def run_kernel_cases(cases, args):
    rows = {}
    for row, flops, fn in cases:
        try:
            rows[row] = dict(measure(fn, args["kernel_timing"]), flops=flops)
        except Exception as exc:  # noqa: BLE001  (one broken kernel must not hide the other rows)
            rows[row] = {"ms": [], "flops": flops, "error": f"{type(exc).__name__}: {exc}"}
    return rows


# --- onnxruntime ---------------------------------------------------------------------

def ort_job(case, args):
    """Predict of batch 100 with onnxruntime on the model netspec exported (benchmarks/_out/<net>.onnx,
    written by the parent from the same seeded spec), intra-op threads as the parent says."""
    import numpy as np
    import onnxruntime as ort
    name, what = case.split(".")
    if what != "predict":
        raise SystemExit(f"onnxruntime runs predict only, not {case}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args["threads"]
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(os.path.join(HERE, "_out", f"{name}.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [BATCH] + [d for d in inp.shape[1:]]
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    result, peak = measure_with_memory(lambda: sess.run(None, {inp.name: x}), args["timing"])
    return {case: result}, {"peak_mb": peak}


def ort_info():
    import onnxruntime as ort
    return {"onnxruntime": ort.__version__, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}


def sgemm_job(args):
    """Float32 matmul GFLOP/s of a large square product through numpy (the peak)."""
    import numpy as np
    n = args["sgemm_n"]
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    c = np.empty_like(a)
    result = measure(lambda: np.matmul(a, a, out=c), args["timing"])
    return {"sgemm": dict(result, flops=2 * n ** 3)}, {"numpy": np.__version__}


def main():
    args = json.loads(sys.argv[1])
    fw, case, threads = args["framework"], args["case"], args["threads"]
    if fw == "torch":
        import torch
        torch.set_num_threads(threads)
        pools = limit_threads(threads)
        rows, extra = torch_job(case, args)
        info = torch_info()
    elif fw == "ort":
        import onnxruntime  # noqa: F401
        pools = limit_threads(threads)
        rows, extra = ort_job(case, args)
        info = ort_info()
    elif fw == "blas":
        import numpy  # noqa: F401  (load the BLAS before capping it)
        pools = limit_threads(threads)
        rows, extra = sgemm_job(args)
        info = {}
    else:  # netspec, compiled or numpy fallback (chosen by the environment)
        sys.path.insert(0, ROOT)
        import netspec.kernels
        netspec.kernels.load()  # the backend: numpy's BLAS and, compiled, the OpenMP runtime
        pools = limit_threads(threads)
        if case == "kernels":
            rows, extra = run_kernel_cases(netspec_kernel_cases(args["quick"]), args), {}
        else:
            rows, extra = netspec_job(case, args)
        info = netspec_info()
    if fw != "netspec" and fw != "numpy" and "netspec" in sys.modules:
        sys.exit("netspec was imported into another framework's process: the timings are not valid")
    if fw != "torch" and "torch" in sys.modules:  # its thread pool would compete with netspec's
        sys.exit("torch was imported into a netspec process: the timings are not valid")
    info["pools"] = pools
    for r in rows.values():
        r["median_ms"] = statistics.median(r["ms"]) if r["ms"] else None
    print(json.dumps({"rows": rows, "extra": extra, "info": info}))


if __name__ == "__main__":
    main()
