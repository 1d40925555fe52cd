"""Blocks, ``repeat`` and ``include``: shorthand that expands to the flat layer list.

A spec (or an included file) may define named blocks::

    blocks:
      basic:
        params: {filters: int, stride: {type: int, default: 1}}
        layers:
          - {type: conv2d, name: conv1, filters: $filters, kernel: 3, stride: $stride, pad: 1}
          - {type: relu}
          - {type: add, inputs: [relu1, input]}

and use one like a layer: ``{type: basic, name: stage1, filters: 32}``. Expansion
happens on the parsed data, before validation:

- ``$param`` (a whole value) is replaced by the argument, or the declared default;
  arguments are type-checked against the declaration here, values against the
  layer's own fields later, at the position where they were written.
- Every layer of a use is named ``<use>.<local name>`` (unnamed ones get
  ``relu1``-style local names); ``inputs`` inside a body name the body's own
  layers, or ``input``, the block's input. The block's output is its last layer,
  and later layers may name the use to mean it.
- ``repeat: N`` chains N copies named ``<use>1`` ... ``<use>N`` (``start`` moves the
  first number), each copy feeding the next.
- ``include: [file.yaml]`` brings in the blocks of other files (paths relative to
  the including file). A file included twice by different routes is read once; a
  cycle, a missing file and a block defined twice are errors that show the chain.

The result is plain flat spec data plus a ``Positions`` whose entries carry the
file they came from, so validation errors name the file, line and column where
the offending value was written: the use site for an argument, the block body
for everything else.
"""
import os
import re
from typing import Any, Literal, NamedTuple, Optional, Union

from pydantic import Field, StrictInt, ValidationError

from .._strict import Strict
from ..errors import SpecError, did_you_mean
from ..layers import LAYERS
from ..layers.base import Name
from .issues import issues_from, message
from .loader import Positions, format_path, read_spec_file

PARAM_TYPES = ("int", "float", "bool", "str", "list")
ParamType = Literal[PARAM_TYPES]
USE_KEYS = ("type", "name", "inputs", "repeat", "start")
MAX_LAYERS = 10_000  # after expansion; a typo'd repeat should not eat the machine
MAX_INCLUDE_DEPTH = 32
MAX_BLOCK_DEPTH = 32   # blocks using blocks, this many deep (330 deep exhausted Python's stack)
# values (numbers, strings...) all block copies may hold together: a 500 KB body repeated 1,000
# times needed over 4 GB before validation saw it
MAX_EXPANDED_VALUES = 5_000_000


class ParamDecl(Strict):
    """A block parameter: its type, and a default that makes it optional."""
    type: ParamType
    default: Any = Field(None, description="value when the use omits it (no default: the parameter is required)")
    description: Optional[str] = None


class BlockDef(Strict):
    """A named list of layers with declared parameters, used like a layer."""
    description: Optional[str] = None
    params: dict[Name, Union[ParamType, ParamDecl]] = Field(
        default_factory=dict, description="name: type (required), or {type, default, description}")
    layers: list[dict[str, Any]] = Field(
        min_length=1, description="layers as in a spec; $name is replaced by the parameter's value; "
        "inputs name the block's layers or 'input' (the block's input); the last layer is the output")


class BlockLibrary(Strict):
    """What an included file holds: blocks, and the files it includes in turn."""
    netspec: Literal[1] = 1
    description: Optional[str] = None
    include: list[str] = Field(default_factory=list)
    blocks: dict[Name, BlockDef] = Field(default_factory=dict)


class BlockUse(Strict):
    """A layer entry whose ``type`` names a block (for the JSON Schema; arguments are extra keys)."""
    model_config = {"extra": "allow"}
    type: str = Field(description="name of a block defined under blocks: or in an included file")
    name: Optional[Name] = Field(None, description="scope of the block's layers (default: the block name + a number)")
    inputs: Optional[list[Name]] = Field(None, max_length=1, description="the block's input (default: the previous layer)")
    repeat: Optional[StrictInt] = Field(None, gt=0, description="chain this many copies, named <name>1 ... <name>N")
    start: StrictInt = Field(1, ge=0, description="number of the first copy when repeating")


_PARAM = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")
_MISSING = object()


def uses_blocks(data):
    """Whether parsed spec data needs expanding (it defines or includes blocks)."""
    return isinstance(data, dict) and ("blocks" in data or "include" in data)


