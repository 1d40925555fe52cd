"""``netspec data fetch|info``: download datasets and show where data is looked for."""
import os
import sys

from ..data.fetch import DATASETS, fetch, mirror_for, target_dir
from ..data.sources import IDX_FILES, MNIST5K_PATH, find_idx_files, search_dirs


def add_data_arguments(parser):
    """The ``data`` command's sub-commands, ``fetch`` and ``info``."""
    sub = parser.add_subparsers(dest="data_command", metavar="{fetch,info}")
    sub.required = True

    f = sub.add_parser("fetch", help="download mnist or fashion-mnist (IDX .gz files), verified",
                       description="Download the four IDX .gz files of a dataset, verify them and store them "
                       "atomically; an interrupted download resumes when run again.")
    f.add_argument("name", choices=sorted(DATASETS), help="dataset to download")
    f.add_argument("--dir", metavar="D", default=None,
                   help="directory to put the files in (default: $NETSPEC_DATA/NAME, else ~/.cache/netspec/NAME)")
    f.add_argument("--mirror", metavar="URL", default=None,
                   help="base URL holding the .gz files (default: $NETSPEC_MNIST_MIRROR or "
                   "$NETSPEC_FASHION_MNIST_MIRROR, else the standard mirror)")
    f.add_argument("--no-verify", action="store_true",
                   help="skip checksums (the gzip and IDX structure are still checked)")
    f.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    sub.add_parser("info", help="show where each dataset is looked for and what is found",
                   description="Show where each dataset is looked for and which files are found.")


def cmd_data(args, out=None):
    """Handle ``netspec data fetch|info``; returns the exit code."""
    return {"fetch": _fetch, "info": _info}[args.data_command](args, out or sys.stdout)


def _fetch(args, out):
    directory = fetch(args.name, data_dir=args.dir, mirror=args.mirror,
                      progress=not args.quiet and out.isatty(), verify=not args.no_verify)
    print(f"{args.name}: {len(DATASETS[args.name]['files'])} files verified in {directory}", file=out)
    if args.dir is not None:
        print(f"use it with: data: {{source: {args.name}, dir: {directory}}}", file=out)
    return 0


def _info(args, out):
    print(info_text(), file=out)
    return 0


def info_text():
    """Human-readable report of data locations and what each holds."""
    lines = []
    size = f"{MNIST5K_PATH.stat().st_size / 1e6:.2f} MB" if MNIST5K_PATH.is_file() else "MISSING"
    lines.append(f"mnist-5k (shipped): {MNIST5K_PATH} [{size}]")
    env = os.environ.get("NETSPEC_DATA")
    lines.append(f"NETSPEC_DATA: {env if env else '(not set)'}")
    for name in DATASETS:
        lines.append(f"{name}: looked for in order (fetch writes to {target_dir(name)}; mirror {mirror_for(name)})")
        for directory in search_dirs(name):
            found = find_idx_files(directory)
            if directory.exists() and not directory.is_dir():
                state = "is a file, not a directory"
            elif not directory.is_dir():
                state = "does not exist"
            elif len(found) == len(IDX_FILES):
                state = "complete: " + ", ".join(p.name for p in found.values())
            elif found:
                state = f"incomplete ({len(found)} of {len(IDX_FILES)}): " + ", ".join(p.name for p in found.values())
            else:
                state = "no IDX files"
            lines.append(f"  - {directory}: {state}")
    try:
        import sklearn

        lines.append(f"digits: scikit-learn {sklearn.__version__} installed")
    except ImportError:
        lines.append("digits: needs scikit-learn (not installed)")
    return "\n".join(lines)


COMMANDS = {"data": (add_data_arguments, cmd_data)}
