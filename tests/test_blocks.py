"""Blocks, repeat, include and ``netspec expand``: what a spec expands to, and where its errors point."""
import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

import netspec
from netspec import SpecError
from netspec.cli import main
from netspec.expand import expanded, to_yaml
from netspec.spec import NetSpec, json_schema

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
RESNET = SPECS_DIR / "resnet_fashion.yaml"

BASIC = """\
blocks:
  basic:
    params: {filters: int, stride: {type: int, default: 1}}
    layers:
      - {type: conv2d, name: conv1, filters: $filters, kernel: 3, stride: $stride, pad: 1}
      - {type: relu}
      - {type: conv2d, name: conv2, filters: $filters, kernel: 3, pad: 1}
      - {type: add, inputs: [conv2, input]}
"""


@pytest.fixture
def write(tmp_path):
    def w(name, text):
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p
    return w


def spec_error(path):
    with pytest.raises(SpecError) as e:
        netspec.compile(netspec.load_spec(path))
    return str(e.value)


def params(model):
    return {k: v.shape for k, v in model.params.items()}


# --- what a spec expands to ---------------------------------------------------------

def test_block_expands_to_the_flat_layers_written_out(write):
    blocked = write("b.yaml", "input: {shape: [2, 6, 6]}\n" + BASIC + """\
layers:
  - {type: basic, name: res, filters: 2}
  - {type: relu}
loss: mse
""")
    flat = write("f.yaml", """\
input: {shape: [2, 6, 6]}
layers:
  - {type: conv2d, name: res.conv1, filters: 2, kernel: 3, pad: 1}
  - {type: relu, name: res.relu1}
  - {type: conv2d, name: res.conv2, filters: 2, kernel: 3, pad: 1}
  - {type: add, name: res.add1, inputs: [res.conv2, input]}
  - {type: relu, name: relu1}
loss: mse
""")
    a, b = netspec.compile(blocked), netspec.compile(flat)
    assert a.spec.layer_names == ["res.conv1", "res.relu1", "res.conv2", "res.add1", "relu1"]
    assert a.spec.layer_inputs == b.spec.layer_inputs
    assert a.spec.layer_inputs[3] == ["res.conv2", "input"]
    assert list(a.params) == list(b.params) == ["res.conv1.W", "res.conv1.b", "res.conv2.W", "res.conv2.b"]
    for k in a.params:  # same seed, same order: the same initial weights
        np.testing.assert_array_equal(a.params[k], b.params[k])
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_repeat_chains_numbered_copies_and_start_moves_the_numbers(write):
    path = write("r.yaml", "input: {shape: [2, 6, 6]}\n" + BASIC + """\
layers:
  - {type: basic, name: stage.block, repeat: 3, filters: 2}
  - {type: basic, name: more, repeat: 2, start: 4, filters: 2}
  - {type: relu, name: last, inputs: [stage.block]}
  - {type: add, name: sum, inputs: [last, more]}
loss: mse
""")
    spec = netspec.load_spec(path)
    names, inputs = spec.layer_names, dict(zip(spec.layer_names, spec.layer_inputs))
    assert [n for n in names if n.endswith(".conv1")] == [
        "stage.block1.conv1", "stage.block2.conv1", "stage.block3.conv1", "more4.conv1", "more5.conv1"]
    # each copy's input is the previous copy's output (its last layer)
    assert inputs["stage.block1.conv1"] == ["input"]
    assert inputs["stage.block2.conv1"] == ["stage.block1.add1"]
    assert inputs["stage.block2.add1"] == ["stage.block2.conv2", "stage.block1.add1"]
    assert inputs["more4.conv1"] == ["stage.block3.add1"]
    assert inputs["last"] == ["stage.block3.add1"]   # a use's name means its output
    assert inputs["sum"] == ["last", "more5.add1"]