class _Block:
    def __init__(self, name, decl, file, pos, chain):
        self.name, self.decl, self.file, self.pos, self.chain = name, decl, file, pos, chain
        self.path = ("blocks", name)

    def where(self, *rest, prefer_key=False):
        return self.pos.locate(self.path + rest, self.file, prefer_key)

    def params(self):
        """name -> (type, default or _MISSING, where the default was written)."""
        out = {}
        for p, d in self.decl.params.items():
            if isinstance(d, str):
                out[p] = (d, _MISSING, None)
            else:
                default = d.default if "default" in d.model_fields_set else _MISSING
                out[p] = (d.type, default, self.where("params", p, "default"))
        return out


def _error(where, path, message):
    """A SpecError at ``where`` (a loader.Where) about the key ``path``."""
    return SpecError([dict(file=where.file, line=where.line, column=where.col, path=path, message=message)],
                     file=where.file)


def _fmt_where(where):
    return f"{where.file}:{where.line}" if where.line else str(where.file)


def _type_ok(kind, v):
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, {"bool": bool, "str": str, "list": list}[kind])


_WANTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "list": "a list"}


# --- includes ------------------------------------------------------------------

INCLUDE_SUFFIXES = (".yaml", ".yml", ".json")

def _validate_library(data, pos, source, root):
    """Validate block definitions (a spec's head, or an included file) with positioned errors."""
    if not isinstance(data, dict):
        _, line, col = pos.locate((), source)
        raise SpecError([dict(file=source, line=line, column=col, path="",
                              message="an included file must be a mapping with a 'blocks' key")], file=source)
    try:
        return BlockLibrary.model_validate(data)
    except ValidationError as exc:
        raise SpecError(issues_from(exc, data, pos, source, root), file=source) from None


def _base_dir(source):
    """Folder that include paths are relative to: the including file's ('' is the working directory)."""
    return os.path.dirname(source) if source and not source.startswith("<") else ""


def _collect(lib, pos, source, chain, blocks, loaded):
    """Read ``lib``'s includes (depth first), then register its own blocks."""
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise _error(pos.locate(("include",), source), "include",
                     f"includes nested more than {MAX_INCLUDE_DEPTH} files deep")
    here = [os.path.realpath(s) for s in chain]
    for k, rel in enumerate(lib.include):
        where = pos.locate(("include", k), source)
        if "\0" in rel:
            raise _error(where, f"include[{k}]", f"an include path cannot contain a NUL byte: {rel!r}")
        path = os.path.join(_base_dir(source), rel)
        real = os.path.realpath(path)
        if real in here:
            loop = " -> ".join(chain + [path])
            raise _error(where, f"include[{k}]", f"include cycle: {loop}")
        if real in loaded:
            continue  # reached by another route (a diamond): its blocks are already in
        if not os.path.exists(path):
            raise _error(where, f"include[{k}]", f"include file not found: '{rel}' (looked for {os.path.abspath(path)})"
                         + _chain_text(chain))
        if not os.path.isfile(path):
            raise _error(where, f"include[{k}]", f"include '{rel}' is not a file ({os.path.abspath(path)})")
        if os.path.splitext(path)[1].lower() not in INCLUDE_SUFFIXES:
            # an include names a spec file; any other file is refused unread, so that none of its
            # content is echoed back in an error (include: [/etc/shadow] printed its lines)
            raise _error(where, f"include[{k}]", f"include '{rel}' is not a spec file: expected a name ending in "
                         f"{', '.join(INCLUDE_SUFFIXES)}")
        data, sub_pos = read_spec_file(path)
        if isinstance(data, dict) and not data.keys() & {"blocks", "include"}:
            # a mapping with neither key is not a block library: say so without listing its keys
            _, line, col = sub_pos.locate((), path)
            raise SpecError([dict(file=path, line=line, column=col, path="",
                                  message="an included file must be a mapping with a 'blocks' key (it has none)"
                                  + _chain_text(chain + [path]))], file=path)
        sub = _validate_library(data, sub_pos, path, BlockLibrary)
        _collect(sub, sub_pos, path, chain + [path], blocks, loaded)
        loaded.add(real)
    for name, decl in lib.blocks.items():
        block = _Block(name, decl, source, pos, chain)
        where = block.where(prefer_key=True)
        if name in LAYERS:
            raise _error(where, f"blocks.{name}", f"block '{name}' has the name of a layer type; choose another name")
        if name in blocks:
            first = blocks[name]
            raise _error(where, f"blocks.{name}",
                         f"block '{name}' is defined twice: here{_chain_text(chain)}, and at "
                         f"{_fmt_where(first.where(prefer_key=True))}{_chain_text(first.chain)}")
        for p, (kind, default, dwhere) in block.params().items():
            if p in USE_KEYS:
                raise _error(block.where("params", p, prefer_key=True), f"blocks.{name}.params.{p}",
                             f"'{p}' cannot be a parameter name: it is a key of every block use "
                             f"({', '.join(USE_KEYS)})")
            if default is not _MISSING and not _type_ok(kind, default):
                raise _error(dwhere, f"blocks.{name}.params.{p}.default",
                             f"default of parameter '{p}' must be {_WANTED[kind]}, got {default!r}")
        blocks[name] = block


