"""The paths of a ``tune:`` section: what each names, and the spec a set of values gives.

Design: a path is dotted. ``train.optimizer.lr`` and other top-level paths name
keys of the resolved spec (defaults included, so ``train.optimizer.weight_decay``
exists though the file may not write it). ``layers.<name>.<key>`` names a key of
a layer by its flat name, scoped names such as ``stage1.block2.conv1`` included,
or, for the name of a block use written in the spec's own layers, one of the
block's parameters or ``repeat``. A trial's spec is built from the data as
written, so a tuned ``train.optimizer.type`` gets that optimizer's own defaults:
arguments of block uses are set before the blocks are expanded, every other
value after, and a key the file does not write is added from the resolved spec.
The result is validated like any spec file. When a spec with a tune section is
loaded, every path must name something, and every end of a range and every
choice must give a valid spec, each reported at the path's key in the file.
"""
import copy
from typing import NamedTuple, Optional

from ..errors import NetspecError, SpecError, did_you_mean
from ..layers import LAYERS
from ..shapes import infer_layers
from . import blocks
from .issues import issue
from .models import NetSpec, spec_to_dict

NOT_TUNABLE = {"netspec", "layers", "name", "inputs"}  # keys that name or wire things, not numbers


class Target(NamedTuple):
    """What a path names: a block use's argument ("use", set before expansion) or a key of the flat
    spec ("flat"); ``name`` is the layer or use (None: a top-level key), ``keys`` the keys inside it."""
    stage: str
    name: Optional[str]
    keys: tuple


class PathError(ValueError):
    """A path that names nothing in the spec (the message says why, with a did-you-mean)."""


class Searchable:
    """A validated spec with a tune section, and what it was read from: gives the spec of any values.

    ``validate(data, positions, source)`` is the loader's validation (netspec.spec.validate).
    """

    def __init__(self, spec, raw, pos, validate):
        self.spec, self.raw, self.pos, self.source = spec, raw, pos, spec.source
        self._validate = validate
        self.resolved = spec_to_dict(spec)
        self.layers = {layer["name"]: layer for layer in self.resolved["layers"]}
        self.uses = _uses(raw)
        self.targets = {}

    # -- paths ------------------------------------------------------------------
    def resolve(self, path):
        """The Target a path names; PathError when it names nothing."""
        parts = tuple(path.split("."))
        if not all(parts):
            raise PathError(f"'{path}' is not a dotted path of spec keys (train.optimizer.lr, layers.<name>.<key>)")
        if parts[0] != "layers":
            _walk(self.resolved, parts, "the spec")
            return Target("flat", None, parts)
        rest = parts[1:]
        for k in range(len(rest), 0, -1):
            name = ".".join(rest[:k])
            if name in self.layers or name in self.uses:
                break
        else:
            guess = ".".join(rest[:-1]) or ".".join(rest)
            known = list(self.layers) + list(self.uses)
            raise PathError(f"no layer or block use named '{guess}'{did_you_mean(guess, known)}")
        keys = rest[k:]
        if not keys:
            raise PathError(f"name a key of '{name}': layers.{name}.<key>")
        if name in self.layers:
            _walk(self.layers[name], keys, f"layer '{name}' ({self.layers[name]['type']})")
            return Target("flat", name, keys)
        entry = self.raw["layers"][self.uses[name]]
        params = self._block_params(entry["type"])
        if len(keys) > 1 or (params is not None and keys[0] not in params):
            known = sorted((params or set()) - {"repeat"}) + ["repeat"]
            raise PathError(f"'{name}' uses block '{entry['type']}': tune one of its parameters or repeat "
                            f"({', '.join(known)}), not '{'.'.join(keys)}'{did_you_mean('.'.join(keys), known)}")
        return Target("use", name, keys)

    def _block_params(self, kind):
        """Parameter names (with repeat) of a block defined in this file; None for an included one
        (its arguments are then checked when the values are tried)."""
        defs = self.raw.get("blocks")
        block = defs.get(kind) if isinstance(defs, dict) else None
        if not isinstance(block, dict):
            return None
        return set(block.get("params") or {}) | {"repeat"}

    # -- specs --------------------------------------------------------------------
    def data(self, params):
        """(flat spec data, positions) with ``params`` ({path: value}) set, tune section dropped."""
        raw = copy.deepcopy(self.raw)
        raw.pop("tune", None)
        targets = {p: self.targets.get(p) or self.resolve(p) for p in params}
        for path, t in targets.items():
            if t.stage == "use":
                raw["layers"][self.uses[t.name]][t.keys[0]] = params[path]
        if blocks.uses_blocks(raw):
            flat, pos, _ = blocks.expand(raw, self.pos, self.source, NetSpec)
        else:
            flat, pos = raw, self.pos
            for entry, name in zip(flat.get("layers") or [], self.spec.layer_names):
                if isinstance(entry, dict) and "name" not in entry:
                    entry["name"] = name  # the generated name, now written: the graph is the same
        for path, t in targets.items():
            if t.stage == "flat":
                node, resolved = flat, self.resolved
                if t.name is not None:
                    node = _layer(flat, t.name, path)
                    resolved = self.layers.get(t.name, {})
                _set(node, t.keys, params[path], resolved)
        return flat, pos

    def spec_for(self, params):
        """The validated NetSpec of ``params`` (SpecError when it is not a valid spec)."""
        flat, pos = self.data(params)
        return self._validate(flat, pos, self.source)

    def current(self, path):
        """The value the spec itself gives ``path`` (None when it gives none)."""
        t = self.targets.get(path) or self.resolve(path)
        if t.stage == "use":
            entry = self.raw["layers"][self.uses[t.name]]
            if t.keys[0] in entry:
                return entry[t.keys[0]]
            decl = ((self.raw.get("blocks") or {}).get(entry["type"]) or {}).get("params", {}).get(t.keys[0])
            return decl.get("default") if isinstance(decl, dict) else None
        written, _ = self.data({})
        if t.name is not None:
            written = next((e for e in written.get("layers") or [] if isinstance(e, dict) and e.get("name") == t.name),
                           None)
        found = _get(written, t.keys)  # as the file writes it (kernel: 3), else as resolved ([3, 3])
        if found is not _ABSENT:
            return found
        found = _get(self.resolved if t.name is None else self.layers[t.name], t.keys)
        return None if found is _ABSENT else found

    def baseline(self):
        """(the spec's own values of the space's paths, None) when they all lie in the space,
        else (None, why not)."""
        values = {}
        for path, dist in self.spec.tune.space.items():
            value = self.current(path)
            if not dist.contains(value):
                return None, f"the spec's own {path} ({value!r}) lies outside its {dist.kind} {dist.args}"
            values[path] = value
        return values, None

    # -- the checks of a spec with a tune section --------------------------------------
    def issues(self):
        """Positioned issues of the space: paths that name nothing, values that give invalid specs."""
        found = []
        for path, dist in self.spec.tune.space.items():
            at = ("tune", "space", path)
            try:
                self.targets[path] = self.resolve(path)
            except PathError as exc:
                found.append(issue(self.source, self.pos, at, str(exc), prefer_key=True))
                continue
            for value, what in dist.probes():
                problem = self._problem({path: value})
                if problem:
                    found.append(issue(self.source, self.pos, at, f"{what}, {value!r}, does not give a valid "
                                       f"spec: {problem}", prefer_key=True))
                    break
        return found

    def _problem(self, params):
        """Why ``params`` give no valid spec ('' when they do)."""
        try:
            infer_layers(self.spec_for(params))
        except SpecError as exc:
            first = exc.issues[0]
            return f"{first['path']}: {first['message']}" if first.get("path") else first["message"]
        except (PathError, NetspecError) as exc:
            return str(exc)
        return ""


