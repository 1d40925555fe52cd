"""Read YAML or JSON into plain data plus the line/column of every key and value.

Design: PyYAML's SafeLoader composes a node tree that carries marks; we build the
data from the same nodes so the two cannot disagree, and record, for each key
path such as ``("layers", 3, "units")``, where the key and its value start.
JSON is parsed strictly by ``json`` (its errors carry line/column), then composed
by the YAML loader to recover positions and to catch duplicate keys, which
``json`` accepts silently. Nothing here can run code: the
SafeLoader constructs only plain scalars, lists and dicts.
"""
import json
import os
from typing import NamedTuple, Optional

import yaml

from ..errors import SpecError
from ..safeio import open_regular

# larger than any spec a person writes (the shipped ones are under 5 KB): the reader stops here
MAX_SPEC_BYTES = 16 * 2**20


class Where(NamedTuple):
    """A place in a spec file: the file (None: the spec's own), 1-based line and column (None if unknown)."""
    file: Optional[str]
    line: Optional[int]
    col: Optional[int]


class Positions:
    """Map a key path to the ``Where`` of its key and of its value.

    Entries of the spec's own file have ``file`` None; data that came from another
    file (an expanded block) names it. ``labels`` may name a flat path for
    messages (``("layers", 7)`` -> ``"stage1.block2.conv1"``) and ``uses`` say
    which block uses it came through (``"block 'basic' used at spec.yaml:30"``).
    """

    def __init__(self):
        self.keys = {}
        self.values = {}
        self.labels = {}
        self.uses = {}

    def _entry(self, path, prefer_key):
        path = tuple(path)
        while True:
            if prefer_key and path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            if path in self.keys:
                return self.keys[path]
            if not path:
                return None
            path = path[:-1]

    def locate(self, path, source, prefer_key=False):
        """``Where`` of the deepest known prefix of ``path``; its file is ``source`` unless another is named."""
        e = self._entry(path, prefer_key)
        if not e:
            return Where(source, None, None)
        return Where(e.file or source, e.line, e.col)

    def label(self, path):
        """How messages name ``path``: the scoped layer name for an expanded layer."""
        path = tuple(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.labels:
                rest = format_path(path[n:])
                return self.labels[path[:n]] + ("" if not rest else rest if rest[0] == "[" else "." + rest)
        return format_path(path)


# Tags of plain data. Anything else (``!!python/...``, ``!!set``, local ``!tags``) is
# refused: the walker builds collections itself, so SafeLoader would never see their tags.
_PLAIN_TAGS = frozenset("tag:yaml.org,2002:" + t for t in
                        ("map", "seq", "str", "int", "float", "bool", "null", "timestamp"))


def _mark(node):
    return Where(None, node.start_mark.line + 1, node.start_mark.column + 1)


# Values an alias may make the walker build again. Nested aliases multiply ("billion
# laughs"): seven levels of ten took 40 s and gigabytes before this limit.
MAX_ALIAS_VALUES = 100_000


class _Walker:
    def __init__(self, loader, source, positions_only=False):
        self.loader = loader
        self.source = source
        self.positions_only = positions_only
        self.pos = Positions()
        self.issues = []
        self.built = set()
        self.repeated = 0

    def build(self, node, path=()):
        if id(node) in self.built:  # reached again through an alias
            self.repeated += 1
            if self.repeated > MAX_ALIAS_VALUES:
                _, line, col = _mark(node)
                raise SpecError([dict(file=self.source, line=line, column=col, path=_fmt(path),
                                      message=f"YAML aliases expand to more than {MAX_ALIAS_VALUES:,} values")],
                                file=self.source)
        else:
            self.built.add(id(node))
        self.pos.values[path] = _mark(node)
        if node.tag not in _PLAIN_TAGS:
            _, line, col = _mark(node)
            self.issues.append(dict(file=self.source, line=line, column=col, path=_fmt(path),
                                    message=f"YAML tag '{node.tag}' is not allowed: a spec holds "
                                            "only mappings, lists, strings, numbers and booleans"))
            return None
        if isinstance(node, yaml.MappingNode):
            # keys written in this mapping itself; flatten_mapping then puts the keys of YAML
            # merges (<<: *anchor) first, and a key written here overrides a merged one, as in PyYAML
            own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
            self.loader.flatten_mapping(node)
            out, first = {}, {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    _, line, col = _mark(key_node)
                    self.issues.append(dict(file=self.source, line=line, column=col,
                                            path=_fmt(path), message="keys must be plain strings"))
                    continue
                if key in out and id(first[key]) in own:
                    _, line, col = _mark(key_node)
                    self.issues.append(dict(
                        file=self.source, line=line, column=col, path=_fmt(path + (key,)),
                        message=f"duplicate key '{key}' (first given on line {_mark(first[key]).line})"))
                    continue
                first[key] = key_node
                self.pos.keys[path + (key,)] = _mark(key_node)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return None if self.positions_only else self.loader.construct_object(node, deep=True)


def _fmt(path):
    """('layers', 3, 'units') -> 'layers[3].units'."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


format_path = _fmt


# libyaml's parser (PyYAML's C extension) composes a large file ~8x faster than the pure-Python
# one. Its syntax-error messages are worded differently, so text it rejects is parsed again by the
# pure-Python loader, whose messages (and positions) are the ones netspec reports.
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


if _FAST_LOADER is not None:
    class _PositionsLoader(_FAST_LOADER):
        """For JSON, which json.loads has already read: the tree is composed for its positions and
        duplicate keys only, so scalars need no type (resolving them was a third of the time)."""
        _TAGS = {yaml.ScalarNode: "tag:yaml.org,2002:str", yaml.SequenceNode: "tag:yaml.org,2002:seq",
                 yaml.MappingNode: "tag:yaml.org,2002:map"}

        def resolve(self, kind, value, implicit):
            return self._TAGS[kind]
else:
    _PositionsLoader = None


def _compose(text, source, positions_only=False):
    """(data, Positions, issues) of YAML (or JSON) text; with ``positions_only`` data is None."""
    fast = _PositionsLoader if positions_only else _FAST_LOADER
    if fast is not None:
        try:
            return _compose_with(fast, text, source, positions_only)
        except yaml.YAMLError:
            pass
    return _compose_with(yaml.SafeLoader, text, source, positions_only)


def _compose_with(loader_class, text, source, positions_only):
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, Positions(), []
        walker = _Walker(loader, source, positions_only)
        data = walker.build(node)
        return (None if positions_only else data), walker.pos, walker.issues
    finally:
        loader.dispose()


MAX_DEPTH = 64  # a spec needs about 8 levels; inline 4-D image data about 10


def _too_deep(source, depth=None):
    more = f"more than {MAX_DEPTH}" if depth is None else f"{depth}"
    return SpecError([dict(file=source, line=None, column=None, path="",
                           message=f"nested {more} levels deep; a spec needs only a few (at most {MAX_DEPTH})")],
                     file=source)


def _depth(data):
    """Nesting depth of lists and mappings, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def check_depth(data, source):
    """SpecError when ``data`` nests lists and mappings deeper than MAX_DEPTH (checked without
    recursion: copying or validating such data would exhaust Python's recursion limit)."""
    if _depth(data) > MAX_DEPTH:
        raise _too_deep(source)


def parse_text(text, source="<string>", fmt=None):
    """Parse spec text; returns (data, Positions). Raises SpecError on syntax errors and on
    nesting deeper than MAX_DEPTH (which would otherwise exhaust Python's recursion limit)."""
    try:
        data, pos = _parse_text(text, source, fmt)
    except RecursionError:
        raise _too_deep(source) from None
    check_depth(data, source)
    return data, pos


def _parse_text(text, source, fmt):
    if fmt is None:
        fmt = "json" if str(source).lower().endswith(".json") else "yaml"
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError([dict(file=source, line=exc.lineno, column=exc.colno, path="",
                                  message=f"invalid JSON: {exc.msg}")], file=source) from None
        try:
            _, pos, issues = _compose(text, source, positions_only=True)
        except yaml.YAMLError:
            pos, issues = Positions(), []  # valid JSON that YAML 1.1 rejects: keep data, lose positions
        if issues:  # json.loads keeps the last of duplicate keys silently; the composed tree saw them
            raise SpecError(issues, file=source)
        return data, pos
    try:
        data, pos, issues = _compose(text, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise SpecError([dict(file=source, line=line, column=col, path="",
                              message=f"invalid YAML: {what}")], file=source) from None
    except yaml.YAMLError as exc:
        raise SpecError([dict(file=source, line=None, column=None, path="",
                              message=f"invalid YAML: {exc}")], file=source) from None
    if issues:
        raise SpecError(issues, file=source)
    return data, pos


def read_spec_file(path):
    """Read a spec file from disk; (data, Positions).

    Only a regular file of at most MAX_SPEC_BYTES is read: a FIFO, a device or a
    folder is refused before anything is read (one would hang, another never end).
    """
    path = os.fspath(path)
    if "\0" in path:
        raise SpecError(f"{path!r}: a file name cannot contain a NUL byte", file=path)
    if not os.path.lexists(path):
        raise SpecError(f"spec file not found: {path}", file=path)
    f, _ = open_regular(path, "spec file", MAX_SPEC_BYTES, error=SpecError)
    with f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc}", file=path) from None
    return parse_text(text, source=path)
