"""Parameter initialisers named in specs: normal(std), he, xavier, zeros, constant, values.

A spec writes ``init: he``, ``init: {std: 0.01}``, ``init: {type: constant, value: 0.5}``
or ``init: {values: [[...]]}``; the short forms are normalised to the tagged
form before validation. fan_in is in-features for dense, C*kh*kw for conv.
"""
import math
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BeforeValidator, Field, TypeAdapter

from .errors import ShapeError
from ._strict import Strict


class NormalInit(Strict):
    type: Literal["normal"] = "normal"
    std: float = Field(0.01, gt=0, allow_inf_nan=False, description="standard deviation")
    mean: float = Field(0.0, allow_inf_nan=False)


class HeInit(Strict):
    """Normal with std sqrt(2 / fan_in), for ReLU nets (He et al. 2015; PyTorch's kaiming_normal_)."""
    type: Literal["he"] = "he"


class XavierInit(Strict):
    """Normal with std sqrt(1 / fan_in), for sigmoid/tanh nets.

    This is the book's "Xavier": it uses fan_in only. PyTorch's xavier_normal_ uses
    sqrt(2 / (fan_in + fan_out)), which differs whenever fan_in != fan_out.
    """
    type: Literal["xavier"] = "xavier"


class ZerosInit(Strict):
    type: Literal["zeros"] = "zeros"


class ConstantInit(Strict):
    type: Literal["constant"] = "constant"
    value: float = Field(allow_inf_nan=False)


def _finite_numbers(v):
    """Explicit values are a number or nested lists of finite numbers: no strings, booleans, NaN or inf."""
    def check(x, where):
        if isinstance(x, list):
            for i, item in enumerate(x):
                check(item, f"{where}[{i}]")
        elif isinstance(x, bool) or not isinstance(x, (int, float)):
            if not where:
                raise ValueError("explicit values must be a number or nested lists of numbers")
            raise ValueError(f"explicit values must be numbers, got {x!r} at values{where}")
        elif not math.isfinite(x):
            raise ValueError(f"explicit values must be finite, got {x!r} at values{where}")
    check(v, "")
    return v


class ValuesInit(Strict):
    """Explicit values written in the spec, shape-checked against the parameter."""
    type: Literal["values"] = "values"
    values: Annotated[Union[float, list[Any]], BeforeValidator(_finite_numbers)]


def _short_forms(v):
    if isinstance(v, str):
        return {"type": v}
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"type": "constant", "value": v}
    if isinstance(v, list):
        return {"type": "values", "values": v}
    if isinstance(v, dict) and "type" not in v:
        if "std" in v:
            return {"type": "normal", **v}
        if "values" in v:
            return {"type": "values", **v}
        if "value" in v:
            return {"type": "constant", **v}
    return v


InitSpec = Annotated[
    Union[NormalInit, HeInit, XavierInit, ZerosInit, ConstantInit, ValuesInit],
    Field(discriminator="type"), BeforeValidator(_short_forms)]


_adapter = None


def resolve_init(spec):
    """An init spec object from a short form ('he', 0.5, {std: 0.01}, ...) or an object."""
    global _adapter
    if isinstance(spec, Strict):
        return spec
    if _adapter is None:
        _adapter = TypeAdapter(InitSpec)
    return _adapter.validate_python(spec)


def initialize(spec, shape, fan_in, rng, dtype, where=""):
    """Draw one parameter array of ``shape`` as ``spec`` (an init spec or its short form) says."""
    spec = resolve_init(spec)
    kind = spec.type
    if kind == "normal":
        arr = spec.mean + spec.std * rng.standard_normal(shape)
    elif kind in ("he", "xavier"):
        std = np.sqrt((2.0 if kind == "he" else 1.0) / max(fan_in, 1))
        arr = std * rng.standard_normal(shape)
    elif kind == "zeros":
        arr = np.zeros(shape)
    elif kind == "constant":
        arr = np.full(shape, spec.value)
    elif kind == "values":
        try:
            arr = np.asarray(spec.values, dtype=np.float64)
        except (ValueError, TypeError):
            raise ShapeError(f"{where}: explicit values must be a rectangular nested list of numbers") from None
        if arr.shape != tuple(shape):
            raise ShapeError(f"{where}: explicit values have shape {list(arr.shape)}, "
                             f"but the parameter is shaped {list(shape)}")
    else:  # pragma: no cover - the schema admits no other kind
        raise ValueError(kind)
    return np.ascontiguousarray(arr, dtype=dtype)
