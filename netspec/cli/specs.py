"""Commands that read specs without building a model: validate, schema, expand."""
from .. import jsonout
from ..expand import expanded, to_yaml
from ..shapes import infer_layers
from ..spec import json_schema, load_spec
from ..specs_dir import resolve_spec_path


def cmd_validate(args):
    for path in args.specs:
        infer_layers(load_spec(resolve_spec_path(path)))
        print(f"{path}: ok")
    return 0


def cmd_schema(args):
    print(jsonout.dumps(json_schema(), indent=2))
    return 0


def add_expand_arguments(s):
    s.add_argument("spec")
    s.add_argument("--json", action="store_true", help="JSON instead of YAML (no origin comments)")


def cmd_expand(args):
    path = resolve_spec_path(args.spec)
    flat, origins = expanded(path)
    print(jsonout.dumps(flat, indent=2) if args.json else to_yaml(flat, origins, path), end="" if not args.json else "\n")
    return 0


def add_validate_arguments(s):
    s.add_argument("specs", nargs="+", metavar="SPEC")


def add_no_arguments(s):
    pass


COMMANDS = {
    "validate": (add_validate_arguments, cmd_validate),
    "schema": (add_no_arguments, cmd_schema),
    "expand": (add_expand_arguments, cmd_expand),
}
