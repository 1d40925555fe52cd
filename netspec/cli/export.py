"""``netspec export``: a checkpoint as an ONNX model."""
import os

from ..checkpoint import load_model
from ..export import DEFAULT_OPSET, MIN_OPSET, ExportError, export_onnx


def add_export_arguments(s):
    """Arguments of ``netspec export MODEL.npz [-o FILE.onnx] [--opset N] [--probabilities] [--dtype D]``."""
    s.add_argument("model", metavar="MODEL.npz", help="a checkpoint written by netspec run")
    s.add_argument("-o", "--output", metavar="FILE.onnx",
                   help="where to write (default: MODEL with the suffix .onnx)")
    s.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset version (default {DEFAULT_OPSET}, at least {MIN_OPSET})")
    s.add_argument("--probabilities", action="store_true",
                   help="append a Softmax so the output is class probabilities instead of raw scores")
    s.add_argument("--dtype", choices=["float16", "float32", "float64"],
                   help="cast the model to this precision first (default: the checkpoint's; "
                        "ONNX Runtime's CPU provider has no float64 Conv or AveragePool)")


def cmd_export(args):
    """Handler of ``netspec export``: load, export, print one line."""
    out = args.output or os.path.splitext(args.model)[0] + ".onnx"
    if os.path.abspath(out) == os.path.abspath(args.model):
        raise ExportError(f"the output {out} is the checkpoint itself; pick another name with -o")
    model = load_model(args.model, dtype=args.dtype)
    proto = export_onnx(model, out, opset=args.opset, probabilities=args.probabilities)
    output = proto.graph.output[0].name
    print(f"wrote {out}: ONNX opset {args.opset}, {len(proto.graph.node)} nodes, "
          f"{os.path.getsize(out):,} bytes ({model.name}, {model.dtype}, output '{output}')")
    return 0


COMMANDS = {"export": (add_export_arguments, cmd_export)}
