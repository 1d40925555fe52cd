"""The ``netspec`` command line: one module per command group, and ``main``.

User errors (``NetspecError``) print one clear line and exit 2, never a
traceback. ``COMMANDS`` lists every command with the module that implements
it; each module's ``COMMANDS`` maps the command to (add_arguments, handler).
Running a command imports only its own module, so ``netspec validate`` never
loads what training needs.
"""
import argparse
import contextlib
import importlib
import signal
import sys
import threading

from .._version import __version__
from ..distributed import CollectiveError, guard, launched_size, world
from ..errors import NetspecError

# (name, module in netspec.cli, help), in the order ``netspec --help`` lists them
COMMANDS = [
    ("run", "train", "train a spec; writes a run directory with checkpoints and metrics"),
    ("tune", "tune", "search the values of a spec's tune section (Optuna); every trial a run directory"),
    ("compare", "compare", "overlay the curves of run directories and tabulate their final numbers"),
    ("evaluate", "train", "loss, accuracy and confusion matrix of a checkpoint"),
    ("predict", "train", "class and top-3 (or outputs) of a checkpoint for image files, folders or arrays"),
    ("export", "export", "write a checkpoint as an ONNX model (checked by onnx's checker)"),
    ("expand", "specs", "print the flat spec that gets compiled: blocks expanded, every default filled"),
    ("validate", "specs", "check spec files (schema, names, shapes)"),
    ("plan", "plan", "what the compiler does before running: passes, fused nodes, FLOPs, planned memory"),
    ("summary", "models", "layer table: output shapes, parameters, FLOPs"),
    ("gradcheck", "models", "compare back-propagation with central differences (float64)"),
    ("info", "info", "versions and the active kernel backend"),
    ("schema", "specs", "print the JSON Schema of the spec format"),
    ("data", "data", "download datasets, show where data is looked for"),
]


def build_parser(command=None):
    """The argument parser. With ``command``, only that command's arguments are filled in
    (the others are still listed by ``--help``), so only its module is imported."""
    p = argparse.ArgumentParser(prog="netspec", description="Compile and train neural networks described in YAML/JSON.")
    p.add_argument("--version", action="version", version=f"netspec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, helptext in COMMANDS:
        s = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        if command in (None, name):
            add_arguments, handler = importlib.import_module(f"{__name__}.{module}").COMMANDS[name]
            add_arguments(s)
            s.set_defaults(func=handler)
    return p


def _command_in(argv):
    """The command named in ``argv`` (its first word), or None."""
    names = {name for name, _, _ in COMMANDS}
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in names else None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_in(argv)).parse_args(argv)
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
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