def _chain_text(chain):
    return f" (included via {' -> '.join(chain)})" if len(chain) > 1 else ""


# --- expansion -------------------------------------------------------------------

class Names:
    """Generated names (conv1, relu2, ...) that avoid every explicit name of a list and each other."""

    def __init__(self, explicit):
        self.explicit, self.taken, self.counters = set(explicit), set(), {}

    def take(self, name):
        self.taken.add(name)

    def new(self, prefix):
        while True:
            self.counters[prefix] = self.counters.get(prefix, 0) + 1
            name = f"{prefix}{self.counters[prefix]}"
            if name not in self.explicit and name not in self.taken:
                self.taken.add(name)
                return name


class _Body(NamedTuple):
    """What stays the same while one layer list is expanded: the spec's top-level layers or a
    block body (one copy of one use)."""
    file: str                 # the file the list was written in
    pos: Positions            # that file's positions
    base: tuple               # the list's key path in that file: ("layers",) or ("blocks", name, "layers")
    scope: str                # prefix of the flat names ("stage1.block2."; "" at the top level)
    block_input: Optional[str]  # the flat name "input" means in a body; None at the top level
    args: dict                # parameter -> (value, Where it was written)
    stack: list               # the blocks being expanded, outermost first
    origin: list              # the uses this body came through: [(file, line, block), ...], innermost first

    def where(self, path, prefer_key=False):
        return self.pos.locate(path, self.file, prefer_key)


class _Entry(NamedTuple):
    """One layer entry being expanded: its data ($params substituted), where each substituted
    value was written, its key path, and its ``inputs`` resolved to flat names (or as written)."""
    data: dict
    subs: dict
    path: tuple
    inputs: object


