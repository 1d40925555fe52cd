"""Broken specs and the exact errors people get: file, line, column, key path, message.

Each spec is written to a tmp file, so messages are asserted with the file name
in them, exactly as ``netspec validate`` prints them.
"""
import pytest

import netspec
from netspec import NetspecError, ShapeError, SpecError

KNOWN = ("add, affine, avgpool2d, batchnorm, concat, conv2d, dense, dropout, flatten, globalavgpool2d, "
         "maxpool2d, relu, sigmoid, softmax, tanh")


def spec_error(path):
    with pytest.raises(SpecError) as info:
        netspec.compile(netspec.load_spec(path))
    return info.value


def shape_error(path):
    with pytest.raises(ShapeError) as info:
        netspec.compile(netspec.load_spec(path))
    return info.value


def test_error_types_are_value_errors():
    for cls in (SpecError, ShapeError):
        assert issubclass(cls, NetspecError)
        assert issubclass(cls, ValueError)


def test_typo_names_position_path_and_suggestion_only(write_spec):
    path = write_spec(
        "netspec: 1\n"
        "input: {shape: [1, 8, 8]}\n"
        "layers:\n"
        "  - type: conv2d\n"
        "    filtres: 30\n"
        "    kernel: 3\n"
        "  - {type: relu}\n"
        "loss: softmax_cross_entropy\n")
    err = spec_error(path)
    # one issue: the typo, not also "missing required key 'filters'"
    assert err.issues == [{"file": str(path), "line": 5, "column": 5, "path": "layers[0].filtres",
                           "message": "unknown key 'filtres'; did you mean 'filters'?"}]
    assert str(err) == f"{path}:5:5: layers[0].filtres: unknown key 'filtres'; did you mean 'filters'?"


def test_wrong_type(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense, units: abc}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:3:26: layers[0].units: expected an integer, got 'abc'"


