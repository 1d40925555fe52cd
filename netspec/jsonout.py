"""Strict JSON for everything netspec writes: non-finite numbers become null, never NaN/Infinity.

Python's json module writes NaN and Infinity by default, which strict parsers
(JavaScript's JSON.parse, jq, most other languages) reject. ``dumps`` replaces
every non-finite float (Python or numpy) by ``null`` and then dumps with
``allow_nan=False``, so a value that slipped through is an error here rather
than a broken file elsewhere. numpy scalars and arrays become plain numbers and lists.
"""
import json
import math

import numpy as np


def finite_or_none(value):
    """``value`` as plain JSON data, with every non-finite float replaced by None."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value, **kwargs):
    """json.dumps of ``finite_or_none(value)``, refusing NaN and infinity."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)
