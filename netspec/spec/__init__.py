"""Load and validate spec files: text -> data with positions -> Pydantic models -> NetSpec.

Every problem is reported as ``file:line:col: key.path: message``, all of a
file's problems at once; a typo'd key gets the closest valid key suggested.
"""
import copy
import difflib
import os
import typing

from pydantic import BaseModel, ValidationError

from ..errors import SpecError, did_you_mean
from ..layers import LAYERS, LOSSES
from . import blocks
from .loader import Positions, parse_text, read_spec_file
from .models import FORMAT_VERSION, NetSpec

__all__ = ["load_spec", "NetSpec", "FORMAT_VERSION", "json_schema", "spec_to_dict", "expand"]

_TAGS = ("type", "source")


def load_spec(spec, *, source=None):
    """Return a validated NetSpec from a path, a dict, or a NetSpec (returned as is)."""
    if isinstance(spec, NetSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        data, pos = read_spec_file(spec)
        source = os.fspath(spec)
    elif isinstance(spec, dict):
        data, pos = copy.deepcopy(spec), Positions()
        source = source or "<dict>"
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
        raise SpecError([_issue(source, pos, (), f"a spec must be a mapping of keys, got {_kind(data)}")])
    origins = None
    if blocks.uses_blocks(data):
        data, pos, origins = blocks.expand(data, pos, source)
    try:
        spec = NetSpec.model_validate(data, context={"source": source, "positions": pos})
    except ValidationError as exc:
        raise SpecError(_issues_from(exc, data, pos, source), file=source) from None
    return spec, origins


def _kind(v):
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(v), type(v).__name__)


def _issue(source, pos, path, message, prefer_key=False):
    file, line, col = pos.locate(path, source, prefer_key)
    return dict(file=file, line=line, column=col, path=pos.label(path), message=message)


# --- Pydantic errors -> positioned, human messages --------------------------

def _data_path(loc, data):
    """Turn a Pydantic loc into a key path of the data, dropping union tags and wrappers."""
    path, node = [], data
    for k, el in enumerate(loc):
        if isinstance(node, dict):
            if el in node:
                path.append(el)
                node = node[el]
            elif isinstance(el, str) and any(node.get(t) == el for t in _TAGS):
                continue  # discriminated-union tag, not a key
            elif isinstance(el, str) and k < len(loc) - 1:
                continue  # a tag chosen by a before-validator (init: {std: ...} -> 'normal'): a missing key is always last
            elif isinstance(el, str) and ("[" in el or "-" in el):
                continue  # validator wrapper such as function-after[...]
            else:
                path.append(el)  # a missing key: the path names it
                node = None
        elif isinstance(node, list) and isinstance(el, int) and 0 <= el < len(node):
            path.append(el)
            node = node[el]
        elif isinstance(node, list) and isinstance(el, str):
            continue
        elif node is not None and not isinstance(node, list):
            continue  # a scalar has no keys: the rest of loc names union members (float, list[...])
        else:
            if isinstance(el, int) or not ("[" in el or "-" in el):
                path.append(el)
            node = None
    return tuple(path)


def _unwrap(tp):
    """Pydantic model classes a (possibly nested) annotation can hold."""
    out = []
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    for arg in typing.get_args(tp):
        out.extend(_unwrap(arg))
    return out


def _fields_at(path, data, root=None):
    """Keys valid at ``path``: the fields of the one model there, or of every union member still possible."""
    return list(dict.fromkeys(f for m in _models_at(path, data, root) for f in m.model_fields))


def _models_at(path, data, root=None):
    """The Pydantic model classes that may validate the mapping at ``path``."""
    models, node, keyed = [root or NetSpec], data, False
    for el in path:
        if isinstance(el, int):
            node = node[el] if isinstance(node, list) and el < len(node) else None
        elif keyed:  # a key of a dict[str, Model] field (a block name): the models stay
            node = node.get(el) if isinstance(node, dict) else None
            keyed = False
        else:
            keyed = any(typing.get_origin(mod.model_fields[el].annotation) is dict
                        for mod in models if el in mod.model_fields)
            models = [m for mod in models if el in mod.model_fields
                      for m in _unwrap(mod.model_fields[el].annotation)]
            node = node.get(el) if isinstance(node, dict) else None
        if isinstance(node, dict):
            tagged = [m for m in models for t in _TAGS
                      if t in m.model_fields and node.get(t) in typing.get_args(m.model_fields[t].annotation)]
            models = tagged or models
    return list(dict.fromkeys(models))


