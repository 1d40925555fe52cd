"""Benchmark netspec against PyTorch and netspec's own numpy fallback, one fresh process per job.

Usage:
    python benchmarks/bench.py [--quick] [--write] [--force] [--contended [--pin-spinner CPU]]
                               [--rounds N] [--threads 1,2] [--skip-kernels] [--no-numpy] [--no-ort]
                               [--rows ROW,...]

Workloads (float32, batch 100): simple_convnet, deep_convnet and resnet_fashion train steps
(forward, backward and the spec's optimizer update: Adam, Adam, Nesterov SGD) and predicts; deep_convnet float16 vs float32 inference of 300
images (netspec only); the peak memory of each train step; kernel rows (im2col, col2im,
conv forward/backward, max-pool, Adam) unless --skip-kernels; with --contended, a
deep_convnet train step at 2 threads while another process spins on one core.
Frameworks: ``netspec`` (compiled kernels), ``numpy`` (the same code with
NETSPEC_PUREPYTHON=1), ``torch`` (the same architectures in torch.nn, when torch is
installed; the ResNet's twin is built from its flat spec) and ``ort`` (onnxruntime running the
ONNX model netspec exported from the same seeded spec, predict rows only, when onnx and
onnxruntime are installed), each at every thread count of --threads (default 1 and 2), plus numpy's
float32 matmul on a large square matrix as the peak the train steps are compared with.

The markdown report goes to stdout (progress to stderr); --write also stores it in
benchmarks/_out/table.md, with every measured time in benchmarks/_out/raw.json.
Ratios below 1 mean netspec is faster. The script refuses to start when the 1-minute
load average is above 0.5, because on a busy machine 2-thread timings are meaningless;
--force runs anyway and marks the report as measured under load.

Design: every job (one framework, one workload, one thread count) runs in its own
fresh Python process (benchmarks/_worker.py) that warms up, times repeated calls and
prints a JSON line. Two libraries in one process is not a fair fight: netspec's OpenMP
team, numpy's BLAS threads and torch's intra-op pool all stay alive between calls, and
the idle threads of one spin against the other's work (measured: both sides 1.5-2x
slower than alone). A fresh process also gives each framework its own allocator
history and thread placement, so the spread between processes is part of the result:
each cell is the median over processes of the per-process median, with the lowest and
highest process medians beside it. The parent imports neither netspec nor torch, and
only passes thread counts down through the environment (OMP_NUM_THREADS and the BLAS
variables), which each child applies again at run time (threadpoolctl,
torch.set_num_threads). Jobs run in rounds, and the order of the frameworks rotates
from round to round (netspec, numpy, torch, then numpy, torch, netspec, ...), so a
slow drift of the machine does not always land on the same framework. Each job also
records how much CPU time other processes used during its timed calls (/proc/stat
minus the child's own CPU time); a cell that saw more than 10% of the machine used by
others is marked with `*`.
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from _worker import busy_cpu_seconds  # stdlib only: imports neither netspec nor torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_worker.py")
OUT_DIR = os.path.join(HERE, "_out")

LOAD_MAX = 0.5  # 1-minute load average above which the machine is not quiet
BUSY = 0.10  # share of all CPUs used by other processes above which a cell is marked
JOB_TIMEOUT = 1800  # seconds; float16 inference on a slow backend can take minutes

FULL = {
    "rounds": 3,
    "timing": {"warmup": 3, "min_reps": 5, "max_reps": 200, "budget": 2.0, "cap": 20.0},
    "kernel_timing": {"warmup": 2, "min_reps": 5, "max_reps": 200, "budget": 0.3, "cap": 5.0},
    "fp16_images": 300,
    "sgemm_n": 2048,
}
QUICK = {
    "rounds": 1,
    "timing": {"warmup": 1, "min_reps": 2, "max_reps": 3, "budget": 0.0, "cap": 1.0},
    "kernel_timing": {"warmup": 1, "min_reps": 2, "max_reps": 2, "budget": 0.0, "cap": 0.3},
    "fp16_images": 20,
    "sgemm_n": 1024,
}

MODEL_ROWS = [  # (job case = worker row, label)
    ("simple_convnet.train", "simple_convnet train step"),
    ("simple_convnet.predict", "simple_convnet predict"),
    ("deep_convnet.train", "deep_convnet train step"),
    ("deep_convnet.predict", "deep_convnet predict"),
    ("resnet_fashion.train", "resnet_fashion train step"),
    ("resnet_fashion.predict", "resnet_fashion predict"),
]
NETS = ("simple_convnet", "deep_convnet", "resnet_fashion")
FP16_ROWS = ("deep_convnet predict float32", "deep_convnet predict float16")
SPIN = "import os, sys\nif sys.argv[1] != '-': os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass\n"


# --- running jobs ----------------------------------------------------------------------

def torch_available():
    return importlib.util.find_spec("torch") is not None  # finds it without importing it


def ort_available():
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


PREPARE = """
import os, sys
sys.path.insert(0, sys.argv[1])
import netspec
from netspec.checkpoint import save_checkpoint
for name in sys.argv[3:]:
    model = netspec.compile(os.path.join(sys.argv[1], "specs", name + ".yaml"), dtype="float32")
    save_checkpoint(os.path.join(sys.argv[2], name + ".npz"), model)
