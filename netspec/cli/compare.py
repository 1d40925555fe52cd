"""netspec compare: curves and final numbers of run directories (tune trials included)."""
from .. import jsonout
from ..compare import compare, format_table
from ..errors import UsageError
from ..plots import _pyplot


def add_compare_arguments(s):
    s.add_argument("runs", nargs="+", metavar="RUN", help="run directories (netspec run --out, or tune trials)")
    s.add_argument("-o", "--output", metavar="FIG.png",
                   help="write the overlaid curves here (needs matplotlib: pip install 'netspec[plot]')")
    s.add_argument("--json", action="store_true", help="the table as JSON")


def cmd_compare(args):
    if args.output and _pyplot() is None:
        raise UsageError("compare -o draws with matplotlib, which is not installed: pip install 'netspec[plot]'")
    rows, figure = compare(args.runs, args.output)
    if args.json:
        print(jsonout.dumps({"runs": rows, "figure": figure}, indent=2))
        return 0
    print(format_table(rows))
    if figure:
        print(f"wrote {figure}")
    return 0


COMMANDS = {"compare": (add_compare_arguments, cmd_compare)}
