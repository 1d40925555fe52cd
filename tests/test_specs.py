"""The shipped specs, the registry/schema agreement, generated names and dtypes."""
import json
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.gradcheck import check_model, random_batch
from netspec.layers import LAYERS, LOSSES
from netspec.spec import json_schema
from netspec.summary import summarize

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
SEED_SPECS = ["deep_convnet", "forward_example", "function_approx", "mnist_mlp",
              "simple_convnet", "simple_net", "two_layer_net"]
SPEC_NAMES = sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))   # every shipped spec is checked

# per spec: (batch, elements checked per parameter array); the conv nets are sampled thinly to stay fast
GRADCHECK = {"deep_convnet": (2, 10), "deep_convnet_fashion": (1, 4), "deep_convnet_fashion_plus": (2, 4),
             "simple_convnet": (2, 20), "mnist_mlp": (2, 10), "resnet_fashion": (2, 2)}


def _tolerance(model):
    # Batchnorm over a batch of 2 divides by small standard deviations, which magnifies the
    # O(h^2) truncation error of central differences to ~1e-6; `netspec gradcheck` allows 1e-5.
    return 1e-5 if any(l.spec.type == "batchnorm" for l in model.layers) else 1e-6


def test_the_seven_seed_specs_are_shipped():
    assert set(SEED_SPECS) <= set(SPEC_NAMES)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_spec_validates_compiles_and_passes_gradcheck(name):
    model = netspec.compile(netspec.load_spec(SPECS_DIR / f"{name}.yaml"), dtype="float64")
    assert model.dtype == np.float64
    assert all(p.dtype == np.float64 for p in model.params.values())
    n, max_elements = GRADCHECK.get(name, (3, 40))
    x, t = random_batch(model, n=n, seed=1)
    report = check_model(model, x, t, max_elements=max_elements, seed=1)
    assert set(report) == set(model.params)
    tol = _tolerance(model)
    for pname, r in report.items():
        assert r["checked"] > 0, f"{pname}: every sampled element sat on a kink"
        assert r["error"] <= tol, f"{pname}: relative error {r['error']:.2e}"


@pytest.mark.parametrize("name,total", [("simple_convnet", 433890), ("deep_convnet", 123552)])
def test_summary_total_params(name, total):
    s = summarize(netspec.compile(SPECS_DIR / f"{name}.yaml"))
    assert s["total_params"] == total
    assert s["total_params"] == sum(r["params"] for r in s["layers"])


def test_simple_convnet_summary_rows():
    s = summarize(netspec.compile(SPECS_DIR / "simple_convnet.yaml"))
    assert [(r["name"], r["type"], r["output_shape"], r["params"]) for r in s["layers"]] == [
        ("conv1", "conv2d", [30, 24, 24], 30 * 25 + 30),
        ("relu1", "relu", [30, 24, 24], 0),
        ("pool1", "maxpool2d", [30, 12, 12], 0),
        ("affine1", "dense", [100], 4320 * 100 + 100),
        ("relu2", "relu", [100], 0),
        ("affine2", "dense", [10], 1010),
    ]
    # conv: 2 * (C*kh*kw) * FN * OH * OW multiply-adds
    assert s["layers"][0]["flops"] == 2 * 25 * 30 * 24 * 24


def test_forward_example_starts_from_the_explicit_values():
    model = netspec.compile(SPECS_DIR / "forward_example.yaml")
    assert model.dtype == np.float64   # the spec asks for float64
    expected = {
        "hidden.W": [[0.1, 0.2], [0.3, 0.1]], "hidden.b": [0.1, 0.2],
        "output.W": [[0.4, 0.5], [0.1, 0.3]], "output.b": [0.3, 0.4],
    }
    assert set(model.params) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(model.params[k], np.array(v))
    # and the first forward pass is the seed's hand computation
    h = 1 / (1 + np.exp(-(np.array([0.5, 0.8]) @ np.array(expected["hidden.W"]) + [0.1, 0.2])))
    y = 1 / (1 + np.exp(-(h @ np.array(expected["output.W"]) + [0.3, 0.4])))
    np.testing.assert_allclose(model.predict(np.array([[0.5, 0.8]]))[0], y, rtol=1e-15)


def test_registry_and_schema_name_the_same_layer_types():
    schema = json_schema()
    layer, use = schema["properties"]["layers"]["items"]["anyOf"]   # a layer, or a block's use
    assert use == {"$ref": "#/$defs/BlockUse"}
    items = layer
    named = set()
    for ref in items["oneOf"]:
        prop = schema["$defs"][ref["$ref"].split("/")[-1]]["properties"]["type"]
        named.update(prop["enum"] if "enum" in prop else [prop["const"]])
    assert named == set(LAYERS)
    assert set(items["discriminator"]["mapping"]) == set(LAYERS)
    assert set(schema["properties"]["loss"]["enum"]) == set(LOSSES)