"""


def prepare(frameworks):
    """Files the torch and onnxruntime jobs read, written by netspec in a process of their own:
    each net's seeded initial model exported to ONNX, and the ResNet's flat spec for its torch twin."""
    os.makedirs(OUT_DIR, exist_ok=True)
    run = dict(cwd=ROOT, check=True, capture_output=True, text=True)
    try:
        if "torch" in frameworks:
            flat = subprocess.run([sys.executable, "-m", "netspec", "expand", os.path.join("specs", "resnet_fashion.yaml"),
                                   "--json"], **run).stdout
            with open(os.path.join(OUT_DIR, "resnet_fashion.flat.json"), "w") as f:
                f.write(flat)
        if "ort" in frameworks:
            subprocess.run([sys.executable, "-c", PREPARE, ROOT, OUT_DIR, *NETS], **run)
            for name in NETS:
                subprocess.run([sys.executable, "-m", "netspec", "export", os.path.join(OUT_DIR, name + ".npz"),
                                "-o", os.path.join(OUT_DIR, name + ".onnx")], **run)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"bench.py: preparing the torch and onnxruntime inputs failed: {exc.stderr.strip()}")


def child_env(framework, threads):
    """The environment of a job: thread counts for every pool, and netspec's backend choice."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.pop("NETSPEC_PUREPYTHON", None)
    env.pop("NETSPEC_REQUIRE_CYTHON", None)
    if framework == "netspec":
        env["NETSPEC_REQUIRE_CYTHON"] = "1"  # a missing build must fail, not fall back silently
    elif framework == "numpy":
        env["NETSPEC_PUREPYTHON"] = "1"
    return env


def children_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_job(job, settings):
    """Run one job in a fresh worker process; returns its record (rows, extra, info, noise)."""
    payload = {k: settings[k] for k in ("timing", "kernel_timing", "fp16_images", "sgemm_n", "quick")}
    payload.update(framework=job["framework"], case=job["case"], threads=job["threads"])
    busy0, own0, t0 = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, WORKER, json.dumps(payload)], cwd=ROOT,
                              env=child_env(job["framework"], job["threads"]),
                              capture_output=True, text=True, timeout=JOB_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        proc = None
    wall = time.perf_counter() - t0
    busy1, own1 = busy_cpu_seconds(), children_cpu_seconds()
    record = dict(job, wall_s=round(wall, 2), others=None, error=None, rows={}, extra={}, info={})
    if busy0 is not None and busy1 is not None:
        other_cpu = (busy1 - busy0) - (own1 - own0)  # CPU time not spent by this job
        record["others"] = round(max(0.0, other_cpu) / (wall * (os.cpu_count() or 1)), 3)
    if proc is None:
        record["error"] = f"timed out after {JOB_TIMEOUT} s"
    elif proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        record["error"] = f"exit {proc.returncode}: {tail}"
    else:
        try:
            record.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            record["error"] = f"no JSON result on stdout: {proc.stdout[-200:]!r}"
    return record


