"""netspec tune: search a spec's tune section (Optuna; the optional ``tune`` extra)."""
from ..specs_dir import resolve_spec_path
from ..tuning import Job, require_optuna, tune
from .args import positive_int


def add_tune_arguments(s):
    s.add_argument("spec", help="spec file with a tune section (or the name of a shipped spec)")
    s.add_argument("--trials", type=positive_int, help="trials in the study, over every worker and machine "
                   "(default: the spec's tune.trials); finished ones count, so a larger N extends a study")
    s.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes on this machine, sharing the cores (default 1)")
    s.add_argument("--storage", metavar="URL", help="database of the study (default: sqlite in --out); give "
                   "every machine the same postgresql://user:password@host/db to share one study")
    s.add_argument("--study", metavar="NAME", help="study name in the storage (default: the spec's name)")
    s.add_argument("--out", metavar="DIR", help="tune directory: trials/, tables, best.yaml, plots "
                   "(default runs/<name>-tune; running the same command again continues the study)")
    s.add_argument("--quiet", action="store_true", help="print only the summary")


def cmd_tune(args):
    require_optuna()
    job = Job(spec=resolve_spec_path(args.spec), out=args.out, storage=args.storage, study=args.study,
              trials=args.trials, workers=args.workers, quiet=args.quiet)
    return tune(job)


COMMANDS = {"tune": (add_tune_arguments, cmd_tune)}