def test_out_of_range(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - type: dense\n    units: -4\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:4:12: layers[0].units: must be > 0 (got -4)"


def test_missing_required_key_points_at_its_layer(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:3:5: layers[0].units: missing required key 'units'"


def test_unknown_layer_type_lists_known_and_suggests(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense, units: 3}\n  - {type: reluu}\nloss: mse\n")
    assert str(spec_error(path)) == (
        f"{path}:4:5: layers[1]: unknown layer type 'reluu'; did you mean 'relu'? (known: {KNOWN})")


def test_unknown_layer_type_without_close_match(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: lstm}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:3:5: layers[0]: unknown layer type 'lstm' (known: {KNOWN})"


def test_layer_without_type(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {units: 3}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:3:5: layers[0]: missing key 'type'; expected one of: {KNOWN}"


def test_unknown_loss(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense, units: 3}\nloss: cross_entropy\n")
    assert str(spec_error(path)) == (
        f"{path}:4:7: loss: expected 'softmax_cross_entropy', 'mse' or 'sse', got 'cross_entropy'; "
        "did you mean 'softmax_cross_entropy'?")


def test_duplicate_layer_names(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n"
                      "  - {type: dense, name: fc, units: 3}\n"
                      "  - {type: dense, name: fc, units: 2}\nloss: mse\n")
    err = spec_error(path)
    assert err.issues == [{"file": str(path), "line": 4, "column": 25, "path": "layers[1].name",
                           "message": "duplicate layer name 'fc' (also layers[0])"}]


def test_generated_name_never_collides_with_a_given_one(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n"
                      "  - {type: dense, units: 3}\n"
                      "  - {type: dense, name: dense1, units: 2}\nloss: mse\n")
    assert netspec.load_spec(path).layer_names == ["dense2", "dense1"]


def test_inputs_referencing_later_and_unknown_layers(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n"
                      "  - {type: dense, units: 4}\n"
                      "  - {type: relu, inputs: [later]}\n"
                      "  - {type: relu, name: later, inputs: [dense]}\nloss: mse\n")
    assert str(spec_error(path)) == (
        f"{path}:4:27: layers[1].inputs[0]: unknown input 'later' (it comes later: layers run in file order)\n"
        f"{path}:5:40: layers[2].inputs[0]: unknown input 'dense'; did you mean 'dense1'?")


def test_single_input_layer_given_two_inputs(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense, units: 4}\n"
                      "  - {type: relu, inputs: [input, dense1]}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:4:26: layers[1].inputs: layer type 'relu' takes 1 input, got 2"


def test_input_is_a_reserved_name(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense, name: input, units: 2}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:3:25: layers[0].name: 'input' is reserved for the network input"


def test_duplicate_yaml_key(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - type: dense\n    units: 3\n    units: 4\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:5:5: layers[0].units: duplicate key 'units' (first given on line 4)"


def test_malformed_yaml_has_line_and_column(write_spec):
    path = write_spec("input: {shape: [4]\nlayers: []\n")
    err = spec_error(path)
    assert str(err) == (f"{path}:2:1: invalid YAML: while parsing a flow mapping "
                        "expected ',' or '}', but got '<scalar>'")
    assert (err.issues[0]["line"], err.issues[0]["column"]) == (2, 1)


def test_bad_indentation_yaml(write_spec):
    path = write_spec("input:\n  shape: [4]\n layers: []\n")
    err = spec_error(path)
    assert (err.issues[0]["line"], err.issues[0]["column"]) == (3, 2)
    assert err.issues[0]["message"].startswith("invalid YAML: ")


def test_malformed_json_has_line_and_column(write_spec):
    path = write_spec('{"input": {"shape": [4]},\n "layers": [{"type": "dense" "units": 3}]}\n', "spec.json")
    assert str(spec_error(path)) == f"{path}:2:30: invalid JSON: Expecting ',' delimiter"


def test_json_typo_has_positions_too(write_spec):
    path = write_spec('{"input": {"shape": [4]},\n'
                      ' "layers": [{"type": "dense", "units": 3},\n'
                      '            {"type": "dense", "unitz": 2}],\n'
                      ' "loss": "mse"}\n', "spec.json")
    assert str(spec_error(path)) == f"{path}:3:31: layers[1].unitz: unknown key 'unitz'; did you mean 'units'?"


def test_all_errors_of_a_file_at_once(write_spec):
    path = write_spec("input: {shape: [4]}\n"
                      "layers:\n"
                      "  - {type: dense, units: abc}\n"
                      "  - {type: dense, units: -4, bias: maybe}\n"
                      "  - {type: densse, units: 3}\n"
                      "loss: mse\n"
                      "seed: -1\n")
    assert str(spec_error(path)).splitlines() == [
        f"{path}:3:26: layers[0].units: expected an integer, got 'abc'",
        f"{path}:4:26: layers[1].units: must be > 0 (got -4)",
        f"{path}:4:36: layers[1].bias: expected true or false, got 'maybe'",
        f"{path}:5:5: layers[2]: unknown layer type 'densse'; did you mean 'dense'? (known: {KNOWN})",
        f"{path}:7:7: seed: must be >= 0 (got -1)",
    ]


def test_top_level_must_be_a_mapping(write_spec):
    path = write_spec("- type: dense\n- type: relu\n")
    assert str(spec_error(path)) == f"{path}:1:1: a spec must be a mapping of keys, got a list"


def test_empty_file(write_spec):
    path = write_spec("")
    assert str(spec_error(path)) == f"{path}: a spec must be a mapping of keys, got nothing"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert str(spec_error(path)) == f"{path}: spec file not found: {path}"


def test_unknown_format_version(write_spec):
    path = write_spec("netspec: 2\ninput: {shape: [4]}\nlayers:\n  - {type: dense, units: 2}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:1:10: netspec: expected 1, got 2"


def test_python_tag_cannot_run_code(write_spec, tmp_path):
    marker = tmp_path / "ran"
    path = write_spec("input: {shape: !!python/object/apply:os.system [\"touch " + str(marker) + "\"]}\n"
                      "layers:\n  - {type: dense, units: 2}\nloss: mse\n")
    assert str(spec_error(path)) == (
        f"{path}:1:16: input.shape: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not "
        "allowed: a spec holds only mappings, lists, strings, numbers and booleans")
    assert not marker.exists()


@pytest.mark.parametrize("value", ["!!python/name:os.system ''", "!!set {a, b}", "!local 3",
                                   "!!python/object/new:dict {}"])
def test_any_non_plain_tag_is_refused(write_spec, value):
    path = write_spec(f"input: {{shape: [4]}}\nlayers:\n  - {{type: dense, units: 2, init: {value}}}\nloss: mse\n")
    err = spec_error(path)
    assert [(i["line"], i["column"], i["path"]) for i in err.issues] == [(3, 35, "layers[0].init")]
    assert "is not allowed: a spec holds only mappings, lists, strings, numbers and booleans" in str(err)


# --- shapes ----------------------------------------------------------------

def test_kernel_larger_than_input(write_spec):
    path = write_spec("input: {shape: [1, 5, 5]}\nlayers:\n"
                      "  - {type: conv2d, name: big, filters: 2, kernel: 7}\n"
                      "  - {type: dense, units: 2}\nloss: mse\n")
    assert str(shape_error(path)) == (
        f"{path}:3:5: layers[0]: layer 'big' (conv2d) receives [1, 5, 5] from 'input': "
        "kernel 7x7 is larger than the padded input 5x5 (output height = (5 + 2*0 - 7) / 1 + 1 = -1 < 1)")


def test_non_integer_conv_output(write_spec):
    path = write_spec("input: {shape: [1, 6, 6]}\nlayers:\n"
                      "  - {type: dense, units: 36}\n"
                      "  - {type: conv2d, filters: 2, kernel: 3, stride: 2}\nloss: mse\n")
    # dense outputs a vector: the conv sees [36], not an image
    assert str(shape_error(path)) == (
        f"{path}:4:5: layers[1]: layer 'conv1' (conv2d) receives [36] from 'dense1': "
        "expects input shaped (C, H, W), got [36]")


def test_conv_output_size_floors_like_pytorch(write_spec):
    """A stride that does not tile the padded input drops the last row/column, as PyTorch and ONNX do."""
    path = write_spec("input: {shape: [1, 6, 7]}\nlayers:\n"
                      "  - {type: conv2d, filters: 2, kernel: 3, stride: 2, pad: 1}\n"
                      "  - {type: conv2d, filters: 2, kernel: 1, stride: 2}\nloss: mse\n")
    model = netspec.compile(netspec.load_spec(path))
    # (6 + 2 - 3) // 2 + 1 = 3, (7 + 2 - 3) // 2 + 1 = 4; then (3 - 1) // 2 + 1 = 2, (4 - 1) // 2 + 1 = 2
    assert [layer.out_shape for layer in model.layers] == [(2, 3, 4), (2, 2, 2)]


def test_explicit_values_of_the_wrong_shape(write_spec):
    path = write_spec("input: {shape: [2]}\nlayers:\n"
                      "  - {type: dense, units: 2, init: {values: [[1, 2, 3], [4, 5, 6]]}}\nloss: mse\n")
    assert str(shape_error(path)) == (
        f"{path}:3:5: layers[0] ('dense1').W: explicit values have shape [2, 3], "
        "but the parameter is shaped [2, 2]")


def test_ragged_explicit_values(write_spec):
    path = write_spec("input: {shape: [2]}\nlayers:\n"
                      "  - {type: dense, units: 2, bias_init: {values: [[1], [2, 3]]}}\nloss: mse\n")
    assert str(shape_error(path)) == (
        f"{path}:3:5: layers[0] ('dense1').b: explicit values must be a rectangular nested list of numbers")


def test_output_never_used(write_spec):
    path = write_spec("input: {shape: [2]}\nlayers:\n"
                      "  - {type: dense, units: 2}\n"
                      "  - {type: relu}\n"
                      "  - {type: dense, units: 2, inputs: [dense1]}\nloss: mse\n")
    with pytest.raises(netspec.SpecError) as exc:
        netspec.load_spec(path)
    assert str(exc.value) == (
        f"{path}:4:5: layers[1]: the output of layer 'relu1' is never used "
        "(no later layer takes it as input); every layer but the last must feed another")


def test_add_of_mismatched_shapes(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n"
                      "  - {type: dense, units: 3}\n"
                      "  - {type: add, inputs: [input, dense1]}\nloss: mse\n")
    assert str(shape_error(path)) == (
        f"{path}:4:5: layers[1]: layer 'add1' (add) receives [4] from 'input', [3] from 'dense1': "
        "cannot add input 'dense1' shaped [3] to 'input' shaped [4]")


def test_classification_loss_needs_vector_output(write_spec):
    path = write_spec("input: {shape: [1, 4, 4]}\nlayers:\n  - {type: relu}\nloss: softmax_cross_entropy\n")
    assert str(shape_error(path)) == (
        f"{path}:3:5: layers[0]: loss 'softmax_cross_entropy' needs a vector of class scores per sample, "
        "but the last layer outputs [1, 4, 4]")


def test_dict_specs_have_paths_without_positions():
    spec = {"input": {"shape": [4]}, "layers": [{"type": "dense", "units": 0}], "loss": "mse"}
    with pytest.raises(SpecError) as info:
        netspec.load_spec(spec)
    assert info.value.issues == [{"file": "<dict>", "line": None, "column": None,
                                  "path": "layers[0].units", "message": "must be > 0 (got 0)"}]
    assert str(info.value) == "<dict>: layers[0].units: must be > 0 (got 0)"


def test_typo_inside_a_short_form_init(write_spec):
    # init: {std: ...} is the short form of {type: normal, std: ...}: the path has no 'normal' in it
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense, units: 2, init: {std: 0.1, meen: 0}}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:3:46: layers[0].init.meen: unknown key 'meen'; did you mean 'mean'?"


def test_unknown_init_lists_the_known_ones(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n  - {type: dense, units: 2, init: hee}\nloss: mse\n")
    assert str(spec_error(path)) == (f"{path}:3:35: layers[0].init: unknown type 'hee'; did you mean 'he'? "
                                     "(known: normal, he, xavier, zeros, constant, values)")


def test_kernel_list_too_short(write_spec):
    path = write_spec("input: {shape: [1, 5, 5]}\nlayers:\n  - {type: conv2d, filters: 2, kernel: [3]}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:3:40: layers[0].kernel[1]: too few items: item 1 is missing"


def test_rectangular_pool_window_needs_a_stride(write_spec):
    path = write_spec("input: {shape: [1, 4, 9]}\nlayers:\n  - {type: maxpool2d, size: [2, 3]}\nloss: mse\n")
    assert str(spec_error(path)) == f"{path}:3:5: layers[0]: a rectangular window [2, 3] needs an explicit stride"


@pytest.mark.parametrize("line,col,path,got", [
    ("  - {type: conv2d, filters: yes, kernel: 3}", 29, "layers[0].filters", "True"),
    ("  - {type: conv2d, filters: 2, kernel: [3, true]}", 44, "layers[0].kernel[1]", "True"),
    ("  - {type: conv2d, filters: 2, kernel: 3, stride: 2.0}", 51, "layers[0].stride", "2.0"),
    ("  - {type: conv2d, filters: '2', kernel: 3}", 29, "layers[0].filters", "'2'"),
])
def test_booleans_floats_and_strings_are_not_integers(write_spec, line, col, path, got):
    # YAML 1.1 reads yes/true as booleans; Pydantic's lax mode would make them 1
    spec = write_spec(f"input: {{shape: [1, 6, 6]}}\nlayers:\n{line}\nloss: mse\n")
    if got.startswith("'"):  # a quoted number: said to be a string
        got = f"the string {got} (values are never read from strings: remove the quotes)"
    assert str(spec_error(spec)) == f"{spec}:3:{col}: {path}: expected an integer, got {got}"


def test_duplicate_json_key(write_spec):
    # json.loads would keep the last value silently
    path = write_spec('{"input": {"shape": [4]},\n "layers": [{"type": "dense", "units": 3,\n'
                      '             "units": 4}],\n "loss": "mse"}\n', "spec.json")
    assert str(spec_error(path)) == f"{path}:3:14: layers[0].units: duplicate key 'units' (first given on line 2)"


def test_yaml_alias_bomb_is_refused_quickly(write_spec):
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]   # 10**9 values
    path = write_spec("\n".join(lines) + "\ninput: {shape: [4]}\nlayers: [{type: dense, units: 2}]\nloss: mse\n")
    err = spec_error(path)
    assert [i["message"] for i in err.issues] == ["YAML aliases expand to more than 100,000 values"]
    assert err.issues[0]["path"].startswith("a4[")


def test_aliases_and_merge_keys_still_work(write_spec):
    path = write_spec("input: {shape: [4]}\nlayers:\n"
                      "  - &fc {type: dense, units: 3, init: {std: 0.5}}\n"
                      "  - {<<: *fc, name: second}\nloss: mse\n")
    spec = netspec.load_spec(path)
    assert spec.layer_names == ["dense1", "second"]
    assert spec.layers[1].init.std == 0.5


@pytest.mark.parametrize("init,path,message", [
    ("{std: .inf}", "layers[0].init.std", "must be a finite number (got inf)"),
    ("{type: constant, value: .nan}", "layers[0].init.value", "must be a finite number (got nan)"),
    ("{values: [[1, '2'], [3, 4]]}", "layers[0].init.values", "explicit values must be numbers, got '2' at values[0][1]"),
    ("{values: [[1, 2], [true, 4]]}", "layers[0].init.values", "explicit values must be numbers, got True at values[1][0]"),
    ("{values: [[1, .nan], [3, 4]]}", "layers[0].init.values", "explicit values must be finite, got nan at values[0][1]"),
    ("{values: abc}", "layers[0].init.values",
     "explicit values must be a number or nested lists of numbers (got 'abc')"),
])
def test_init_numbers_must_be_finite_numbers(write_spec, init, path, message):
    spec = write_spec(f"input: {{shape: [2]}}\nlayers:\n  - {{type: dense, units: 2, init: {init}}}\nloss: mse\n")
    err = spec_error(spec)
    assert [(i["path"], i["message"]) for i in err.issues] == [(path, message)]


def test_concat_of_mismatched_images(write_spec):
    path = write_spec("input: {shape: [1, 6, 6]}\nlayers:\n"
                      "  - {type: maxpool2d, size: 2}\n"
                      "  - {type: concat, inputs: [input, pool1]}\n  - {type: flatten}\nloss: mse\n")
    assert str(shape_error(path)) == (
        f"{path}:4:5: layers[1]: layer 'concat1' (concat) receives [1, 6, 6] from 'input', [1, 3, 3] from 'pool1': "
        "input 'pool1' shaped [1, 3, 3] does not match [1, 6, 6] outside the channel axis")


@pytest.mark.parametrize("field,value,wanted", [
    ('"lr": "0.1"', "'0.1'", "a number"),
    ('"units": "10"', "'10'", "an integer"),
    ('"flatten": "yes"', "'yes'", "true or false"),
])
def test_numbers_and_booleans_are_never_read_from_strings(write_spec, field, value, wanted):
    """One rule for every key: a quoted number or word is a string, and a string is an error."""
    dense = '{"type": "dense", "units": 2}'
    data = '{"source": "mnist-5k"}'
    opt = '{"type": "sgd", "lr": 0.1}'
    if field.startswith('"units"'):
        dense = '{"type": "dense", ' + field + '}'
    elif field.startswith('"lr"'):
        opt = '{"type": "sgd", ' + field + '}'
    else:
        data = '{"source": "mnist-5k", ' + field + '}'
    text = ('{"input": {"shape": [1, 28, 28]}, "loss": "softmax_cross_entropy", "layers": [' + dense + '],\n'
            ' "train": {"data": ' + data + ', "optimizer": ' + opt + ', "epochs": 1}}\n')
    path = write_spec(text, name="spec.json")
    with pytest.raises(SpecError) as exc:
        netspec.load_spec(path)
    assert f"expected {wanted}, got the string {value} (values are never read from strings" in str(exc.value)
    assert str(exc.value).startswith(f"{path}:")


@pytest.mark.parametrize("name,text", [
    ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"),
    ("deep.json", '{"a": ' + "[" * 100000 + "]" * 100000 + "}"),
    ("nested.yaml", "input: {shape: [2]}\nloss: mse\nlayers: " + "[" * 70 + "]" * 70 + "\n"),
])
def test_deeply_nested_specs_are_a_spec_error(write_spec, name, text):
    """Nesting that would exhaust the recursion limit (or merely absurd nesting) is one clear error."""
    path = write_spec(text, name=name)
    with pytest.raises(SpecError, match=r"levels deep; a spec needs only a few \(at most 64\)"):
        netspec.load_spec(path)


def test_a_spec_that_is_not_utf8_is_a_spec_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(SpecError, match=r"cannot read spec file .*latin1\.json.*utf-8"):
        netspec.load_spec(path)


def test_a_yaml_merge_key_is_overridden_by_keys_written_beside_it(write_spec):
    """`<<: *D` then `name: b` was reported as a duplicate key; PyYAML's rule is that the key
    written in the mapping wins over the merged one. A key written twice is still an error."""
    path = write_spec("input: {shape: [2]}\nlayers:\n  - &D {type: dense, units: 4, name: a}\n"
                      "  - <<: *D\n    name: b\n  - {type: dense, units: 1}\nloss: mse\n")
    spec = netspec.load_spec(path)
    assert spec.layer_names == ["a", "b", "dense1"] and spec.layers[1].units == 4
    assert spec.locate(("layers", 1, "name"))[1:] == (5, 11)
    path = write_spec("input: {shape: [2]}\nlayers:\n  - &D {type: dense, units: 4, name: a}\n"
                      "  - <<: *D\n    name: b\n    name: c\n  - {type: dense, units: 1}\nloss: mse\n")
    with pytest.raises(SpecError) as exc:
        netspec.load_spec(path)
    assert str(exc.value) == f"{path}:6:5: layers[1].name: duplicate key 'name' (first given on line 5)"