def _short(v, limit=60):
    r = repr(v)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _message(err, data, path, root=None):
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "graph":  # NetSpec's own graph checks: already a complete message
        return err["msg"]
    if kind == "extra_forbidden":
        key = path[-1]
        hint = did_you_mean(key, _fields_at(path[:-1], data, root))
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        if isinstance(path[-1], int):  # a fixed-length list such as kernel: [kh, kw]
            return f"too few items: item {path[-1]} is missing"
        return f"missing required key '{path[-1]}'"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        disc = ctx.get("discriminator", "'type'").strip("'")
        options = _options(path, disc) or [
            o.strip(" '") for o in ctx.get("expected_tags", "").split(",") if o.strip(" '")]
        if kind == "union_tag_not_found":
            return f"missing key '{disc}'; expected one of: {', '.join(options)}"
        tag = ctx.get("tag")
        what = "layer type" if path[:1] == ("layers",) and len(path) == 2 else disc
        return (f"unknown {what} '{tag}'{did_you_mean(tag, options)} "
                f"(known: {', '.join(options)})")
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        hint = did_you_mean(got, [e.strip("' ") for e in expected.replace(" or ", ",").split(",")])
        return f"expected {expected}, got {_short(got)}{hint}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound} (got {_short(got)})"
    if kind in ("int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
                "bool_type", "bool_parsing") and _looks_like_a_value(got):
        wanted = {"int": "an integer", "flo": "a number", "boo": "true or false"}[kind[:3]]
        return f"expected {wanted}, got the string {_short(got)} (values are never read from strings: remove the quotes)"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {_short(got)}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_short(got)}"
    if kind == "finite_number":
        return f"must be a finite number (got {_short(got)})"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_short(got)}"
    if kind in ("string_type",):
        return f"expected a string, got {_short(got)}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {_short(got)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, got {_short(got)}"
    if kind in ("too_short", "too_long"):
        return f"{err['msg'][0].lower()}{err['msg'][1:]}"
    if kind == "string_pattern_mismatch":
        return f"{_short(got)} is not allowed here (must match {ctx.get('pattern')})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    msg = msg[0].lower() + msg[1:]
    if not isinstance(got, (dict, list)):
        msg += f" (got {_short(got)})"
    return msg


def _looks_like_a_value(v):
    """A string that a lax reader would turn into a number or a boolean ('0.1', '10', 'yes')."""
    if not isinstance(v, str):
        return False
    if v.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
        return True
    try:
        float(v)
        return True
    except ValueError:
        return False


def _options(path, disc):
    if path[:1] == ("layers",) and len(path) == 2:
        return sorted(LAYERS)
    if path[-1:] == ("loss",):
        return sorted(LOSSES)
    return []


def _issues_from(exc, data, pos, source, root=None):
    issues, seen = [], set()
    errors = exc.errors()
    # A typo gives both "unknown key 'filtres'" and "missing 'filters'": report the typo once.
    suggested = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            path = _data_path(err["loc"], data)
            suggested.update(path[:-1] + (m,) for m in difflib.get_close_matches(
                str(path[-1]), _fields_at(path[:-1], data, root), n=1, cutoff=0.6))
    for err in errors:
        path = _data_path(err["loc"], data)
        if err["type"] == "missing" and path in suggested:
            continue
        msg = _message(err, data, path, root)
        key = (path, msg)
        if key in seen:
            continue
        seen.add(key)
        if err["type"] == "missing":
            issues.append(_issue(source, pos, path[:-1], msg))
            issues[-1]["path"] = pos.label(path)
        else:
            issues.append(_issue(source, pos, path, msg, prefer_key=err["type"] == "extra_forbidden"))
    # A mistake in a block body shows once, however many uses expand it.
    unique = {}
    for i in issues:
        unique.setdefault((i["file"], i["line"], i["column"], i["message"]) if i["line"] else id(i), i)
    issues = list(unique.values())
    issues.sort(key=lambda i: (i["file"] != source, str(i["file"]), i["line"] or 0, i["column"] or 0))
    return issues


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


def spec_to_dict(spec):
    """The resolved spec (every default filled in, generated names included) as plain data."""
    d = spec.model_dump(mode="json")
    for layer, name in zip(d["layers"], spec.layer_names):
        layer["name"] = name
    for key in ("include", "blocks"):  # already expanded into the layers
        if not d.get(key):
            d.pop(key, None)
    return d