def test_inputs_may_name_a_use_for_its_output(write):
    path = write("u.yaml", "input: {shape: [2, 6, 6]}\n" + BASIC + """\
layers:
  - {type: basic, name: a, filters: 2}
  - {type: basic, name: b, repeat: 2, filters: 2}
  - {type: add, name: skip, inputs: [a, b]}
  - {type: add, name: skip2, inputs: [skip, b1]}
loss: mse
""")
    spec = netspec.load_spec(path)
    inputs = dict(zip(spec.layer_names, spec.layer_inputs))
    assert inputs["skip"] == ["a.add1", "b2.add1"]
    assert inputs["skip2"] == ["skip", "b1.add1"]
    assert inputs["b1.conv1"] == ["a.add1"]


def test_nested_blocks_scope_names_and_defaults_fill_in(write):
    path = write("n.yaml", """\
input: {shape: [2, 8, 8]}
blocks:
  proj:
    params: {filters: int, stride: {type: int, default: 1}}
    layers:
      - {type: conv2d, name: conv1, filters: $filters, kernel: 3, stride: $stride, pad: 1}
      - {type: conv2d, name: short, inputs: [input], filters: $filters, kernel: 1, stride: $stride}
      - {type: add, inputs: [conv1, short]}
  stage:
    params: {filters: int}
    layers:
      - {type: proj, name: block1, filters: $filters, stride: 2}
      - {type: proj, name: block, repeat: 1, start: 2, filters: $filters}
layers:
  - {type: conv2d, name: stem, filters: 3, kernel: 1}
  - {type: stage, name: stage2, filters: 3}
loss: mse
""")
    model = netspec.compile(path)
    names = model.spec.layer_names
    assert names[1:] == ["stage2.block1.conv1", "stage2.block1.short", "stage2.block1.add1",
                         "stage2.block2.conv1", "stage2.block2.short", "stage2.block2.add1"]
    shapes = {l.name: l.out_shape for l in model.layers}
    assert shapes["stage2.block1.conv1"] == (3, 4, 4)   # stride 2, given by the stage
    assert shapes["stage2.block2.conv1"] == (3, 4, 4)   # stride 1: the default
    assert model.layers[2].spec.stride == 2 and model.layers[5].spec.stride == 1
    inputs = dict(zip(names, model.spec.layer_inputs))
    assert inputs["stage2.block1.short"] == ["stem"]
    assert inputs["stage2.block2.short"] == ["stage2.block1.add1"]


def test_a_parameter_may_choose_a_layer_type(write):
    path = write("t.yaml", """\
input: {shape: [4]}
blocks:
  mlp:
    params: {units: int, act: {type: str, default: relu}}
    layers:
      - {type: dense, name: fc, units: $units}
      - {type: $act, name: act}
layers:
  - {type: mlp, units: 5}
  - {type: mlp, units: 3, act: tanh}
loss: mse
""")
    spec = netspec.load_spec(path)
    assert spec.layer_names == ["mlp1.fc", "mlp1.act", "mlp2.fc", "mlp2.act"]
    assert [l.type for l in spec.layers] == ["dense", "relu", "dense", "tanh"]


def test_a_dict_with_blocks_expands_through_load_spec():
    """load_spec is the one way in: a dict gets its blocks expanded like a file; NetSpec itself
    validates flat specs only, and names the block use it cannot read as a layer."""
    data = yaml.safe_load("input: {shape: [2, 6, 6]}\n" + BASIC +
                          "layers:\n  - {type: basic, filters: 2}\nloss: mse\n")
    spec = netspec.load_spec(data)
    assert spec.layer_names == ["basic1.conv1", "basic1.relu1", "basic1.conv2", "basic1.add1"]
    assert netspec.compile(spec).output_shape == (2, 6, 6)
    with pytest.raises(ValidationError, match="'basic'"):
        NetSpec.model_validate(data)


def test_includes_are_relative_to_the_including_file_and_a_diamond_is_read_once(write, tmp_path):
    (tmp_path / "lib").mkdir()
    write("lib/base.yaml", BASIC)
    write("lib/left.yaml", "include: [base.yaml]\nblocks:\n  left: {layers: [{type: basic, filters: 2}]}\n")
    write("lib/right.yaml", "include: [base.yaml]\nblocks:\n  right: {layers: [{type: basic, filters: 2}]}\n")
    path = write("main.yaml", """\
input: {shape: [2, 6, 6]}
include: [lib/left.yaml, lib/right.yaml]
layers:
  - {type: left, name: l}
  - {type: right, name: r}
loss: mse
""")
    spec = netspec.load_spec(path)
    assert spec.layer_names[:2] == ["l.basic1.conv1", "l.basic1.relu1"]
    assert spec.layer_names[-1] == "r.basic1.add1"


