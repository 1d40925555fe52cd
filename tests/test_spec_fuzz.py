"""Mutated specs give SpecError, ShapeError or a model, never another exception.

Two fuzzers: one edits the parsed data of valid specs (drop/rename keys,
replace values with junk of any type, swap layer types, nest values in lists,
duplicate layers, set a number to a small one), the other edits the YAML text
(delete/insert characters). Every spec that validates is compiled, and a compiled
model is run forward and backward. Each fuzzer counts its outcomes and fails if
too few examples reach a model that runs: a generator whose mutations all give
invalid specs would test only the error paths. Parameters of absurd size must
fail fast with a ShapeError; the test skips only the mid-sized ones (units: 30000
after 784 inputs), which would merely make it slow and memory-hungry, by
guarding the initialiser.
"""
import copy
import math
import sys
import warnings
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import netspec
from netspec import ShapeError, SpecError
from netspec.gradcheck import random_batch
from netspec.layers import LAYERS, LOSSES
from netspec.spec import loads_spec

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"

SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

SMALL_SPEC = """\
netspec: 1
name: tiny
seed: 3
dtype: float64
input: {shape: [2, 6, 6]}
layers:
  - {type: conv2d, name: c1, filters: 3, kernel: 3, pad: 1, init: {std: 0.1}}
  - {type: batchnorm}
  - {type: relu, name: r1}
  - {type: conv2d, name: c2, filters: 3, kernel: [3, 1], pad: 1, stride: 1, bias: false, init: xavier}
  - {type: maxpool2d, size: 2, stride: 2, inputs: [c2]}
  - {type: avgpool2d, size: 3, stride: 3, pad: 1, inputs: [r1]}
  - {type: concat, inputs: [pool1, avgpool1]}
  - {type: flatten}
  - {type: dense, units: 4, init: {values: [[0.5, 1, 2, 3]]}, bias_init: 0.1}
  - {type: dropout, ratio: 0.25}
  - {type: tanh}
  - {type: add, inputs: [tanh1, dense1]}
  - {type: sigmoid}
  - {type: dense, units: 3, init: he}
  - {type: softmax}
loss: mse
"""

BASES = [yaml.safe_load(SMALL_SPEC)] + [yaml.safe_load(p.read_text()) for p in sorted(SPECS_DIR.glob("*.yaml"))]
WORDS = sorted(LAYERS) + sorted(LOSSES) + ["units", "filters", "kernel", "stride", "pad", "size", "ratio",
                                           "inputs", "name", "type", "init", "values", "std", "shape", "input"]
ABSURD = [10**18, -10**18, 2**63, 10**30]

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from(ABSURD),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.sampled_from(WORDS),
    st.lists(st.integers(-2, 9), max_size=4), st.lists(st.lists(st.floats(-2, 2), max_size=3), max_size=3),
    st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=4), st.integers(-1, 9), max_size=2))


