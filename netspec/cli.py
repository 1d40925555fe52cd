"""The ``netspec`` command line. User errors print one clear message and exit 2, never a traceback."""
import argparse
import os
import platform
import sys

import numpy as np

from . import __version__, jsonout
from .errors import NetspecError


def _spec_and_model(path, dtype=None):
    from .compiler import compile
    from .spec import load_spec
    from .specs_dir import resolve_spec_path
    spec = load_spec(resolve_spec_path(path))
    return spec, compile(spec, dtype=dtype)


def cmd_validate(args):
    from .shapes import infer_layers
    from .spec import load_spec
    from .specs_dir import resolve_spec_path
    for path in args.specs:
        infer_layers(load_spec(resolve_spec_path(path)))
        print(f"{path}: ok")
    return 0


def cmd_summary(args):
    from .summary import format_summary, summarize
    _, model = _spec_and_model(args.spec, args.dtype)
    s = summarize(model)
    print(jsonout.dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def cmd_gradcheck(args):
    from .gradcheck import check_model, random_batch
    _, model = _spec_and_model(args.spec, "float64")
    x, t = random_batch(model, n=args.batch, seed=args.seed)
    report = check_model(model, x, t, h=args.eps, max_elements=args.max_elements, seed=args.seed)
    worst = max(r["error"] for r in report.values())
    ok = worst <= args.tol and all(r["checked"] > 0 for r in report.values())
    if args.json:
        print(jsonout.dumps({"ok": ok, "tolerance": args.tol, "params": report}, indent=2))
    else:
        print(f"gradient check of {args.spec}: float64, central differences h={args.eps}, batch {args.batch}, "
              f"up to {args.max_elements} sampled elements per array")
        w = max(len(k) for k in report)
        for name, r in report.items():
            flag = "ok" if r["error"] <= args.tol else "FAIL"
            skip = f"  ({r['skipped']} at kinks, skipped)" if r.get("skipped") else ""
            if r.get("zero"):
                skip += "  (gradient is exactly zero here)"
            print(f"  {name:<{w}}  {r['checked']:>5}/{r['size']:<8} max rel err {r['error']:.2e}  {flag}{skip}")
        print(f"{'PASS' if ok else 'FAIL'}: worst {worst:.2e} (tolerance {args.tol:.0e})")
    return 0 if ok else 1


def cmd_info(args):
    from . import kernels
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
    from .threads import blas_info
    for pool in blas_info():
        info[f"blas ({pool['library']} {pool['version']})"] = f"{pool['threads']} threads"
    info["cpu_count"] = os.cpu_count()
    from .distributed import info as mpi_info
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


def cmd_schema(args):
    from .spec import json_schema
    print(jsonout.dumps(json_schema(), indent=2))
    return 0


def add_validate_arguments(s):
    s.add_argument("specs", nargs="+", metavar="SPEC")


def add_summary_arguments(s):
    s.add_argument("spec")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--dtype", choices=["float16", "float32", "float64"])


def add_gradcheck_arguments(s):
    from .train_cli import positive_float, positive_int
    s.add_argument("spec")
    s.add_argument("--batch", type=positive_int, default=2, help="random samples in the batch (default 2)")
    s.add_argument("--max-elements", type=positive_int, default=40,
                   help="elements checked per parameter array; larger arrays are sampled (default 40)")
    s.add_argument("--eps", type=positive_float, default=1e-5, help="finite-difference step h (default 1e-5)")
    s.add_argument("--tol", type=positive_float, default=1e-5, help="max relative error allowed (default 1e-5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")


def add_json_argument(s):
    s.add_argument("--json", action="store_true")


def add_no_arguments(s):
    pass


def commands():
    """The command table, in the order ``netspec --help`` lists it: (name, help, add_arguments, handler).

    Each handler takes the parsed arguments and returns an exit code; user errors are
    raised as NetspecError and printed by ``main``.
    """
    from . import expand, export, train_cli
    from .data import cli as data_cli
    return [
        ("run", "train a spec; writes a run directory with checkpoints and metrics",
         train_cli.add_run_arguments, train_cli.cmd_run),
        ("evaluate", "loss, accuracy and confusion matrix of a checkpoint",
         train_cli.add_evaluate_arguments, train_cli.cmd_evaluate),
        ("predict", "class and top-3 (or outputs) of a checkpoint for image files, folders or arrays",
         train_cli.add_predict_arguments, train_cli.cmd_predict),
        ("export", export.HELP, export.add_arguments, export.cmd_export),
        ("expand", expand.HELP, expand.add_arguments, expand.cmd_expand),
        ("validate", "check spec files (schema, names, shapes)", add_validate_arguments, cmd_validate),
        ("summary", "layer table: output shapes, parameters, FLOPs", add_summary_arguments, cmd_summary),
        ("gradcheck", "compare back-propagation with central differences (float64)",
         add_gradcheck_arguments, cmd_gradcheck),
        ("info", "versions and the active kernel backend", add_json_argument, cmd_info),
        ("schema", "print the JSON Schema of the spec format", add_no_arguments, cmd_schema),
        ("data", "download datasets, show where data is looked for", data_cli.add_arguments, data_cli.run),
    ]


def build_parser():
    p = argparse.ArgumentParser(prog="netspec", description="Compile and train neural networks described in YAML/JSON.")
    p.add_argument("--version", action="version", version=f"netspec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, helptext, add_arguments, handler in commands():
        s = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        add_arguments(s)
        s.set_defaults(func=handler)
    return p


def main(argv=None):
    import contextlib
    from .distributed import CollectiveError, guard, launched_size, world
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = 0
    try:
        # under mpiexec with K > 1: one rank failing alone ends the job (Abort); errors all
        # ranks share are printed once, by rank 0
        comm = world() if launched_size() > 1 else None
        rank = comm.rank if comm else 0
        with guard(comm) if comm else contextlib.nullcontext():
            code = args.func(args) or 0
    except (NetspecError, CollectiveError) as exc:
        if rank == 0:
            print(f"error: {exc}" if "\n" not in str(exc) else f"error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if rank == 0:
            print("interrupted", file=sys.stderr)
        code = getattr(exc, "exit_code", 130)
    except BrokenPipeError:
        return 0
    if code in (130, 143):
        _stop_listening()
    return code


def _stop_listening():
    """A run stopped by a signal has saved and is exiting: further Ctrl-C or SIGTERM must not
    kill the process mid-exit with a different status (Python restores the default handlers
    while shutting down)."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