def test_the_resnet_spec_is_short_and_has_eight_residual_blocks():
    text = RESNET.read_text()
    assert len(text.splitlines()) < 60
    spec = netspec.load_spec(RESNET)
    adds = [n for n, l in zip(spec.layer_names, spec.layers) if l.type == "add"]
    assert adds == [f"stage1.block{i}.add" for i in (1, 2, 3)] + [f"stage2.block{i}.add" for i in (1, 2, 3)] + \
        [f"stage3.block{i}.add" for i in (1, 2)]
    model = netspec.compile(spec)
    assert sum(p.size for p in model.params.values()) == 788_586
    assert model.layers[spec.layer_names.index("stage2.block1.conv1")].out_shape == (64, 7, 7)
    assert model.layers[spec.layer_names.index("stage3.block1.proj")].out_shape == (128, 4, 4)


def test_expand_round_trips(tmp_path, capsys):
    assert main(["expand", str(RESNET)]) == 0
    once = capsys.readouterr().out
    (tmp_path / "flat.yaml").write_text(once)
    assert main(["expand", str(tmp_path / "flat.yaml")]) == 0
    twice = capsys.readouterr().out
    assert yaml.safe_load(once) == yaml.safe_load(twice)
    strip = lambda t: [l for l in t.splitlines() if not l.lstrip().startswith("#")]
    assert strip(once) == strip(twice)
    a, b = netspec.compile(RESNET), netspec.compile(tmp_path / "flat.yaml")
    assert params(a) == params(b) and list(a.params) == list(b.params)
    assert a.spec.layer_inputs == b.spec.layer_inputs
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    # the JSON form is the same data
    assert main(["expand", "--json", str(RESNET)]) == 0
    assert json.loads(capsys.readouterr().out) == yaml.safe_load(once)


def test_expand_fills_every_default_and_notes_where_each_layer_came_from():
    flat, origins = expanded(RESNET)
    assert "blocks" not in flat and "include" not in flat
    assert flat["train"]["optimizer"]["momentum"] == 0.9
    conv = next(l for l in flat["layers"] if l["name"] == "stage3.block1.proj")
    assert conv == {"name": "stage3.block1.proj", "inputs": ["stage2.block3.out"], "type": "conv2d",
                    "filters": 128, "kernel": [1, 1], "stride": 2, "pad": 0, "bias": False,
                    "init": None, "bias_init": None}
    lines = RESNET.read_text().splitlines()
    body = next(i for i, l in enumerate(lines, 1) if "name: proj," in l)
    use_down = next(i for i, l in enumerate(lines, 1) if "{type: down, name: block1" in l)
    use_stage3 = next(i for i, l in enumerate(lines, 1) if "name: stage3" in l)
    text = to_yaml(flat, origins, str(RESNET))
    before = text.splitlines()[text.splitlines().index("  - " + yaml.safe_dump(
        {"type": "conv2d", **conv}, default_flow_style=True, sort_keys=False, width=10**6).strip()) - 1]
    assert before == (f"  # {RESNET}:{body}: block down, used at {RESNET}:{use_down} in block stage, "
                      f"used at {RESNET}:{use_stage3}")


