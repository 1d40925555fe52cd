"""Commands that build a model from a spec: summary, gradcheck."""
from .. import jsonout
from ..compiler import compile
from ..gradcheck import check_model, random_batch
from ..spec import load_spec
from ..specs_dir import resolve_spec_path
from ..summary import format_summary, summarize
from .args import positive_float, positive_int


def _spec_and_model(path, dtype=None):
    spec = load_spec(resolve_spec_path(path))
    return spec, compile(spec, dtype=dtype)


def cmd_summary(args):
    _, model = _spec_and_model(args.spec, args.dtype)
    s = summarize(model)
    print(jsonout.dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def cmd_gradcheck(args):
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


def add_summary_arguments(s):
    s.add_argument("spec")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--dtype", choices=["float16", "float32", "float64"])


def add_gradcheck_arguments(s):
    s.add_argument("spec")
    s.add_argument("--batch", type=positive_int, default=2, help="random samples in the batch (default 2)")
    s.add_argument("--max-elements", type=positive_int, default=40,
                   help="elements checked per parameter array; larger arrays are sampled (default 40)")
    s.add_argument("--eps", type=positive_float, default=1e-5, help="finite-difference step h (default 1e-5)")
    s.add_argument("--tol", type=positive_float, default=1e-5, help="max relative error allowed (default 1e-5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")


COMMANDS = {
    "summary": (add_summary_arguments, cmd_summary),
    "gradcheck": (add_gradcheck_arguments, cmd_gradcheck),
}