def plan(frameworks, threads, rounds, kernels, rows=None):
    """Jobs in rounds; each round rotates the framework order and reverses the thread order."""
    def who(case):   # onnxruntime runs the exported model's predict only
        return [fw for fw in frameworks if fw != "ort" or case.endswith(".predict")]
    cases = [(case, who(case)) for case, _ in MODEL_ROWS if rows is None or case in rows]
    if rows is None or "float16" in rows:
        cases.append(("float16", ["netspec"]))
    if kernels and (rows is None or "kernels" in rows):
        cases.append(("kernels", who("kernels")))
    jobs = []
    for r in range(rounds):
        for n in (threads if r % 2 == 0 else threads[::-1]):
            jobs.append({"round": r, "framework": "blas", "case": "sgemm", "threads": n})
            for case, fws in cases:
                k = r % len(fws)
                for fw in fws[k:] + fws[:k]:
                    jobs.append({"round": r, "framework": fw, "case": case, "threads": n})
    return jobs


CONTENDED_ROWS = ("deep_convnet.train", "resnet_fashion.train")


def contended_plan(frameworks, rounds, rows=None):
    fws = [fw for fw in ("netspec", "torch") if fw in frameworks]
    return [{"round": r, "framework": fw, "case": case, "threads": 2, "contended": True}
            for r in range(rounds) for case in CONTENDED_ROWS if rows is None or case in rows
            for fw in (fws if r % 2 == 0 else fws[::-1])]


