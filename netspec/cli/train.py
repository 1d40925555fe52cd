"""Commands that train and use models: run, evaluate, predict."""
import json
import os

import numpy as np
from pydantic import ValidationError

from .. import jsonout
from ..checkpoint import load_model
from ..data import data_spec_adapter, load_data
from ..errors import DataError, UsageError
from ..images import DEFAULT_FIT, FIT_CHOICES, INVERT_CHOICES, is_image_path, predict_images
from ..interrupt import Interrupted
from ..runner import resume_trainer, trainer_for
from ..safeio import check_samples, parse_json_input, read_input_file
from ..spec.loader import read_spec_file
from ..specs_dir import DEFAULT_SPEC, resolve_spec_path
from .args import positive_int


def cmd_run(args):
    if args.resume:
        conflicts = [flag for flag, given in (
            ("SPEC", args.spec), ("--dtype", args.dtype), ("--force", args.force),
            ("--out", args.out and os.path.abspath(args.out) != os.path.abspath(args.resume))) if given]
        if conflicts:
            raise UsageError(f"--resume {args.resume} continues that run with its own spec, dtype and directory; "
                            f"drop {', '.join(conflicts)} (only --epochs, --quiet and --no-progress apply)")
        tr = resume_trainer(args.resume, epochs=args.epochs, quiet=args.quiet,
                            progress=False if args.no_progress else None)
        if not tr.quiet:
            print(f"resuming {args.resume} at step {tr.step} (epoch {tr.epoch}){_ranks(tr)}", flush=True)
    else:
        path = resolve_spec_path(args.spec)
        tr = trainer_for(path, out=args.out, epochs=args.epochs, dtype=args.dtype, quiet=args.quiet,
                         progress=False if args.no_progress else None, force=args.force)
        if not tr.quiet:
            n = tr.model
            print(f"training {tr.spec.name} ({path}) on {len(tr.x_train)} samples, "
                  f"{tr.total_steps} steps of batch {tr.cfg.batch_size}, {n.dtype}{_ranks(tr)}; "
                  f"run dir {tr.run_dir}", flush=True)
    try:
        tr.run()
    except Interrupted as exc:
        return exc.exit_code
    if tr.comm.rank != 0:  # data-parallel: rank 0 reports
        return 0
    if args.quiet:
        print(tr.result_line())
    print(f"saved {tr.checkpoint_path}")
    return 0


def _ranks(tr):
    """', data-parallel on K ranks x T threads' under mpiexec, else ''."""
    if tr.comm.size == 1:
        return ""
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    return f", data-parallel on {tr.comm.size} ranks x {threads} thread{'' if threads == '1' else 's'}"


def _data_arg(value, model):
    """--data: a source name ('mnist-5k'), inline JSON, or a YAML/JSON file with a data section."""
    if value is None:
        if model.spec.train is None:
            raise DataError("the checkpoint's spec has no data section; pass --data")
        return model.spec.train.data
    if value.lstrip().startswith("{"):
        try:
            raw = json.loads(value)
        except ValueError as exc:
            raise DataError(f"--data: invalid JSON ({exc})") from None
    elif os.path.exists(value):
        raw, _ = read_spec_file(value)
    else:
        raw = {"source": value}
    try:
        return data_spec_adapter().validate_python(raw)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DataError(f"--data: {msgs}") from None


def cmd_evaluate(args):
    model = load_model(args.model, dtype=args.dtype)
    data = load_data(_data_arg(args.data, model), seed=model.spec.seed, dtype=model.dtype)
    where = f"data '{data.name}' (test)"
    x = model.as_input(data.x_test, where)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: the inputs hold NaN or infinite values ({int((~np.isfinite(x)).sum())} "
                        "of them); netspec evaluates only finite inputs")
    t = model.prepare_targets(data.t_test, where)
    loss, acc, cm = model.evaluate(x, t, args.batch_size, confusion=True)
    result = {"model": args.model, "data": data.name, "samples": int(len(x)), "dtype": str(model.dtype),
              "loss": float(loss), "accuracy": acc}
    if cm is not None:
        result["confusion_matrix"] = cm.tolist()
    if args.json:
        print(jsonout.dumps(result, indent=2))
        return 0
    print(f"{args.model} on {data.name} test set ({len(x)} samples, {model.dtype}):")
    print(f"  loss     {loss:.6g}")
    if acc is not None:
        print(f"  accuracy {acc:.4f}")
        cm = np.array(result["confusion_matrix"])
        w = max(4, len(str(cm.max())) + 1)
        print("  confusion matrix (rows: label, columns: prediction)")
        print("      " + "".join(f"{j:>{w}}" for j in range(len(cm))))
        for i, row in enumerate(cm):
            print(f"  {i:>3} " + "".join(f"{v:>{w}}" for v in row))
    return 0