def test_summary_uses_scoped_names(capsys):
    assert main(["summary", "--json", str(RESNET)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [l["name"] for l in s["layers"]][4:7] == ["stage1.block1.conv1", "stage1.block1.bn1",
                                                    "stage1.block1.relu1"]


def test_schema_covers_blocks_include_and_block_uses():
    schema = json_schema()
    assert schema["properties"]["include"]["items"] == {"type": "string"}
    block = schema["$defs"]["BlockDef"]
    assert set(block["properties"]) == {"description", "params", "layers"}
    use = schema["$defs"]["BlockUse"]
    assert set(use["properties"]) == {"type", "name", "inputs", "repeat", "start"}
    assert use["additionalProperties"] is True and "conv2d" in use["properties"]["type"]["not"]["enum"]
    assert {"$ref": "#/$defs/BlockUse"} in schema["properties"]["layers"]["items"]["anyOf"]
    assert block["properties"]["layers"]["items"] == schema["properties"]["layers"]["items"]
    assert set(schema["$defs"]["ParamDecl"]["properties"]["type"]["enum"]) == {"int", "float", "bool", "str", "list"}


# --- errors: the file, line and column where the mistake was written ------------------

LIB = """\
blocks:
  basic:
    params: {filters: int}
    layers:
      - {type: conv2d, name: conv1, filters: $filters, kernel: 3, pad: 1}
      - {type: relu}
      - {type: add, inputs: [relu1, inptu]}
"""


def use(write, line, lib=LIB, shape="[1, 8, 8]"):
    write("lib.yaml", lib)
    return write("s.yaml", f"input: {{shape: {shape}}}\ninclude: [lib.yaml]\nlayers:\n  - {line}\nloss: mse\n")


def test_unknown_parameter_points_at_the_use_and_suggests(write):
    path = use(write, "{type: basic, filtres: 4}")
    assert spec_error(path) == (f"{path}:4:19: layers[0].filtres: unknown parameter 'filtres' of block 'basic'; "
                                "did you mean 'filters'? (its parameters: filters)")


def test_missing_parameter(write):
    path = use(write, "{type: basic, name: b}")
    assert spec_error(path) == f"{path}:4:5: layers[0]: block 'basic' needs parameter 'filters'"


def test_argument_of_the_wrong_type_points_at_the_argument(write):
    path = use(write, "{type: basic, filters: 4.5}")
    assert spec_error(path) == (f"{path}:4:28: layers[0].filters: parameter 'filters' of block 'basic' "
                                "must be an integer, got 4.5")


def test_a_bad_value_passed_through_a_parameter_points_at_the_use(write):
    lib = LIB.replace("relu1, inptu", "relu1, input")
    path = use(write, "{type: basic, filters: 0}", lib=lib)
    assert spec_error(path) == f"{path}:4:28: basic1.conv1.filters: must be > 0 (got 0)"


def test_a_bad_value_in_the_body_points_at_the_block_file(write, tmp_path):
    lib = LIB.replace("relu1, inptu", "relu1, input").replace("pad: 1", "pad: -1")
    path = use(write, "{type: basic, filters: 1}", lib=lib)
    assert spec_error(path) == f"{tmp_path / 'lib.yaml'}:5:72: basic1.conv1.pad: must be >= 0 (got -1)"


def test_bad_inputs_name_inside_a_block_points_at_the_block_body(write, tmp_path):
    path = use(write, "{type: basic, filters: 1}")
    assert spec_error(path) == (
        f"{tmp_path / 'lib.yaml'}:7:37: blocks.basic.layers[2].inputs[1]: unknown input 'inptu' inside block "
        "'basic'; did you mean 'input'? (known here: conv1, relu1, input)")


def test_a_block_cannot_see_the_layers_outside_it(write, tmp_path):
    lib = LIB.replace("relu1, inptu", "relu1, stem")
    write("lib.yaml", lib)
    path = write("s.yaml", "input: {shape: [1, 8, 8]}\ninclude: [lib.yaml]\nlayers:\n"
                           "  - {type: relu, name: stem}\n  - {type: basic, filters: 1}\nloss: mse\n")
    assert spec_error(path).endswith("unknown input 'stem' inside block 'basic' (known here: conv1, relu1, input)")


def test_shape_error_inside_a_block_names_the_body_and_the_use(write, tmp_path):
    lib = LIB.replace("relu1, inptu", "relu1, input").replace("kernel: 3, pad: 1", "kernel: 9")
    path = use(write, "{type: basic, name: b, filters: 1}", lib=lib)
    with pytest.raises(netspec.ShapeError) as e:
        netspec.compile(path)
    assert str(e.value).startswith(
        f"{tmp_path / 'lib.yaml'}:5:9: b.conv1 (in block 'basic' used at {path}:4): layer 'b.conv1' (conv2d) "
        "receives [1, 8, 8] from 'input': kernel 9x9 is larger than the padded input 8x8")


def test_include_cycle_shows_the_chain(write):
    write("x.yaml", "include: [y.yaml]\n")
    y = write("y.yaml", "include: [x.yaml]\n")
    path = write("s.yaml", "input: {shape: [2]}\ninclude: [x.yaml]\nlayers: [{type: relu}]\nloss: mse\n")
    d = path.parent
    assert spec_error(path) == (f"{y}:1:11: include[0]: include cycle: {path} -> {d / 'x.yaml'} -> "
                                f"{d / 'y.yaml'} -> {d / 'x.yaml'}")


def test_a_file_including_itself_is_a_cycle(write):
    path = write("s.yaml", "input: {shape: [2]}\ninclude: [s.yaml]\nlayers: [{type: relu}]\nloss: mse\n")
    assert spec_error(path) == f"{path}:2:11: include[0]: include cycle: {path} -> {path}"


def test_missing_include_file(write, tmp_path):
    path = write("s.yaml", "input: {shape: [2]}\ninclude: [lib/nope.yaml]\nlayers: [{type: relu}]\nloss: mse\n")
    assert spec_error(path) == (f"{path}:2:11: include[0]: include file not found: 'lib/nope.yaml' "
                                f"(looked for {tmp_path / 'lib' / 'nope.yaml'})")


def test_missing_include_deeper_down_shows_the_chain(write, tmp_path):
    a = write("a.yaml", "include: [gone.yaml]\n")
    path = write("s.yaml", "input: {shape: [2]}\ninclude: [a.yaml]\nlayers: [{type: relu}]\nloss: mse\n")
    assert spec_error(path) == (f"{a}:1:11: include[0]: include file not found: 'gone.yaml' "
                                f"(looked for {tmp_path / 'gone.yaml'}) (included via {path} -> {a})")


def test_a_block_defined_twice_is_a_clash(write, tmp_path):
    write("lib.yaml", BASIC)
    path = write("s.yaml", "input: {shape: [2, 6, 6]}\ninclude: [lib.yaml]\n" + BASIC +
                 "layers: [{type: basic, filters: 1}]\nloss: mse\n")
    assert spec_error(path) == (f"{path}:4:3: blocks.basic: block 'basic' is defined twice: here, and at "
                                f"{tmp_path / 'lib.yaml'}:2 (included via {path} -> {tmp_path / 'lib.yaml'})")


def test_block_names_and_parameter_names_that_are_taken(write):
    path = write("s.yaml", "input: {shape: [2]}\nblocks:\n  relu: {layers: [{type: tanh}]}\n"
                           "layers: [{type: relu}]\nloss: mse\n")
    assert spec_error(path) == (f"{path}:3:3: blocks.relu: block 'relu' has the name of a layer type; "
                                "choose another name")
    path = write("s.yaml", "input: {shape: [2]}\nblocks:\n  b: {params: {repeat: int}, layers: [{type: tanh}]}\n"
                           "layers: [{type: b, repeat: 2}]\nloss: mse\n")
    assert spec_error(path) == (f"{path}:3:16: blocks.b.params.repeat: 'repeat' cannot be a parameter name: "
                                "it is a key of every block use (type, name, inputs, repeat, start)")


def test_unknown_dollar_name_in_a_body_and_a_block_using_itself(write):
    path = write("s.yaml", "input: {shape: [2]}\nblocks:\n  b:\n    params: {units: int}\n"
                           "    layers: [{type: dense, units: $unit}]\nlayers: [{type: b, units: 2}]\nloss: mse\n")
    assert spec_error(path) == (f"{path}:5:35: blocks.b.layers[0].units: unknown parameter '$unit' in block 'b'; "
                                "did you mean '$units'? (its parameters: $units)")
    path = write("s.yaml", "input: {shape: [2]}\nblocks:\n  a: {layers: [{type: b}]}\n  b: {layers: [{type: a}]}\n"
                           "layers: [{type: a}]\nloss: mse\n")
    assert spec_error(path) == f"{path}:4:16: blocks.b.layers[0]: block 'a' uses itself: a -> b -> a"


def test_typos_in_block_definitions_and_the_default_type(write):
    path = write("s.yaml", "input: {shape: [2]}\nblcoks: {}\nlayers: [{type: relu}]\nloss: mse\n")
    assert spec_error(path) == f"{path}:2:1: blcoks: unknown key 'blcoks'; did you mean 'blocks'?"
    path = write("s.yaml", "input: {shape: [2]}\nblocks:\n  b: {parmas: {}, layers: [{type: tanh}]}\n"
                           "layers: [{type: b}]\nloss: mse\n")
    assert spec_error(path) == f"{path}:3:7: blocks.b.parmas: unknown key 'parmas'; did you mean 'params'?"
    path = write("s.yaml", "input: {shape: [2]}\nblocks:\n  b:\n    params: {n: {type: int, default: two}}\n"
                           "    layers: [{type: tanh}]\nlayers: [{type: b}]\nloss: mse\n")
    assert spec_error(path) == (f"{path}:4:38: blocks.b.params.n.default: default of parameter 'n' must be "
                                "an integer, got 'two'")


def test_a_runaway_repeat_is_refused_before_anything_is_copied(write):
    """repeat: 10**7 cost 800 MB and 3 s before the limit was checked, 10**9 a MemoryError."""
    for repeat in (1_000_000, 10**9):
        path = write("s.yaml", "input: {shape: [2]}\nblocks:\n  b: {layers: [{type: tanh}]}\n"
                               f"layers: [{{type: b, repeat: {repeat}}}]\nloss: mse\n")
        start = time.process_time()
        assert spec_error(path) == (f"{path}:4:28: layers[0].repeat: repeat {repeat} of block 'b' (1 layers each) "
                                    "expands to more than 10,000 layers")
        assert time.process_time() - start < 1
    # many small uses that add up still stop at the limit, at the layer that crosses it
    path = write("s.yaml", "input: {shape: [2]}\nblocks:\n  b: {layers: [{type: tanh}]}\n"
                           "layers: [{type: b, repeat: 9000}, {type: b, repeat: 9000}]\nloss: mse\n")
    assert spec_error(path) == (f"{path}:4:53: layers[1].repeat: repeat 9000 of block 'b' (1 layers each) "
                                "expands to more than 10,000 layers")


def test_blocks_nested_too_deep_are_refused_without_a_recursion_error(write):
    """Blocks nested about 330 deep exhausted Python's stack (RecursionError traceback)."""
    defs = "".join(f"  b{k}: {{layers: [{{type: {'b' + str(k + 1) if k < 399 else 'tanh'}}}]}}\n" for k in range(400))
    path = write("s.yaml", f"input: {{shape: [2]}}\nblocks:\n{defs}layers: [{{type: b0}}]\nloss: mse\n")
    chain = " -> ".join(f"b{k}" for k in range(33))
    assert spec_error(path) == (f"{path}:34:18: blocks.b31.layers[0]: blocks are used inside blocks more than 32 "
                                f"deep: {chain}")


def test_cli_exits_2_without_traceback_for_block_errors(write, capsys):
    path = use(write, "{type: basic, filtres: 4}")
    assert main(["expand", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'filtres'" in err and "Traceback" not in err


def test_an_expansion_that_would_copy_millions_of_values_is_refused_first():
    """A body layer with 100,000 explicit init values at repeat 1,000 needed over 4 GB (and at
    repeat 50, 1.2 GB and 12 s) before validation saw it."""
    values = [[0.25]] * 100_000
    spec = {"blocks": {"b": {"layers": [{"type": "dense", "units": 1, "init": {"values": values}}]}},
            "input": {"shape": [100_000]}, "layers": [{"type": "b", "repeat": 1000}], "loss": "mse"}
    start = time.process_time()
    with pytest.raises(SpecError) as exc:
        netspec.load_spec(spec)
    assert time.process_time() - start < 5
    assert str(exc.value) == ("<dict>: layers[0]: block 'b' (100,002 values) used 1,000 times here takes the "
                              "expanded spec past 5,000,000 values")