class _Locals:
    """The names one layer list has seen so far, and the output of its latest layer."""

    def __init__(self, entries, block_input):
        self.explicit = [e.get("name") for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
        self.names = Names(self.explicit)
        self.alias = {}   # local name -> flat name of its output
        self.prev = block_input


class _Expander:
    def __init__(self, blocks):
        self.blocks, self._index, self._sizes = blocks, {}, {}
        self.values = 0     # values the uses expanded so far will copy (MAX_EXPANDED_VALUES)
        self.layers, self.pos = [], Positions()
        self.origins = []   # per flat layer: [(file, line, block name or None), ...], innermost first

    # -- positions --
    def _entries(self, pos, path):
        """Position entries of ``pos`` under ``path`` (a layer entry), indexed once per list."""
        base, idx = path[:-1], path[-1]
        key = (id(pos), base)
        if key not in self._index:
            groups = {}
            n = len(base)
            for kind, table in (("values", pos.values), ("keys", pos.keys)):
                for p, v in table.items():
                    if len(p) > n and p[:n] == base:
                        groups.setdefault(p[n], []).append((kind, p[n + 1:], v))
            self._index[key] = groups
        return self._index[key].get(idx, [])

    def _copy_positions(self, j, body, path, subs):
        """Entries under ``path`` become entries of flat layer j, naming their file; a
        substituted value is placed where its argument was written."""
        tables = {"values": self.pos.values, "keys": self.pos.keys}
        for kind, rest, v in self._entries(body.pos, path):
            if any(rest[:len(sub)] == sub and len(rest) > len(sub) for sub in subs):
                continue  # inside a substituted value: the argument's position replaces it
            tables[kind][("layers", j) + rest] = v._replace(file=v.file or body.file)
        for sub, where in subs.items():
            if where and where.line:
                self.pos.values[("layers", j) + sub] = where

    # -- the walk --
    def expand_list(self, entries, body):
        """Expand ``entries`` (the spec's layers or a block body); returns the flat name of its output.
        Every emitted layer gets its name filled in."""
        inside = body.block_input is not None
        seen = _Locals(entries, body.block_input)
        for idx, raw in enumerate(entries):
            path = body.base + (idx,)
            if not isinstance(raw, dict):
                if inside:
                    raise _error(body.where(path), format_path(path), "a layer must be a mapping of keys")
                self._emit(raw, None, body, path, {})  # validation reports it
                seen.prev = None
                continue
            entry, subs = _substitute(raw, body, path) if inside else (dict(raw), {})
            local = entry.get("name") if isinstance(entry.get("name"), str) else None
            kind = entry.get("type")
            in_names = entry.get("inputs")
            if isinstance(in_names, list) and all(isinstance(r, str) for r in in_names):
                in_names = [self._resolve(ref, seen, body, path + ("inputs", j)) for j, ref in enumerate(in_names)]
            if isinstance(kind, str) and kind in self.blocks:
                out, copies = self._use(_Entry(entry, subs, path, in_names), seen, body)
                seen.alias.update(copies)
            else:
                if local is None:
                    local = seen.names.new(LAYERS[kind].prefix if isinstance(kind, str) and kind in LAYERS else "layer")
                else:
                    seen.names.take(local)
                out = entry["name"] = body.scope + local
                if in_names is not None:
                    entry["inputs"] = in_names
                elif seen.prev is not None and self.layers and self._last_name() != seen.prev:
                    entry["inputs"] = [seen.prev]
                self._emit(entry, out if inside else format_path(path), body, path, subs)
            if local is not None:
                seen.alias[local] = out
            seen.prev = out
        return seen.prev

    def _resolve(self, ref, seen, body, path):
        """A name in ``inputs`` (at ``path``) -> the flat name it means here."""
        if ref == "input":
            return body.block_input or "input"
        if ref in seen.alias:
            return seen.alias[ref]
        if body.block_input is None:
            return ref  # a top-level name the graph check will judge
        later = " (it comes later: layers run in order)" if ref in seen.explicit else ""
        known = list(seen.alias) + ["input"]
        raise _error(body.where(path), format_path(path),
                     f"unknown input '{ref}' inside block '{body.stack[-1]}'{later}{did_you_mean(ref, known)} "
                     f"(known here: {', '.join(known)})")

    def _size(self, kind):
        """How many values (leaves) block ``kind``'s body holds, counted once, without recursion."""
        if kind not in self._sizes:
            n, stack = 0, [self.blocks[kind].decl.layers]
            while stack:
                v = stack.pop()
                if isinstance(v, dict):
                    stack.extend(v.values())
                elif isinstance(v, list):
                    stack.extend(v)
                else:
                    n += 1
            self._sizes[kind] = n
        return self._sizes[kind]

    def _last_name(self):
        last = self.layers[-1]
        return last.get("name") if isinstance(last, dict) else None

    def _emit(self, entry, label, body, path, subs):
        j = len(self.layers)
        if j >= MAX_LAYERS:
            raise _error(body.where(path), format_path(path), f"the spec expands to more than {MAX_LAYERS:,} layers")
        self.layers.append(entry)
        self._copy_positions(j, body, path, subs)
        if label:
            self.pos.labels[("layers", j)] = label
        self.origins.append([(body.file, body.where(path).line, None)] + body.origin)
        return j

    def _use(self, item, seen, body):
        """Expand the use of a block; returns (its output, {copy name: output} when repeated)."""
        entry, subs, path, in_names = item
        kind = entry["type"]
        block = self.blocks[kind]
        where = body.where(path)
        if kind in body.stack:
            raise _error(where, format_path(path),
                         f"block '{kind}' uses itself: {' -> '.join(body.stack[body.stack.index(kind):] + [kind])}")
        if len(body.stack) >= MAX_BLOCK_DEPTH:
            raise _error(where, format_path(path), f"blocks are used inside blocks more than {MAX_BLOCK_DEPTH} "
                         f"deep: {' -> '.join(body.stack + [kind])}")
        # the use's own keys
        try:
            use = BlockUse.model_validate({k: v for k, v in entry.items() if k in USE_KEYS})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = err["loc"][0]
            w = subs.get((key,)) or body.where(path + tuple(err["loc"]))
            raise _error(w, format_path(path + (key,)), message(err, {}, tuple(err["loc"]), BlockUse)) from None
        # the limit on layers, checked before anything is copied (repeat: 10**9 allocated first)
        if use.repeat is not None and len(self.layers) + use.repeat * len(block.decl.layers) > MAX_LAYERS:
            raise _error(subs.get(("repeat",)) or body.where(path + ("repeat",)), format_path(path + ("repeat",)),
                         f"repeat {use.repeat} of block '{kind}' ({len(block.decl.layers)} layers each) expands "
                         f"to more than {MAX_LAYERS:,} layers")
        copies_n = 1 if use.repeat is None else use.repeat
        self.values += copies_n * self._size(kind)
        if self.values > MAX_EXPANDED_VALUES:
            raise _error(where, format_path(path), f"block '{kind}' ({self._size(kind):,} values) used "
                         f"{copies_n:,} times here takes the expanded spec past {MAX_EXPANDED_VALUES:,} values")
        args = self._arguments(item, block, body)
        if isinstance(in_names, list) and len(in_names) == 1:
            src = in_names[0]
        else:
            src = seen.prev if seen.prev is not None else "input"
        if use.name is None:
            base = seen.names.new(kind)
        else:
            seen.names.take(use.name)
            base = use.name
        copies = [base] if use.repeat is None else [f"{base}{use.start + k}" for k in range(use.repeat)]
        out, outputs = src, {}
        for copy_name in copies:
            inner = _Body(block.file, block.pos, block.path + ("layers",), body.scope + copy_name + ".", out, args,
                          body.stack + [kind], [(body.file, where.line, kind)] + body.origin)
            out = self.expand_list(block.decl.layers, inner)
            outputs[copy_name] = out
        return out, (outputs if use.repeat is not None else {})

    def _arguments(self, item, block, body):
        """{parameter: (value, Where written)} of a use, defaults filled; errors at the argument."""
        entry, subs, path, _ = item
        kind, params, args = entry["type"], block.params(), {}
        for key, value in entry.items():
            if key in USE_KEYS:
                continue
            at = path + (key,)
            if key not in params:
                hint = did_you_mean(key, list(params) + list(USE_KEYS))
                known = ", ".join(params) or "none"
                raise _error(subs.get((key,)) or body.where(at, prefer_key=True), format_path(at),
                             f"unknown parameter '{key}' of block '{kind}'{hint} (its parameters: {known})")
            written = subs.get((key,)) or body.where(at)
            wanted = params[key][0]
            if not _type_ok(wanted, value):
                raise _error(written, format_path(at),
                             f"parameter '{key}' of block '{kind}' must be {_WANTED[wanted]}, got {value!r}")
            args[key] = (value, written)
        missing = [p for p, (_, d, _) in params.items() if p not in args and d is _MISSING]
        if missing:
            raise _error(body.where(path), format_path(path),
                         f"block '{kind}' needs parameter{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(m) for m in missing)}")
        for p, (_, d, dw) in params.items():
            if p not in args:
                args[p] = (d, dw)
        return args


def _substitute(raw, body, path):
    """Copy of a body layer with every ``$param`` replaced; also {sub-path: Where the value was written}."""
    subs = {}

    def walk(v, sub):
        if isinstance(v, dict):
            return {k: walk(x, sub + (k,)) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, sub + (i,)) for i, x in enumerate(v)]
        if isinstance(v, str) and v.startswith("$"):
            m = _PARAM.match(v)
            if not m or m.group(1) not in body.args:
                name = m.group(1) if m else v[1:]
                known = ", ".join("$" + a for a in body.args) or "none"
                raise _error(body.where(path + sub), format_path(path + sub),
                             f"unknown parameter '{v}' in block '{body.stack[-1]}'"
                             f"{did_you_mean('$' + name, ['$' + a for a in body.args])} (its parameters: {known})")
            value, where = body.args[m.group(1)]
            subs[sub] = where
            return value
        return v

    return walk(raw, ()), subs


