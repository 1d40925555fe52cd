"""Find the specs shipped with netspec (installed as netspec/specs, or specs/ in a checkout)."""
import os

from .errors import SpecError

DEFAULT_SPEC = "simple_convnet"   # what `netspec run` trains when no spec is named

_HERE = os.path.dirname(os.path.abspath(__file__))


def spec_dirs():
    return [d for d in (os.path.join(_HERE, "specs"), os.path.join(os.path.dirname(_HERE), "specs"))
            if os.path.isdir(d)]


def shipped_spec(name):
    """Path of a shipped spec by name ('simple_convnet'), or None."""
    for d in spec_dirs():
        for ext in (".yaml", ".yml", ".json"):
            p = os.path.join(d, name + ext)
            if os.path.exists(p):
                return p
    return None


def resolve_spec_path(arg):
    """A spec path as given, or the name of a spec shipped with netspec (e.g. 'simple_convnet')."""
    if arg is None:
        arg = DEFAULT_SPEC
    if "\0" in arg:
        raise SpecError(f"{arg!r}: a file name cannot contain a NUL byte", file=arg)
    if os.path.exists(arg):
        return arg
    found = shipped_spec(arg)
    if found:
        return found
    raise SpecError(f"spec file not found: {arg}", file=arg)