def _slots(node, out):
    """Every (container, key) pair in nested dicts and lists."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in list(items):
        out.append((node, k))
        _slots(v, out)
    return out


def _typo(key):
    if not key:
        return st.just("_")
    return st.sampled_from([key[:-1], key + "s", key[1:] + key[0], key.upper(), key.replace("e", "r", 1)])


@st.composite
def mutated_specs(draw):
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "rename", "value", "nest", "insert", "swap_type", "copy_layer",
                                   "small_number"]))
        if op == "swap_type" and isinstance(data.get("layers"), list) and data["layers"]:
            layer = draw(st.sampled_from(data["layers"]))
            if isinstance(layer, dict):
                layer["type"] = draw(st.sampled_from(sorted(LAYERS)) | junk)
            continue
        if op == "copy_layer" and isinstance(data.get("layers"), list) and data["layers"]:
            i = draw(st.integers(0, len(data["layers"]) - 1))
            data["layers"].insert(draw(st.integers(0, len(data["layers"]))), copy.deepcopy(data["layers"][i]))
            continue
        slots = _slots(data, [])
        if not slots:
            break
        if op == "small_number":  # often still valid: other kernels, strides, sizes, shapes
            numbers = [(c, k) for c, k in slots if type(c[k]) is int]
            if numbers:
                container, key = draw(st.sampled_from(numbers))
                container[key] = draw(st.integers(1, 6))
            continue
        container, key = draw(st.sampled_from(slots))
        if op == "drop":
            del container[key]
        elif op == "rename" and isinstance(container, dict):
            new = draw(_typo(str(key)) | st.text(max_size=6) | st.sampled_from(WORDS))
            container[new] = container.pop(key)
        elif op == "nest":
            container[key] = [container[key]]
        elif op == "insert" and isinstance(container, dict):
            container[draw(st.sampled_from(WORDS) | st.text(max_size=6))] = draw(junk)
        elif op == "insert":
            container.insert(key, draw(junk))
        else:
            container[key] = draw(junk)
    return data


class _MidSized(Exception):
    """A parameter too large for a quick test but small enough that allocating it might succeed."""


_layer_base = sys.modules["netspec.layers.base"]   # where Layer.build draws parameters
_initialize = _layer_base.initialize


def _guarded_initialize(spec, shape, *args, **kwargs):
    if 2_000_000 < math.prod(shape) < 10**15:
        raise _MidSized
    return _initialize(spec, shape, *args, **kwargs)


def _load_and_compile(load):
    """The outcome: 'spec' or 'shape' (the error raised), 'skipped' (mid-sized parameters),
    'compiled' (a model too large to run here) or 'ran' (forward and backward checked)."""
    try:
        spec = load()
    except SpecError as exc:
        assert str(exc)  # renders
        return "spec"
    with warnings.catch_warnings():
        # Pydantic warns when a field holds something its type does not describe (an unvalidated default)
        warnings.simplefilter("error")
        spec.model_dump(mode="python")
    try:
        with mock.patch.object(_layer_base, "initialize", _guarded_initialize):
            model = netspec.compile(spec)
    except _MidSized:
        return "skipped"
    except ShapeError as exc:
        assert str(exc)
        return "shape"
    return "ran" if _run(model) else "compiled"


def _run(model):
    """A compiled model runs: forward shapes match inference, every parameter gets a gradient.
    False when an activation is too large to run quickly."""
    sizes = [math.prod(model.input_shape)] + [math.prod(l.out_shape) for l in model.layers]
    if max(sizes) > 20_000:
        return False
    x, t = random_batch(model, n=2, seed=0)
    assert model.predict(x).shape == (2,) + model.output_shape
    _, grads = model.gradient(x, t)
    assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in model.params.items()}
    return True


def _fuzz(examples, load):
    """Run ``_load_and_compile(lambda: load(example))`` on hypothesis examples; the outcome counts."""
    outcomes = Counter()

    @SETTINGS
    @given(examples)
    def fuzz(example):
        outcome = _load_and_compile(lambda: load(example))
        event(outcome)
        outcomes[outcome] += 1

    fuzz()
    return outcomes


def _assert_models_ran(outcomes):
    """At least 1 example in 50 gave a model that ran forward and backward (typically 1 in 9;
    the fewest seen in 65 runs of 200 examples was 11)."""
    total = sum(outcomes.values())
    assert outcomes["ran"] >= max(1, total // 50), f"too few examples reached a model: {dict(outcomes)}"


def test_mutated_specs_raise_only_spec_or_shape_errors():
    _assert_models_ran(_fuzz(mutated_specs(), netspec.load_spec))


@st.composite
def mutated_texts(draw):
    text = SMALL_SPEC if draw(st.booleans()) else draw(st.sampled_from(
        [p.read_text() for p in sorted(SPECS_DIR.glob("*.yaml"))]))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        if draw(st.booleans()) and i < len(text):
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + draw(st.sampled_from(list(":{}[]-,#!&*|>%@`'\"\n\t ?~0a9"))) + text[i:]
    return text


def _load_text(example):
    text, fmt = example
    if fmt == "json":
        text = _as_json(text)
    return loads_spec(text, source=f"fuzz.{fmt}", fmt=fmt)


def test_mutated_text_raises_only_spec_or_shape_errors():
    _assert_models_ran(_fuzz(st.tuples(mutated_texts(), st.sampled_from(["yaml", "json"])), _load_text))


def _as_json(text):
    """A JSON rendering of YAML text when it parses, else the text itself (invalid JSON)."""
    import json
    try:
        return json.dumps(yaml.safe_load(text), indent=1, default=str)
    except yaml.YAMLError:
        return text


@pytest.mark.parametrize("layer", [
    {"type": "dense", "units": 10**30},
    {"type": "dense", "units": 10**18},
    {"type": "conv2d", "filters": 2**40, "kernel": 3},
    {"type": "conv2d", "filters": 2, "kernel": 2**62},
])
def test_absurd_sizes_are_shape_or_spec_errors(layer):
    spec = {"input": {"shape": [1, 8, 8]}, "layers": [layer], "loss": "mse"}
    with pytest.raises((ShapeError, SpecError)):
        netspec.compile(spec)


def test_absurd_input_shape_is_an_error():
    spec = {"input": {"shape": [2**40, 2**40, 2**40]}, "layers": [{"type": "dense", "units": 2}], "loss": "mse"}
    with pytest.raises((ShapeError, SpecError)):
        netspec.compile(spec)


@pytest.mark.parametrize("layer", [
    {"type": "conv2d", "filters": 2, "kernel": 2, "stride": 2**63},
    {"type": "maxpool2d", "size": 2, "stride": 10**30},
    {"type": "avgpool2d", "size": 2, "stride": 2**63},
])
def test_huge_strides_are_errors_or_run(layer):
    """A stride no input reaches is refused by compile, or the model runs (one output position)."""
    spec = {"input": {"shape": [1, 8, 8]}, "layers": [layer, {"type": "dense", "units": 2}], "loss": "mse"}
    try:
        model = netspec.compile(spec)
    except (ShapeError, SpecError):
        return
    x, t = random_batch(model, n=2, seed=0)
    assert model.predict(x).shape == (2, 2)