def expand(data, pos, source, root):
    """Flat spec data and its Positions, from data that defines, includes or uses blocks
    (``root``: the model the whole spec is validated against, for messages about its keys).

    Returns ``(data, positions, origins)``; ``origins[j]`` lists where flat layer j was
    written and the uses it came through, innermost first: ``(file, line, block)``.
    """
    head = {k: data[k] for k in ("include", "blocks") if k in data}
    lib = _validate_library(head, pos, source, root)
    blocks = {}
    _collect(lib, pos, source, [source], blocks, set())
    flat = {k: v for k, v in data.items() if k not in ("include", "blocks")}
    layers = data.get("layers")
    ex = _Expander(blocks)
    if isinstance(layers, list):
        ex.expand_list(layers, _Body(source, pos, ("layers",), "", None, {}, [], []))
        flat["layers"] = ex.layers
    out = Positions()
    for table, new in ((pos.values, out.values), (pos.keys, out.keys)):
        for p, v in table.items():
            if p[:1] not in (("layers",), ("blocks",), ("include",)):
                new[p] = v
    if ("layers",) in pos.keys:
        out.keys[("layers",)] = pos.keys[("layers",)]
    out.values.update(ex.pos.values)
    out.keys.update(ex.pos.keys)
    out.labels.update(ex.pos.labels)
    for j, chain in enumerate(ex.origins):
        if len(chain) > 1:
            out.uses[("layers", j)] = ", ".join(f"block '{b}' used at {f}:{line}" for f, line, b in chain[1:])
    return flat, out, ex.origins
