"""Load and validate spec files: text -> data with positions -> Pydantic models -> NetSpec.

Every problem is reported as ``file:line:col: key.path: message``, all of a
file's problems at once; a typo'd key gets the closest valid key suggested.
"""
import copy
import os

from pydantic import ValidationError

from ..errors import SpecError
from ..layers import LAYERS
from . import blocks, space
from .issues import issue, issues_from, kind_of
from .loader import Positions, check_depth, parse_text, read_spec_file
from .models import FORMAT_VERSION, NetSpec, spec_to_dict

__all__ = ["load_spec", "NetSpec", "FORMAT_VERSION", "json_schema", "spec_to_dict", "expand", "searchable",
           "first_difference"]

def load_spec(spec, *, source=None):
    """Return a validated NetSpec from a path, a dict, or a NetSpec (returned as is)."""
    if isinstance(spec, NetSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        data, pos = read_spec_file(spec)
        source = os.fspath(spec)
    elif isinstance(spec, dict):
        source = source or "<dict>"
        check_depth(spec, source)
        data, pos = copy.deepcopy(spec), Positions()
    else:
        raise TypeError(f"load_spec takes a path, a dict or a NetSpec, not {type(spec).__name__}")
    return validate(data, pos, source)


def loads_spec(text, source="<string>", fmt=None):
    """Validate spec text (YAML, or JSON when fmt='json' or source ends in .json)."""
    data, pos = parse_text(text, source, fmt)
    return validate(data, pos, source)


def validate(data, pos, source):
    return expand(data, pos, source)[0]


def expand(data, pos, source):
    """(NetSpec, origins): blocks and includes expanded, then validated.

    ``origins[j]`` lists where flat layer j was written and the block uses it came
    through, innermost first, as ``(file, line, block name)``; None for a flat spec.
    """
    if not isinstance(data, dict):
        raise SpecError([issue(source, pos, (), f"a spec must be a mapping of keys, got {kind_of(data)}")])
    origins, raw, raw_pos = None, data, pos
    if blocks.uses_blocks(data):
        data, pos, origins = blocks.expand(data, pos, source, NetSpec)
    try:
        spec = NetSpec.model_validate(data, context={"source": source, "positions": pos})
    except ValidationError as exc:
        raise SpecError(issues_from(exc, data, pos, source, NetSpec), file=source) from None
    space.check(spec, raw, raw_pos, validate)  # the tune section's paths, on the data as written
    return spec, origins


def searchable(spec_path):
    """A spec file with a tune section, ready to give the spec of any values (netspec.spec.space)."""
    data, pos = read_spec_file(spec_path)
    spec = validate(data, pos, os.fspath(spec_path))
    if spec.tune is None:
        raise SpecError(f"{spec_path}: the spec has no 'tune' section; add one that names what to search "
                        "(see netspec schema, or the README's section on tuning)", file=os.fspath(spec_path))
    return space.Searchable(spec, data, pos, validate)


def json_schema():
    """JSON Schema of the spec format, generated from the models."""
    schema = NetSpec.model_json_schema()
    # A layer entry is a built-in layer, or the use of a block (its arguments are extra keys).
    use = blocks.BlockUse.model_json_schema()
    use["properties"]["type"]["not"] = {"enum": sorted(LAYERS)}
    schema["$defs"]["BlockUse"] = use
    entry = {"anyOf": [schema["properties"]["layers"]["items"], {"$ref": "#/$defs/BlockUse"}]}
    schema["properties"]["layers"]["items"] = entry
    schema["$defs"]["BlockDef"]["properties"]["layers"]["items"] = entry
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "netspec network spec"
    return schema


def first_difference(a, b, path=""):
    """' (first at <key path>)' for two JSON-like values, or '' when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    return f" (first at {path})" if path and a != b else ""