def start_spinner(cpu):
    """A busy pure-Python loop in its own process (pinned to `cpu` unless it is None)."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN, "-" if cpu is None else str(cpu)])
    time.sleep(0.5)  # let it reach full speed
    return spinner


def run_all(jobs, settings, records, start, total):
    """Run jobs one after the other, appending to records; progress on stderr."""
    for i, job in enumerate(jobs, len(records) + 1):
        rec = run_job(job, settings)
        records.append(rec)
        if rec["error"]:
            what = "FAILED " + rec["error"]
        elif len(rec["rows"]) == 1:
            what = f"{next(iter(rec['rows'].values()))['median_ms']:.2f} ms"
        else:
            what = f"{len(rec['rows'])} rows"
        busy = max([others(rec, row) for row in rec["rows"]] or [others(rec)])
        busy = f", others {100 * busy:.0f}%"
        print(f"[{i}/{total}] round {job['round'] + 1}, {job['threads']} thread(s): {job['case']} "
              f"{job['framework']}{' (contended)' if job.get('contended') else ''}: {what} "
              f"({rec['wall_s']:.1f} s{busy}; {time.perf_counter() - start:.0f} s so far)",
              file=sys.stderr, flush=True)


# --- summarising -------------------------------------------------------------------------

class Cell:
    """Per-process medians of one row, framework and thread count."""

    def __init__(self, values, noisy):
        self.values, self.noisy = values, noisy
        self.median = statistics.median(values) if values else None

    def text(self):
        if self.median is None:
            return "-"
        s = fmt_ms(self.median)
        if len(self.values) > 1:
            s += f" ({fmt_ms(min(self.values))}-{fmt_ms(max(self.values))})"
        return s + ("*" if self.noisy else "")


def fmt_ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt(v, spec):
    return "-" if v is None else spec.format(v)


def div(a, b):
    return None if a is None or b is None or b == 0 else a / b


class Results:
    """Look-ups over the job records: cells, FLOP rates, memory, versions."""

    def __init__(self, records):
        self.records = [r for r in records if not r["error"]]

    def _matching(self, row, fw, threads, contended):
        return [r for r in self.records if r["framework"] == fw and r["threads"] == threads
                and bool(r.get("contended")) == contended and row in r["rows"]]

    def cell(self, row, fw, threads, contended=False):
        recs = [r for r in self._matching(row, fw, threads, contended) if r["rows"][row]["median_ms"]]
        noisy = not contended and any(others(r, row) > BUSY for r in recs)
        return Cell([r["rows"][row]["median_ms"] for r in recs], noisy)

    def ms(self, row, fw, threads, contended=False):
        return self.cell(row, fw, threads, contended).median

    def pair_ratio(self, row, a, b, threads):
        """Median over rounds of a's time / b's time in the same round (the two ran back to back,
        in an order that alternates from round to round), with the lowest and highest round."""
        by_round = {}
        for fw in (a, b):
            for r in self._matching(row, fw, threads, False):
                if r["rows"][row]["median_ms"]:
                    by_round.setdefault(r["round"], {})[fw] = r["rows"][row]["median_ms"]
        ratios = sorted(v[a] / v[b] for v in by_round.values() if a in v and b in v)
        return (statistics.median(ratios), ratios[0], ratios[-1], len(ratios)) if ratios else None

    def flops(self, row):
        for r in self.records:
            if row in r["rows"] and r["rows"][row].get("flops"):
                return r["rows"][row]["flops"]
        return None

    def gflops(self, row, fw, threads):
        g = div(self.flops(row), self.ms(row, fw, threads))  # FLOP per ms
        return None if g is None else g / 1e6

    def peak_gflops(self, threads):
        return self.gflops("sgemm", "blas", threads)

    def percent_of_peak(self, row, fw, threads):
        p = div(self.gflops(row, fw, threads), self.peak_gflops(threads))
        return None if p is None else 100 * p

    def peak_mb(self, case, fw, threads):
        vals = [r["extra"]["peak_mb"] for r in self.records
                if r["case"] == case and r["framework"] == fw and r["threads"] == threads
                and not r.get("contended") and r["extra"].get("peak_mb") is not None]
        return statistics.median(vals) if vals else None

    def kernel_rows(self):
        for fw in ("netspec", "numpy", "torch"):
            for r in self.records:
                if r["case"] == "kernels" and r["framework"] == fw:
                    return list(r["rows"])
        return []

    def info(self, fw):
        return next((r["info"] for r in self.records if r["framework"] == fw), {})

    def pools(self, fw, threads):
        rec = next((r for r in self.records if r["framework"] == fw and r["threads"] == threads), None)
        if rec is None:
            return "-"
        return ", ".join(f"{p['api']} {p['threads']}" for p in rec["info"].get("pools", [])) or "none"


def others(record, row=None):
    """Share of the CPUs other processes used during a row's timed calls (else the whole job)."""
    value = record["rows"][row].get("others") if row else None
    return value if value is not None else (record["others"] or 0.0)


