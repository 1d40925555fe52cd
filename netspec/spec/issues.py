"""Pydantic's validation errors as positioned messages for people.

``issues_from`` turns a ValidationError into ``{file, line, column, path,
message}`` dicts, one per problem: union tags and validator wrappers dropped
from the key path, a typo'd key with the closest valid key suggested (and its
"missing" twin not reported again), numbers written as strings called out.
``root`` is the model class the data was validated against.
"""
import difflib
import typing

from pydantic import BaseModel

from ..errors import did_you_mean
from ..layers import LAYERS, LOSSES

_TAGS = ("type", "source")


def kind_of(v):
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(v), type(v).__name__)


def issue(source, pos, path, message, prefer_key=False):
    file, line, col = pos.locate(path, source, prefer_key)
    return dict(file=file, line=line, column=col, path=pos.label(path), message=message)


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


def _fields_at(path, data, root):
    """Keys valid at ``path``: the fields of the one model there, or of every union member still possible."""
    return list(dict.fromkeys(f for m in _models_at(path, data, root) for f in m.model_fields))


def _models_at(path, data, root):
    """The Pydantic model classes that may validate the mapping at ``path``."""
    models, node, keyed = [root], data, False
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


def message(err, data, path, root):
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


def issues_from(exc, data, pos, source, root):
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
        msg = message(err, data, path, root)
        key = (path, msg)
        if key in seen:
            continue
        seen.add(key)
        if err["type"] == "missing":
            issues.append(issue(source, pos, path[:-1], msg))
            issues[-1]["path"] = pos.label(path)
        else:
            issues.append(issue(source, pos, path, msg, prefer_key=err["type"] == "extra_forbidden"))
    # A mistake in a block body shows once, however many uses expand it.
    unique = {}
    for i in issues:
        unique.setdefault((i["file"], i["line"], i["column"], i["message"]) if i["line"] else id(i), i)
    issues = list(unique.values())
    issues.sort(key=lambda i: (i["file"] != source, str(i["file"]), i["line"] or 0, i["column"] or 0))
    return issues