# image formats netspec does not decode: named as such, not read as JSON text
OTHER_IMAGE_SUFFIXES = (".gif", ".tif", ".tiff", ".webp", ".heic", ".heif", ".svg", ".ico", ".psd")


def _read_input(value, allow_nonfinite=False):
    """An INPUT that is not an image: a .npy or .json file, or inline JSON; finite numbers unless allowed."""
    suffix = os.path.splitext(value)[1].lower()
    if suffix in OTHER_IMAGE_SUFFIXES:
        raise DataError(f"{value}: '{suffix}' images are not an input netspec reads; give image files (.png, "
                        ".jpg, .jpeg, .bmp) or folders of them, one .npy array, or a JSON list (inline or .json)")
    if value.endswith((".npy", ".json")) or os.path.exists(value):
        return read_input_file(value, allow_nonfinite=allow_nonfinite)
    return check_samples(parse_json_input(value, "INPUT"), "INPUT", allow_nonfinite=allow_nonfinite)


def cmd_predict(args):
    model = load_model(args.model, dtype=args.dtype)
    if any(is_image_path(p) for p in args.inputs):
        return predict_images(model, args.inputs, invert=args.invert, fit=args.fit,
                                     fmt=output_format(args))
    if len(args.inputs) != 1 or args.csv:
        raise UsageError("several INPUTs and --csv are for image files and folders; give one .npy or JSON INPUT")
    x = _read_input(args.inputs[0], args.allow_nonfinite)
    y = model.predict(x, batch_size=1000)
    result = {"outputs": y.astype(np.float64).tolist()}
    if model.loss_fn.classification:
        result["argmax"] = y.argmax(axis=1).tolist()
    if args.json:
        print(jsonout.dumps(result))
        return 0
    for i, row in enumerate(y):
        vals = " ".join(f"{v:.6g}" for v in np.ravel(row))
        tail = f"  -> {int(np.argmax(row))}" if model.loss_fn.classification else ""
        print(f"{i}: {vals}{tail}")
    return 0


def add_run_arguments(s):
    s.add_argument("spec", nargs="?", help=f"spec file, or the name of a shipped spec (default {DEFAULT_SPEC})")
    s.add_argument("--out", help="run directory (default runs/<name>-<timestamp>); must not hold another run")
    s.add_argument("--force", action="store_true", help="replace the run already in --out (its files are deleted)")
    s.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    s.add_argument("--epochs", type=positive_int, help="override the spec's budget with N epochs")
    s.add_argument("--dtype", choices=["float32", "float64"], help="override the spec's compute dtype")
    s.add_argument("--quiet", action="store_true", help="print only the final result")
    s.add_argument("--no-progress", action="store_true", help="no progress bar, one line per epoch")


def _model_arguments(s):
    s.add_argument("model", metavar="MODEL.npz")
    s.add_argument("--dtype", choices=["float16", "float32", "float64"],
                   help="run the model in this precision (float16: half-precision inference)")
    s.add_argument("--json", action="store_true")


def add_evaluate_arguments(s):
    _model_arguments(s)
    s.add_argument("--data", help="data source name, JSON, or a YAML/JSON file (default: the spec's)")
    s.add_argument("--batch-size", type=positive_int, default=1000)


def add_predict_arguments(s):
    _model_arguments(s)
    s.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (.png .jpg .jpeg .bmp) and folders of them; or one .npy file or JSON list")
    s.add_argument("--allow-nonfinite", action="store_true",
                   help="accept NaN or infinite numbers in a .npy/JSON input (refused by default)")
    add_image_arguments(s)


def add_image_arguments(parser):
    """Add --invert, --fit and --csv (image inputs of ``netspec predict``) to an argparse parser."""
    parser.add_argument("--invert", choices=INVERT_CHOICES, default="auto",
                        help="image files: make ink white on black as in MNIST; auto inverts images "
                             "with a light border (default auto)")
    parser.add_argument("--fit", choices=FIT_CHOICES, default=DEFAULT_FIT,
                        help="image files: center crops the ink, scales it to 20/28 of the frame and centres it "
                             "by centre of mass as MNIST did; resize scales the whole image "
                             f"(default {DEFAULT_FIT})")
    parser.add_argument("--csv", action="store_true", help="image files: CSV, a header and a row per image")
    return parser


def output_format(args):
    """'json', 'csv' or 'text' from parsed --json / --csv flags."""
    use_json, use_csv = getattr(args, "json", False), getattr(args, "csv", False)
    if use_json and use_csv:
        raise UsageError("give --json or --csv, not both")
    return "json" if use_json else "csv" if use_csv else "text"


COMMANDS = {
    "run": (add_run_arguments, cmd_run),
    "evaluate": (add_evaluate_arguments, cmd_evaluate),
    "predict": (add_predict_arguments, cmd_predict),
}