def test_schema_forbids_unknown_keys_everywhere():
    schema = json_schema()
    objects = [schema] + [d for k, d in schema["$defs"].items() if d.get("type") == "object" and k != "BlockUse"]
    assert objects and all(d.get("additionalProperties") is False for d in objects)
    # a block's use is the one exception: its extra keys are the block's arguments, checked on expansion
    assert schema["$defs"]["BlockUse"]["additionalProperties"] is True
    json.dumps(schema)   # serialisable


def test_generated_names_count_per_prefix():
    spec = netspec.load_spec({
        "input": {"shape": [1, 8, 8]},
        "layers": [{"type": "conv2d", "filters": 2, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
                   {"type": "relu"}, {"type": "maxpool2d", "size": 2},
                   {"type": "conv2d", "filters": 2, "kernel": 3, "pad": 1}, {"type": "relu"},
                   {"type": "avgpool2d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 4},
                   {"type": "dropout"}, {"type": "tanh"}, {"type": "sigmoid"}, {"type": "affine", "units": 3},
                   {"type": "softmax"}],
        "loss": "mse"})
    assert spec.layer_names == ["conv1", "bn1", "relu1", "pool1", "conv2", "relu2", "avgpool1", "flatten1",
                                "dense1", "dropout1", "tanh1", "sigmoid1", "dense2", "softmax1"]
    model = netspec.compile(spec)
    assert [l.name for l in model.layers] == spec.layer_names
    assert sorted(model.params) == sorted(["conv1.W", "conv1.b", "bn1.gamma", "bn1.beta", "conv2.W", "conv2.b",
                                           "dense1.W", "dense1.b", "dense2.W", "dense2.b"])


def test_given_names_are_kept_and_generated_ones_count_around_them():
    assert netspec.load_spec(SPECS_DIR / "simple_convnet.yaml").layer_names == [
        "conv1", "relu1", "pool1", "affine1", "relu2", "affine2"]


TINY = {"input": {"shape": [3]}, "layers": [{"type": "dense", "units": 2}], "loss": "mse"}


def test_dtype_float32_by_default_and_float64_on_request():
    model = netspec.compile(TINY)
    assert model.dtype == np.float32
    assert {p.dtype for p in model.params.values()} == {np.dtype(np.float32)}
    assert model.predict(np.ones((1, 3))).dtype == np.float32
    assert netspec.compile({**TINY, "dtype": "float64"}).params["dense1.W"].dtype == np.float64
    assert netspec.compile(TINY, dtype="float64").params["dense1.W"].dtype == np.float64
    assert netspec.compile({**TINY, "dtype": "float64"}, dtype="float32").dtype == np.float32


def test_dtype_argument_must_be_floating():
    with pytest.raises(netspec.SpecError, match=r"dtype must be a floating type \(float16, float32, float64\), got int32"):
        netspec.compile(TINY, dtype="int32")


def test_same_seed_same_parameters_different_seed_different():
    a = netspec.compile({**TINY, "seed": 5}).params["dense1.W"]
    b = netspec.compile({**TINY, "seed": 5}).params["dense1.W"]
    c = netspec.compile({**TINY, "seed": 6}).params["dense1.W"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_init_kinds():
    spec = {"input": {"shape": [50]}, "dtype": "float64", "seed": 0, "loss": "mse", "layers": [
        {"type": "dense", "units": 400, "init": "he", "bias_init": 0.5},
        {"type": "dense", "units": 300, "init": "xavier", "bias": False},
        {"type": "dense", "units": 200, "init": {"std": 0.01, "mean": 1.0}, "bias_init": {"type": "zeros"}},
        {"type": "dense", "units": 2, "init": {"type": "constant", "value": -2}},
    ]}
    p = netspec.compile(spec).params
    assert p["dense1.W"].std() == pytest.approx(np.sqrt(2 / 50), rel=0.02)
    np.testing.assert_array_equal(p["dense1.b"], np.full(400, 0.5))
    assert p["dense2.W"].std() == pytest.approx(np.sqrt(1 / 400), rel=0.02)
    assert "dense2.b" not in p
    assert p["dense3.W"].mean() == pytest.approx(1.0, abs=1e-3)
    assert p["dense3.W"].std() == pytest.approx(0.01, rel=0.02)
    np.testing.assert_array_equal(p["dense3.b"], np.zeros(200))
    np.testing.assert_array_equal(p["dense4.W"], np.full((200, 2), -2.0))


def test_json_and_yaml_specs_are_the_same_format(write_spec):
    import yaml
    data = yaml.safe_load((SPECS_DIR / "simple_convnet.yaml").read_text())
    path = write_spec(json.dumps(data, indent=2), "simple_convnet.json")
    a = netspec.compile(path)
    b = netspec.compile(SPECS_DIR / "simple_convnet.yaml")
    assert a.params.keys() == b.params.keys()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_train_section_without_optimizer_gets_plain_sgd():
    from netspec.optim_spec import SGDSpec
    spec = netspec.load_spec({**TINY, "train": {"data": {"source": "mnist-5k"}, "epochs": 1}})
    assert isinstance(spec.train.optimizer, SGDSpec)