def speed_table(res, rows, threads):
    """Markdown rows: per workload and thread count, the three frameworks, ratio, speed-ups."""
    t1, t2 = threads[0], threads[-1]
    head = (f"| workload | threads | netspec ms | torch ms | netspec/torch | numpy-fallback ms "
            f"| netspec {t1}->{t2} | torch {t1}->{t2} | numpy {t1}->{t2} | % of sgemm peak (netspec / torch) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row, label in rows:
        for n in threads:
            c = {fw: res.cell(row, fw, n) for fw in ("netspec", "torch", "numpy")}
            speedups = ["" for _ in c]
            if n == t2 and t1 != t2:
                speedups = [fmt(div(res.ms(row, fw, t1), res.ms(row, fw, t2)), "{:.2f}x")
                            for fw in ("netspec", "torch", "numpy")]
            pct = [fmt(res.percent_of_peak(row, fw, n), "{:.0f}%") for fw in ("netspec", "torch")]
            pct = "" if pct == ["-", "-"] else " / ".join(pct)
            lines.append(f"| {label} | {n} | {c['netspec'].text()} | {c['torch'].text()} | "
                         f"{fmt(div(c['netspec'].median, c['torch'].median), '{:.2f}x')} | "
                         f"{c['numpy'].text()} | " + " | ".join(speedups) + f" | {pct} |")
    return lines


def targets(res, contended):
    """[(target, measured text, holds)] for the issue's acceptance targets."""
    def ratio(row, n=2):
        return div(res.ms(row, "netspec", n), res.ms(row, "torch", n))

    out = []
    for row, label, limit in (("deep_convnet.train", "deep_convnet train step", 1.0),
                              ("deep_convnet.predict", "deep_convnet predict", 1.0),
                              ("simple_convnet.train", "simple_convnet train step", 0.8),
                              ("simple_convnet.predict", "simple_convnet predict", 0.8)):
        v = ratio(row)
        out.append((f"{label} <= {limit:.1f}x torch (2 threads)", fmt(v, "{:.2f}x"),
                    None if v is None else v <= limit))
    for n in (1, 2):
        for net, limit in (("resnet_fashion", 0.8), ("deep_convnet", 0.8), ("simple_convnet", 0.6)):
            pr = res.pair_ratio(f"{net}.train", "netspec", "torch", n)
            out.append((f"{net} train step <= {limit:.1f}x torch ({n} thread{'s' if n > 1 else ''}, by rounds)",
                        "-" if pr is None else f"{pr[0]:.2f}x", None if pr is None else pr[0] <= limit))
        for net in NETS:
            pr = res.pair_ratio(f"{net}.predict", "netspec", "ort", n)
            out.append((f"{net} predict <= 1.0x onnxruntime ({n} thread{'s' if n > 1 else ''}, by rounds)",
                        "-" if pr is None else f"{pr[0]:.2f}x", None if pr is None else pr[0] <= 1.0))
    v = div(res.ms("deep_convnet.train", "netspec", 1), res.ms("deep_convnet.train", "netspec", 2))
    out.append(("deep_convnet train step 1->2 thread speed-up >= 1.7x", fmt(v, "{:.2f}x"),
                None if v is None else v >= 1.7))
    v = div(res.ms(FP16_ROWS[1], "netspec", 2), res.ms(FP16_ROWS[0], "netspec", 2))
    out.append(("deep_convnet float16 inference <= 1.5x float32 time (2 threads)", fmt(v, "{:.2f}x"),
                None if v is None else v <= 1.5))
    if contended:
        v = div(res.ms("deep_convnet.train", "netspec", 2, contended=True),
                res.ms("deep_convnet.train", "netspec", 2))
        out.append(("deep_convnet train step (2 threads) with a busy process <= 2.5x quiet time",
                    fmt(v, "{:.2f}x"), None if v is None else v <= 2.5))
        for case in CONTENDED_ROWS:
            slow = {fw: div(res.ms(case, fw, 2, contended=True), res.ms(case, fw, 2)) for fw in ("netspec", "torch")}
            ok = None if None in slow.values() else slow["netspec"] <= slow["torch"]
            out.append((f"{case.split('.')[0]} train step (2 threads) slows with a busy process no more than torch's",
                        f"netspec {fmt(slow['netspec'], '{:.2f}x')}, torch {fmt(slow['torch'], '{:.2f}x')}", ok))
    return out


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"


def header(res, records, settings, meta):
    """Banner lines and the fenced block saying how, where and under what load it was measured."""
    threads, frameworks = settings["threads"], settings["frameworks"]
    ns, pt = res.info("netspec"), res.info("torch")
    t, k = settings["timing"], settings["kernel_timing"]
    quiet_runs = [r for r in records if not r.get("contended")]
    noisy = sum(any(others(r, row) > BUSY for row in r["rows"]) for r in quiet_runs)
    peaks = ", ".join(f"{n} thread(s) {fmt(res.peak_gflops(n), '{:.0f}')} GFLOP/s" for n in threads)
    torch_version = (f"torch {pt.get('torch', '?')} (OMP_WAIT_POLICY {pt.get('OMP_WAIT_POLICY') or 'unset'})"
                     if "torch" in frameworks else "torch not installed")
    out = ["# netspec benchmarks", ""]
    if meta["under_load"]:
        out += [(f"**Measured under load** (1-minute load average {meta['load_before']:.2f} > {LOAD_MAX} "
                 f"at the start, run with --force): treat every time below as noise."), ""]
    if settings["quick"]:
        out += [(f"**--quick smoke test**: tiny repeat counts, float16 on {settings['fp16_images']} "
                 f"images, sgemm {settings['sgemm_n']}, one conv and one pool shape; not a measurement."), ""]
    return out + [
        "```",
        f"date: {meta['date']}",
        f"machine: {machine()}",
        (f"netspec {ns.get('netspec', '?')} (backend {ns.get('backend', '?')} "
         f"{json.dumps(ns.get('backend_info', {}))}); numpy {ns.get('numpy', '?')}; {torch_version}"),
        (f"jobs: {meta['n_jobs']} fresh processes, {settings['rounds']} round(s), framework order "
         f"rotated each round; threads {', '.join(map(str, threads))}"),
        (f"per process: warm-up of up to {t['warmup']} call(s) (ended after {t['budget']:g} s), then "
         f"timed calls until both {t['min_reps']} calls and {t['budget']:g} s are reached (or "
         f"{t['cap']:g} s pass); kernel rows: at least {k['min_reps']} calls and {k['budget']:g} s each"),
        "cells: median over processes of each process's median (lowest-highest process median)",
        f"processes that saw others use more than {100 * BUSY:.0f}% of the CPUs: {noisy} of {len(quiet_runs)}",
        (f"1-minute load average: {meta['load_before']:.2f} before, {meta['load_after']:.2f} after "
         f"(after includes this benchmark's own processes)"),
        f"numpy float32 matmul peak ({settings['sgemm_n']}x{settings['sgemm_n']}): {peaks}",
        "thread pools in the children: " + "; ".join(
            f"{fw}@{n}: {res.pools(fw, n)}" for fw in frameworks for n in threads),
        "```", ""]


def fp16_section(res, settings):
    out = [f"## float16 inference (netspec, deep_convnet, {settings['fp16_images']} images in batches of 100)",
           "", "| threads | float32 ms | float16 ms | float16/float32 |", "|---|---|---|---|"]
    for n in settings["threads"]:
        c32, c16 = res.cell(FP16_ROWS[0], "netspec", n), res.cell(FP16_ROWS[1], "netspec", n)
        out.append(f"| {n} | {c32.text()} | {c16.text()} | {fmt(div(c16.median, c32.median), '{:.2f}x')} |")
    return out


def ort_section(res, settings):
    out = ["## Inference against onnxruntime (float32, batch 100)", "",
           ("onnxruntime runs the ONNX model `netspec export` wrote for the same seeded spec, in its own "
            "process, intra-op threads = netspec's threads. netspec/onnxruntime is the median over "
            "rounds of the ratio of the two processes of a round (they run back to back, the order "
            "alternating from round to round), with the lowest and highest round."), "",
           "| workload | threads | netspec ms | onnxruntime ms | netspec/onnxruntime (rounds) |", "|---|---|---|---|---|"]
    for row, label in MODEL_ROWS:
        if row.endswith(".predict"):
            for n in settings["threads"]:
                pr = res.pair_ratio(row, "netspec", "ort", n)
                ratio = "-" if pr is None else f"{pr[0]:.2f}x ({pr[1]:.2f}-{pr[2]:.2f}, {pr[3]})"
                out.append(f"| {label} | {n} | {res.cell(row, 'netspec', n).text()} | "
                           f"{res.cell(row, 'ort', n).text()} | {ratio} |")
    return out


def memory_section(res, settings):
    out = ["## Peak memory of a train step (MB)", "",
           ("VmHWM growth above the resident set after setup, over all of a job's steps "
            "(median over processes)."), "",
           "| workload | threads | netspec | torch | numpy-fallback |", "|---|---|---|---|---|"]
    for case, label in MODEL_ROWS:
        if case.endswith(".train"):
            for n in settings["threads"]:
                mbs = [fmt(res.peak_mb(case, fw, n), "{:.0f}") for fw in ("netspec", "torch", "numpy")]
                out.append(f"| {label} | {n} | " + " | ".join(mbs) + " |")
    if "ort" in settings["frameworks"]:
        out += ["", "## Peak memory of predict (MB)", "",
                ("VmHWM growth above the resident set once the inference graph (netspec) or session "
                 "(onnxruntime) is built, over all of a job's calls (median over processes)."), "",
                "| workload | threads | netspec | onnxruntime |", "|---|---|---|---|"]
        for case, label in MODEL_ROWS:
            if case.endswith(".predict"):
                for n in settings["threads"]:
                    mbs = [fmt(res.peak_mb(case, fw, n), "{:.1f}") for fw in ("netspec", "ort")]
                    out.append(f"| {label} | {n} | " + " | ".join(mbs) + " |")
    return out


def contended_section(res, settings):
    pin = settings["pin_spinner"]
    where = "unpinned" if pin is None else f"pinned to CPU {pin}"
    out = ["## Contended: train steps, 2 threads, one busy process", "",
           f"A pure-Python loop in another process ({where}) keeps one core busy.", "",
           "| workload | framework | quiet ms | contended ms | contended/quiet |", "|---|---|---|---|---|"]
    for case in CONTENDED_ROWS:
        for fw in ("netspec", "torch"):
            if fw in settings["frameworks"]:
                q = res.cell(case, fw, 2)
                c = res.cell(case, fw, 2, contended=True)
                out.append(f"| {case} | {fw} | {q.text()} | {c.text()} | {fmt(div(c.median, q.median), '{:.2f}x')} |")
    return out


def notes(records):
    out = [(f"`*`: while at least one of this cell's processes timed it, other processes used more "
            f"than {100 * BUSY:.0f}% of the machine's CPU time; treat it as noise.")]
    out += [f"job failed: {r['case']} {r['framework']} {r['threads']} thread(s): {r['error']}"
            for r in records if r["error"]]
    out += [f"row failed: {row} {r['framework']} {r['threads']} thread(s): {v['error']}"
            for r in records for row, v in r["rows"].items() if v.get("error")]
    return [f"- {n}" for n in out]


def report(res, records, settings, meta):
    """The whole markdown report."""
    out = header(res, records, settings, meta)
    out += ["## Speed (float32, batch 100)", ""] + speed_table(res, MODEL_ROWS, settings["threads"])
    out += ["", ("A train step is forward, backward and an Adam update; its FLOPs are 3x the forward "
                 "FLOPs of `netspec summary` (torch's twin has the same layers, so the same count). "
                 "Ratios below 1 mean netspec is faster."), ""]
    if "ort" in settings["frameworks"]:
        out += ort_section(res, settings) + [""]
    out += fp16_section(res, settings) + [""] + memory_section(res, settings)
    if settings["contended"]:
        out += [""] + contended_section(res, settings)
    if settings["kernels"]:
        rows = [(r, r) for r in res.kernel_rows()]
        out += ["", "## Kernels (float32)", ""] + speed_table(res, rows, settings["threads"])
        out += ["", ("torch rows use its own operators: unfold (im2col), fold (col2im), conv2d, "
                     "convolution_backward, max_pool2d_with_indices and its backward, fused Adam.")]
    out += ["", "## Targets", "", "| target | measured | holds |", "|---|---|---|"]
    for name, measured, holds in targets(res, settings["contended"]):
        out.append(f"| {name} | {measured} | {'not measured' if holds is None else 'yes' if holds else 'no'} |")
    return "\n".join(out + [""] + notes(records)) + "\n"


# --- main ---------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny repeat counts, one round")
    ap.add_argument("--write", action="store_true", help="also write benchmarks/_out/table.md and raw.json")
    ap.add_argument("--force", action="store_true",
                    help=f"run even when the 1-minute load average is above {LOAD_MAX} (report marked)")
    ap.add_argument("--contended", action="store_true",
                    help="also time a deep_convnet train step at 2 threads beside a busy process")
    ap.add_argument("--pin-spinner", type=int, metavar="CPU",
                    help="pin the --contended busy process to this CPU (default: unpinned)")
    ap.add_argument("--rounds", type=int, help="rounds of every job (default 3, --quick 1)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    ap.add_argument("--skip-kernels", action="store_true", help="leave out the kernel rows")
    ap.add_argument("--no-numpy", action="store_true", help="leave out the numpy-fallback jobs (the slowest)")
    ap.add_argument("--no-ort", action="store_true", help="leave out onnxruntime even where it is installed")
    ap.add_argument("--rows", help=("only these jobs, comma-separated: model rows such as resnet_fashion.predict, "
                                    "float16, kernels (default: all)"))
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    settings.update(quick=args.quick, contended=args.contended, pin_spinner=args.pin_spinner,
                    kernels=not args.skip_kernels,
                    threads=[int(n) for n in args.threads.split(",")],
                    frameworks=["netspec", "numpy"] + (["torch"] if torch_available() else [])
                    + (["ort"] if ort_available() and not args.no_ort else []))
    if args.no_numpy:
        settings["frameworks"].remove("numpy")
    if args.rounds:
        settings["rounds"] = args.rounds

    load_before = os.getloadavg()[0]
    if load_before > LOAD_MAX and not args.force:
        sys.exit(f"bench.py: the 1-minute load average is {load_before:.2f} (> {LOAD_MAX}): the machine "
                 "is not quiet and the timings would be noise. Wait, or run with --force to measure "
                 "anyway (the report is then marked as measured under load).")

    prepare(settings["frameworks"])
    rows = None
    if args.rows:
        rows = set(args.rows.split(","))
        known = {case for case, _ in MODEL_ROWS} | {"float16", "kernels"}
        if rows - known:
            sys.exit(f"bench.py: unknown --rows {', '.join(sorted(rows - known))}; known: {', '.join(sorted(known))}")
    jobs = plan(settings["frameworks"], settings["threads"], settings["rounds"], settings["kernels"], rows)
    extra = contended_plan(settings["frameworks"], settings["rounds"], rows) if args.contended else []
    if args.contended and 2 not in settings["threads"]:
        sys.exit("bench.py: --contended compares with the quiet 2-thread time: include 2 in --threads")
    records = []
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    start, total = time.perf_counter(), len(jobs) + len(extra)
    run_all(jobs, settings, records, start, total)
    if extra:
        spinner = start_spinner(args.pin_spinner)
        try:
            run_all(extra, settings, records, start, total)
        finally:
            spinner.kill()
            spinner.wait()

    meta = {"date": date, "load_before": load_before, "load_after": os.getloadavg()[0],
            "under_load": load_before > LOAD_MAX, "n_jobs": len(records)}
    text = report(Results(records), records, settings, meta)
    print(text, end="")
    if args.write:
        os.makedirs(OUT_DIR, exist_ok=True)
        with open(os.path.join(OUT_DIR, "table.md"), "w") as f:
            f.write(text)
        with open(os.path.join(OUT_DIR, "raw.json"), "w") as f:
            json.dump({"settings": settings, "meta": meta, "records": records}, f, indent=1)
        print(f"wrote {os.path.join(OUT_DIR, 'table.md')} and raw.json", file=sys.stderr)


if __name__ == "__main__":
    main()