def _uses(raw):
    """{name: index} of the block uses written in the spec's own layers (entries whose type is no layer)."""
    out = {}
    layers = raw.get("layers") if isinstance(raw, dict) else None
    for i, entry in enumerate(layers if isinstance(layers, list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry.get("type") not in LAYERS:
            out[entry["name"]] = i
    return out


def _walk(node, keys, what):
    """Check that ``keys`` lead somewhere in ``node`` (a resolved spec or layer); PathError if not."""
    here = what
    for depth, k in enumerate(keys):
        if not isinstance(node, dict):
            raise PathError(f"{here} is {'not set in this spec' if node is None else repr(node)}; "
                            f"there is no '{k}' in it" + (" (write it in the spec to tune inside it)"
                                                          if node is None else ""))
        options = [o for o in node if o not in NOT_TUNABLE or depth]
        if k not in options:
            hint = did_you_mean(k, options)
            raise PathError(f"{here} has no key '{k}'" + (hint or f" (its keys: {', '.join(options)})"))
        node = node[k]
        here = ".".join(keys[:depth + 1]) if what == "the spec" else f"{what} key {'.'.join(keys[:depth + 1])}"


_ABSENT = object()


def _get(node, keys):
    """node[k1][k2]..., or _ABSENT where a key is missing."""
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return _ABSENT
        node = node[k]
    return node


def _layer(flat, name, path):
    """The flat layer entry named ``name`` (a repeat tuned lower may have removed it)."""
    for entry in flat.get("layers") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise SpecError(f"{path}: this trial's spec has no layer '{name}'")


def _set(node, keys, value, resolved):
    """node[k1][k2]... = value; a mapping the file does not write comes from the resolved spec."""
    for k in keys[:-1]:
        resolved = resolved.get(k) if isinstance(resolved, dict) else None
        if not isinstance(node.get(k), dict):
            node[k] = copy.deepcopy(resolved) if isinstance(resolved, dict) else {}
        node = node[k]
    node[keys[-1]] = value


def check(spec, raw, pos, validate):
    """SpecError listing every problem of ``spec``'s tune section (a no-op without one)."""
    if spec.tune is None:
        return
    found = Searchable(spec, raw, pos, validate).issues()
    if found:
        raise SpecError(found, file=spec.source)
