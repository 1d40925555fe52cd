"""The flat spec that gets compiled (``netspec expand``): blocks expanded, every default filled.

The YAML form notes, above each layer that came from a block, where its body was
written and the uses it came through; the JSON form is the same data without
notes. Either one is itself a valid spec, and expanding it again gives the same
data.
"""
import yaml

from .errors import printable
from .spec import expand, read_spec_file, spec_to_dict


def expanded(path):
    """(flat spec data, origins) of the spec file at ``path``; see ``netspec.spec.expand``."""
    data, pos = read_spec_file(path)
    spec, origins = expand(data, pos, str(path))
    return spec_to_dict(spec), origins


def _flow(value):
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()


def where_from(chain):
    """'b.yaml:12: block basic, used at a.yaml:30 in block stage, used at a.yaml:41'."""
    f, line, _ = chain[0]
    text = f"{printable(f)}:{line}: block {chain[1][2]}"
    for k, (uf, ul, _) in enumerate(chain[1:], 1):
        text += f", used at {printable(uf)}:{ul}" + (f" in block {chain[k + 1][2]}" if k + 1 < len(chain) else "")
    return text


def to_yaml(flat, origins, source):
    """The flat spec as YAML: one flow mapping per layer, its origin as a comment above it."""
    lines = [f"# {printable(source)}, expanded by netspec expand: the flat spec that gets compiled, every default filled"]
    for key, value in flat.items():
        if key != "layers":
            lines.append(yaml.safe_dump({key: value}, default_flow_style=None if isinstance(value, (dict, list)) else False,
                                        sort_keys=False,
                                        width=10**6).rstrip())
            continue
        lines.append("layers:")
        for j, layer in enumerate(value):
            chain = origins[j] if origins else []
            if len(chain) > 1:
                lines.append(f"  # {where_from(chain)}")
            first = {k: layer[k] for k in ("type", "name") if k in layer}
            lines.append(f"  - {_flow({**first, **layer})}")
    return "\n".join(lines) + "\n"
