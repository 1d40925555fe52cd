"""ONNX export (netspec.export): every layer type, every shipped spec, checked by onnxruntime.

Each exported model runs in an onnxruntime session and must give ``Model.predict``'s output
within 1e-5 * max(1, max|output|) (float32). The models are randomly initialised, with random
biases, batchnorm scales and running statistics so that no array is trivially 0 or 1; inputs are
shifted negative where padding conventions (max pooling's -inf, average pooling's zeros) matter.
Tests needing onnx / onnxruntime skip cleanly without them.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from extras import need

import netspec
from netspec.cli import build_parser
from netspec.export import (
    DEFAULT_OPSET,
    EMITTERS,
    MIN_OPSET,
    ExportError,
    export_onnx,
)
from netspec.layers import LAYERS
from netspec.spec import spec_to_dict

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
SHIPPED_SPECS = sorted(SPECS_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def onnx():
    return need("onnx")


@pytest.fixture(scope="module")
def ort(onnx):
    return need("onnxruntime")


# ------------------------------------------------------------------ helpers

def run_onnx(ort, proto, x):
    """Output of an exported model in an onnxruntime CPU session."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": x})
    return y


def max_diff(got, want):
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def assert_matches(got, want, rel=1e-5):
    """Same shape and dtype, and max |got - want| <= rel * max(1, max|want|)."""
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    tol = rel * max(1.0, float(np.max(np.abs(want.astype(np.float64)))))
    err = max_diff(got, want)
    assert err <= tol, f"max abs difference {err:.3g} exceeds {tol:.3g}"


def perturb(model, seed=0):
    """Random biases, batchnorm gamma/beta and running statistics, set in place (weights keep
    their seeded init); returns the model."""
    rng = np.random.default_rng(seed)
    for key, a in {**model.params, **model.buffers}.items():
        kind = key.rsplit(".", 1)[1]
        if kind in ("b", "beta", "running_mean"):
            a[...] = rng.normal(0.0, 0.5, a.shape)
        elif kind in ("gamma", "running_var"):
            a[...] = rng.uniform(0.5, 2.0, a.shape)
    return model


def build(input_shape, layers, loss="mse", **extra):
    spec = {"input": {"shape": list(input_shape)}, "seed": 3, "loss": loss, "layers": layers, **extra}
    return perturb(netspec.compile(spec))


def sample(model, n=5, shift=0.0, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n,) + model.input_shape) + shift).astype(model.dtype)


def softmax_rows(y):
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_against_predict(ort, model, x, **kwargs):
    """Export, run in onnxruntime, compare with predict; returns the proto."""
    proto = export_onnx(model, **kwargs)
    assert_matches(run_onnx(ort, proto, x), model.predict(x))
    return proto


# ---------------------------------------------------------- small models

def _fit(k, s, p, at_least):
    """The smallest input size >= at_least whose convolution output size is an integer."""
    n = max(at_least, k - 2 * p)
    while (n + 2 * p - k) % s:
        n += 1
    return n


CONV_CASES = [(k, s, p) for k in ([3, 3], [2, 3], [3, 1], [1, 1], [5, 5]) for s in (1, 2) for p in (0, 1, 2)]


@pytest.mark.parametrize("kernel,stride,pad", CONV_CASES, ids=[f"k{k[0]}x{k[1]}-s{s}-p{p}" for k, s, p in CONV_CASES])
def test_conv2d_pads_strides_and_kernels(ort, kernel, stride, pad):
    shape = [2, _fit(kernel[0], stride, pad, 5), _fit(kernel[1], stride, pad, 6)]
    model = build(shape, [{"type": "conv2d", "filters": 3, "kernel": kernel, "stride": stride, "pad": pad}])
    proto = check_against_predict(ort, model, sample(model))
    (conv,) = proto.graph.node
    attrs = {a.name: list(a.ints) for a in conv.attribute}
    assert attrs == {"kernel_shape": kernel, "strides": [stride, stride], "pads": [pad] * 4}
    assert list(conv.input) == ["input", "conv1.W", "conv1.b"]


def test_conv2d_without_bias(ort):
    model = build([3, 6, 6], [{"type": "conv2d", "filters": 4, "kernel": 3, "pad": 1, "bias": False}])
    proto = check_against_predict(ort, model, sample(model))
    assert list(proto.graph.node[0].input) == ["input", "conv1.W"]


POOL_CASES = [  # size, stride (None: the default, the window), pad, input H x W
    (2, 2, 0, (7, 8)),      # ragged last row dropped (floor mode)
    (2, 2, 1, (5, 6)),
    (3, 2, 1, (8, 7)),      # ragged
    (3, 3, 0, (10, 11)),    # ragged on both axes
    (3, 1, 1, (5, 5)),
    ([2, 3], 2, 1, (7, 9)),
    ([3, 2], 1, 0, (6, 5)),
    (2, None, 0, (5, 5)),   # default stride, resolved by the model
    (4, 3, 2, (9, 10)),
]


@pytest.mark.parametrize("op", ["maxpool2d", "avgpool2d"])
@pytest.mark.parametrize("size,stride,pad,hw", POOL_CASES,
                         ids=[f"size{s}-stride{t}-pad{p}-{h}x{w}" for s, t, p, (h, w) in POOL_CASES])
def test_pooling_pads_strides_and_ragged_edges(ort, op, size, stride, pad, hw):
    layer = {"type": op, "size": size, "pad": pad}
    if stride is not None:
        layer["stride"] = stride
    model = build([3, *hw], [layer])
    # Mostly negative input: a window over padding then differs between -inf (max) and 0 padding.
    x = sample(model, shift=-2.0)
    proto = check_against_predict(ort, model, x)
    (pool,) = proto.graph.node
    assert pool.op_type == {"maxpool2d": "MaxPool", "avgpool2d": "AveragePool"}[op]
    attrs = {a.name: (list(a.ints) or a.i) for a in pool.attribute}
    kh, kw = (size, size) if isinstance(size, int) else size
    s = stride or kh
    expected = {"kernel_shape": [kh, kw], "strides": [s, s], "pads": [pad] * 4}
    if op == "avgpool2d":
        expected["count_include_pad"] = 1
    assert attrs == expected


def test_padding_conventions_on_constant_input(ort):
    """-1 everywhere, 2x2 windows, stride 2, pad 1: max never sees padding (-1), avg counts it as 0."""
    for op, corner, edge in (("maxpool2d", -1.0, -1.0), ("avgpool2d", -0.25, -0.5)):
        model = build([1, 4, 4], [{"type": op, "size": 2, "stride": 2, "pad": 1}])
        y = run_onnx(ort, export_onnx(model), -np.ones((1, 1, 4, 4), np.float32))
        np.testing.assert_array_equal(y[0, 0, 0], [corner, edge, corner])
        np.testing.assert_array_equal(y, model.predict(-np.ones((1, 1, 4, 4), np.float32)))


def test_batchnorm_on_features_uses_running_statistics(ort):
    model = build([6], [
        {"type": "batchnorm", "name": "bn_in", "eps": 1e-3},   # straight on the network input
        {"type": "dense", "units": 5},
        {"type": "batchnorm", "name": "bn_hidden"},
        {"type": "relu"},
        {"type": "dense", "units": 3},
    ])
    # The running statistics really are non-trivial, so a BatchNormalization ignoring them would fail.
    assert np.all(model.buffers["bn_hidden.running_var"] != 1.0)
    assert np.all(model.buffers["bn_hidden.running_mean"] != 0.0)
    proto = check_against_predict(ort, model, sample(model, n=9))
    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert [list(n.input) for n in bns] == [
        ["input", "bn_in.gamma", "bn_in.beta", "bn_in.running_mean", "bn_in.running_var"],
        ["dense1", "bn_hidden.gamma", "bn_hidden.beta", "bn_hidden.running_mean", "bn_hidden.running_var"]]
    assert [n.attribute[0].f for n in bns] == pytest.approx([1e-3, 1e-5], rel=1e-6)


def test_batchnorm_on_channels(ort):
    model = build([3, 5, 4], [
        {"type": "batchnorm", "eps": 0.01},
        {"type": "conv2d", "filters": 4, "kernel": 3, "pad": 1},
        {"type": "batchnorm"},
        {"type": "tanh"},
    ])
    check_against_predict(ort, model, sample(model, n=6))


def test_batchnorm_after_training_steps(ort):
    """Running statistics produced by netspec's own training updates, not set by hand."""
    model = netspec.compile({"input": {"shape": [2, 5, 5]}, "seed": 4, "loss": "softmax_cross_entropy",
                             "layers": [{"type": "conv2d", "filters": 3, "kernel": 3},
                                        {"type": "batchnorm", "momentum": 0.5},
                                        {"type": "relu"},
                                        {"type": "dense", "units": 4},
                                        {"type": "batchnorm"}]})
    x = sample(model, n=8, shift=1.0)
    for _ in range(3):
        model.gradient(x, np.arange(8) % 4)
    assert not np.allclose(model.buffers["bn1.running_mean"], 0.0)
    check_against_predict(ort, model, sample(model, n=5, seed=9))


@pytest.mark.parametrize("n_inputs", [2, 3])
def test_add_with_several_inputs(ort, n_inputs):
    branches = [{"type": "dense", "name": f"d{i}", "units": 4, "inputs": ["input"]} for i in range(n_inputs)]
    model = build([4], branches + [{"type": "add", "inputs": [f"d{i}" for i in range(n_inputs)]}])
    proto = check_against_predict(ort, model, sample(model))
    adds = [n for n in proto.graph.node if n.op_type == "Add"]
    assert len(adds) == n_inputs - 1


def test_residual_add_on_feature_maps(ort):
    model = build([4, 5, 5], [
        {"type": "conv2d", "filters": 4, "kernel": 3, "pad": 1},
        {"type": "relu"},
        {"type": "conv2d", "filters": 4, "kernel": 3, "pad": 1},
        {"type": "add", "inputs": ["conv2", "input", "relu1"]},
        {"type": "relu"},
    ])
    check_against_predict(ort, model, sample(model))


def test_concat_feature_maps_and_vectors(ort):
    model = build([2, 6, 6], [
        {"type": "conv2d", "name": "a", "filters": 3, "kernel": 3, "pad": 1},
        {"type": "conv2d", "name": "b", "filters": 2, "kernel": [1, 3], "pad": 1, "stride": 1,
         "inputs": ["input"]},
        {"type": "maxpool2d", "name": "b_pool", "size": [3, 1], "stride": 1},
        {"type": "concat", "name": "maps", "inputs": ["a", "input", "b_pool"]},
        {"type": "avgpool2d", "size": 2},
        {"type": "dense", "name": "u", "units": 3},
        {"type": "flatten", "name": "v", "inputs": ["maps"]},
        {"type": "dense", "name": "w", "units": 2},
        {"type": "concat", "inputs": ["u", "w"]},
    ])
    proto = check_against_predict(ort, model, sample(model))
    concats = [n for n in proto.graph.node if n.op_type == "Concat"]
    assert [list(n.input) for n in concats] == [["a", "input", "b_pool"], ["u", "w"]]
    assert all(n.attribute[0].i == 1 for n in concats)


def test_activations_dense_without_bias_and_dropout(ort):
    model = build([10], [
        {"type": "affine", "units": 8},
        {"type": "sigmoid"},
        {"type": "dropout", "ratio": 0.3},
        {"type": "dense", "units": 6, "bias": False},
        {"type": "tanh"},
        {"type": "dense", "units": 4},
        {"type": "softmax"},
    ])
    proto = check_against_predict(ort, model, sample(model, n=7))
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Sigmoid", "MatMul", "Tanh", "Gemm", "Softmax"]


def test_softmax_is_over_the_last_axis(ort):
    """netspec's softmax normalises the last axis, W for (C, H, W) input; so must the export."""
    model = build([2, 3, 4], [{"type": "softmax"}])
    x = sample(model)
    y = run_onnx(ort, export_onnx(model), x)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-6)
    assert not np.allclose(y.sum(axis=1), 1.0)
    assert_matches(y, model.predict(x))


def test_dense_flattens_feature_maps(ort):
    model = build([2, 3, 4], [{"type": "dense", "units": 5}, {"type": "relu"}, {"type": "dense", "units": 2}],
                  loss="softmax_cross_entropy")
    proto = check_against_predict(ort, model, sample(model))
    assert [n.op_type for n in proto.graph.node] == ["Flatten", "Gemm", "Relu", "Gemm"]
    assert proto.graph.node[0].attribute[0].i == 1


def test_dropout_as_last_layer_becomes_identity(ort):
    model = build([1, 6, 6], [
        {"type": "conv2d", "filters": 2, "kernel": 3},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 5},
        {"type": "dropout"},
    ], loss="softmax_cross_entropy")
    proto = check_against_predict(ort, model, sample(model))
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Identity"]
    assert [o.name for o in proto.graph.output] == ["output"]


ALL_LAYERS = [  # one model with every layer type, used across opsets and dtypes
    {"type": "batchnorm", "name": "bn_in"},
    {"type": "conv2d", "name": "c1", "filters": 4, "kernel": [3, 2], "stride": 1, "pad": 1},
    {"type": "relu"},
    {"type": "conv2d", "name": "c2", "filters": 2, "kernel": 1, "pad": 1, "inputs": ["input"]},  # (2, 9, 8)
    {"type": "avgpool2d", "name": "c2_pool", "size": [3, 2], "stride": 1},                      # (2, 7, 7)
    {"type": "concat", "name": "cat", "inputs": ["relu1", "c2_pool"]},
    {"type": "batchnorm"},
    {"type": "maxpool2d", "size": 3, "stride": 2, "pad": 1},
    {"type": "tanh"},
    {"type": "dense", "name": "h1", "units": 6},
    {"type": "affine", "name": "h2", "units": 6, "inputs": ["tanh1"], "bias": False},
    {"type": "flatten", "name": "flat", "inputs": ["cat"]},
    {"type": "dense", "name": "h3", "units": 6},
    {"type": "globalavgpool2d", "name": "gap", "inputs": ["cat"]},
    {"type": "dense", "name": "h4", "units": 6},
    {"type": "add", "inputs": ["h1", "h2", "h3", "h4"]},
    {"type": "batchnorm"},
    {"type": "sigmoid"},
    {"type": "dropout"},
    {"type": "dense", "units": 5},
    {"type": "softmax"},
]


def all_layers_model(dtype="float32"):
    spec = {"input": {"shape": [2, 7, 6]}, "seed": 5, "loss": "mse", "layers": ALL_LAYERS}
    return perturb(netspec.compile(spec, dtype=dtype))


def test_every_layer_type_has_an_emitter_and_a_case_here():
    assert set(EMITTERS) == set(LAYERS)
    assert {l["type"] for l in ALL_LAYERS} == set(LAYERS)


NEWEST = "newest"


@pytest.mark.parametrize("opset", [MIN_OPSET, 8, 9, 10, 11, 12, 13, DEFAULT_OPSET, 18, 21, NEWEST])
def test_every_layer_type_at_every_opset(onnx, ort, opset):
    if opset == NEWEST:
        opset = onnx.defs.onnx_opset_version()
    model = all_layers_model()
    x = sample(model, n=4, shift=-0.5)
    proto = export_onnx(model, opset=opset)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    onnx.checker.check_model(proto, full_check=True)
    try:
        y = run_onnx(ort, proto, x)
    except Exception as exc:  # a newer onnx than onnxruntime: not the exporter's fault
        if "opset" in str(exc).lower() and opset > 21:
            pytest.skip(f"onnxruntime {ort.__version__} does not run opset {opset}: {exc}")
        raise
    assert_matches(y, model.predict(x))


# ------------------------------------------------------------ shipped specs

@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=[p.stem for p in SHIPPED_SPECS])
def test_every_shipped_spec(onnx, ort, path):
    model = perturb(netspec.compile(path, dtype="float32"))
    x = np.random.default_rng(2).uniform(0.0, 1.0, (7,) + model.input_shape).astype(np.float32)
    proto = check_against_predict(ort, model, x)
    onnx.checker.check_model(proto, full_check=True)
    # Every parameter and buffer is an initializer under its own key, holding the same values.
    arrays = {**model.params, **model.buffers}
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert stored.keys() == arrays.keys()
    for k, a in arrays.items():
        np.testing.assert_array_equal(stored[k], a)
    assert all(n.domain == "" for n in proto.graph.node)
    assert "Dropout" not in {n.op_type for n in proto.graph.node}


def test_simple_convnet_graph_is_the_plain_onnx_one():
    need("onnx")
    proto = export_onnx(netspec.compile(SPECS_DIR / "simple_convnet.yaml"))
    assert [(n.op_type, list(n.input), list(n.output)) for n in proto.graph.node] == [
        ("Conv", ["input", "conv1.W", "conv1.b"], ["conv1"]),
        ("Relu", ["conv1"], ["relu1"]),
        ("MaxPool", ["relu1"], ["pool1"]),
        ("Flatten", ["pool1"], ["affine1/flatten"]),
        ("Gemm", ["affine1/flatten", "affine1.W", "affine1.b"], ["affine1"]),
        ("Relu", ["affine1"], ["relu2"]),
        ("Gemm", ["relu2", "affine2.W", "affine2.b"], ["output"]),
    ]


def test_a_layer_named_output_does_not_clash(ort):
    """forward_example has a layer called 'output' that is not the last one."""
    model = netspec.compile(SPECS_DIR / "forward_example.yaml", dtype="float32")
    proto = check_against_predict(ort, model, np.array([[0.5, 0.8], [1.0, -1.0]], np.float32))
    assert [list(n.output) for n in proto.graph.node] == [["hidden"], ["hidden_act"], ["output/y"], ["output"]]


# -------------------------------------------------- metadata, batch, output

def test_checker_metadata_and_dynamic_batch(onnx, ort, tmp_path):
    model = netspec.compile(SPECS_DIR / "simple_convnet.yaml")
    path = tmp_path / "model.onnx"
    proto = export_onnx(model, path)
    assert path.read_bytes() == proto.SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]   # no temporary left behind
    onnx.checker.check_model(str(path), full_check=True)

    assert proto.producer_name == "netspec"
    assert proto.producer_version == netspec.__version__
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta.keys() == {"name", "netspec_version", "spec"}
    assert meta["name"] == "simple_convnet"
    assert meta["netspec_version"] == netspec.__version__
    assert json.loads(meta["spec"]) == spec_to_dict(model.spec)
    assert netspec.compile(json.loads(meta["spec"])).graph() == model.graph()   # the spec rebuilds the model

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]
    assert [(i.name, dims(i)) for i in proto.graph.input] == [("input", ["N", 1, 28, 28])]
    assert [(o.name, dims(o)) for o in proto.graph.output] == [("output", ["N", 10])]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map == meta
    perturb(model)   # the file holds the old biases: compare with a fresh export below
    proto = export_onnx(model)
    for n in (1, 7):
        x = sample(model, n=n)
        y = run_onnx(ort, proto, x)
        assert y.shape == (n, 10)
        assert_matches(y, model.predict(x))


def test_probabilities_output(onnx, ort):
    model = perturb(netspec.compile(SPECS_DIR / "deep_convnet.yaml"))
    x = np.random.default_rng(3).uniform(0, 1, (6, 1, 28, 28)).astype(np.float32)
    proto = export_onnx(model, probabilities=True)
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    last = proto.graph.node[-1]
    assert (last.op_type, last.attribute[0].name, last.attribute[0].i) == ("Softmax", "axis", 1)
    p = run_onnx(ort, proto, x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    scores = model.predict(x)
    assert_matches(p, softmax_rows(scores.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(p.argmax(axis=1), scores.argmax(axis=1))


def test_probabilities_need_a_vector_of_scores():
    need("onnx")
    maps = build([1, 4, 4], [{"type": "conv2d", "name": "last_conv", "filters": 2, "kernel": 3}])
    with pytest.raises(ExportError, match=r"layer 'last_conv' \(conv2d\): probabilities=True .* outputs \[2, 2, 2\]"):
        export_onnx(maps, probabilities=True)
    probs = build([3], [{"type": "dense", "units": 3}, {"type": "softmax", "name": "probs"}])
    with pytest.raises(ExportError, match=r"layer 'probs' \(softmax\): the model already outputs probabilities"):
        export_onnx(probs, probabilities=True)


# ------------------------------------------------------------------- dtypes

def test_float64_model_exports_as_double(onnx, ort):
    model = netspec.compile(SPECS_DIR / "forward_example.yaml")
    assert model.dtype == np.float64
    proto = export_onnx(model)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.DOUBLE}
    x = np.array([[0.5, 0.8], [-2.0, 3.0]])
    y = run_onnx(ort, proto, x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, model.predict(x), rtol=1e-14, atol=0)
    # and by hand, from the weights written in the spec
    def sig(v):
        return 1 / (1 + np.exp(-v))
    h = sig(x @ [[0.1, 0.2], [0.3, 0.1]] + [0.1, 0.2])
    np.testing.assert_allclose(y, sig(h @ [[0.4, 0.5], [0.1, 0.3]] + [0.3, 0.4]), rtol=1e-14)


FLOAT16_MODELS = ["all_layers", "simple_convnet", "deep_convnet_fashion_plus"]


@pytest.mark.parametrize("name", FLOAT16_MODELS)
def test_float16_model_exports_as_half(onnx, ort, name):
    def make(dtype):
        if name == "all_layers":
            return all_layers_model(dtype)
        return perturb(netspec.compile(SPECS_DIR / f"{name}.yaml", dtype=dtype))
    model = make("float16")
    x = np.random.default_rng(6).uniform(-0.5, 1.0, (4,) + model.input_shape).astype(np.float16)
    proto = export_onnx(model)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    y = run_onnx(ort, proto, x)
    assert y.dtype == np.float16
    # float16 tolerance: 5e-3 of the output scale, about 5 units in the last place of a half;
    # onnxruntime and numpy round intermediate results differently (measured: up to 1.5e-3).
    assert_matches(y, model.predict(x), rel=5e-3)
    ref = make("float32").predict(x.astype(np.float32))
    assert max_diff(y, ref) <= 5e-3 * max(1.0, float(np.abs(ref).max()))


def test_unsupported_dtype_is_an_error():
    need("onnx")
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 on this platform")
    model = netspec.compile({"input": {"shape": [2]}, "loss": "mse", "layers": [{"type": "dense", "units": 1}]},
                            dtype=np.longdouble)
    with pytest.raises(ExportError, match=r"cannot export a float(96|128) model: ONNX export supports "
                                          r"float16, float32 and float64"):
        export_onnx(model)


# ------------------------------------------------------------ what cannot be exported

def test_opset_out_of_range(onnx):
    model = netspec.compile(SPECS_DIR / "two_layer_net.yaml")
    with pytest.raises(ExportError, match=r"opset 6 is too old: netspec exports ONNX opset 7 or newer"):
        export_onnx(model, opset=6)
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ExportError, match=rf"opset {newest + 1} is newer than the installed onnx"):
        export_onnx(model, opset=newest + 1)
    with pytest.raises(ExportError, match=r"opset must be an integer, got '17'"):
        export_onnx(model, opset="17")


def test_unknown_layer_type_names_the_layer(monkeypatch):
    """A layer type added to netspec later, with no emitter yet, is refused, not skipped."""
    need("onnx")
    model = netspec.compile(SPECS_DIR / "two_layer_net.yaml")
    graph = model.graph()
    graph["nodes"][1] = {**graph["nodes"][1], "name": "gelu1", "op": "gelu"}
    graph["nodes"][2]["inputs"] = ["gelu1"]
    monkeypatch.setattr(model, "graph", lambda: graph)
    with pytest.raises(ExportError, match=r"layer 'gelu1' \(gelu\): no ONNX mapping for layer type 'gelu'"):
        export_onnx(model)


def test_unknown_attribute_names_the_layer(monkeypatch):
    """An attribute added to a layer later (here a dilation) is refused, never silently dropped."""
    need("onnx")
    model = netspec.compile(SPECS_DIR / "simple_convnet.yaml")
    graph = model.graph()
    graph["nodes"][0]["attrs"]["dilation"] = 2
    monkeypatch.setattr(model, "graph", lambda: graph)
    with pytest.raises(ExportError,
                       match=r"layer 'conv1' \(conv2d\): attribute 'dilation' \(= 2\) has no ONNX mapping"):
        export_onnx(model)


def test_unwritable_path(tmp_path):
    need("onnx")
    model = netspec.compile(SPECS_DIR / "two_layer_net.yaml")
    with pytest.raises(ExportError, match=r"cannot write .*missing.*model\.onnx: No such file or directory"):
        export_onnx(model, tmp_path / "missing" / "model.onnx")


def test_without_onnx_installed():
    """import netspec.export needs no onnx; exporting then says how to install it."""
    code = (
        "import sys\n"
        "sys.modules['onnx'] = None\n"          # makes 'import onnx' raise ImportError
        "import netspec, netspec.export as e\n"
        "m = netspec.compile({'input': {'shape': [2]}, 'loss': 'mse', 'layers': [{'type': 'dense', 'units': 1}]})\n"
        "try:\n"
        "    e.export_onnx(m)\n"
        "except netspec.NetspecError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ExportError ONNX export needs the onnx package: pip install "netspec[onnx]"'
    # and importing the module does not import onnx
    code = "import sys, netspec.export; print(sys.modules.get('onnx') is not None)"
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------------- CLI

def export_cli(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture
def checkpoint(tmp_path):
    from netspec.checkpoint import save_checkpoint
    model = perturb(netspec.compile(SPECS_DIR / "deep_convnet_fashion_plus.yaml"))
    path = tmp_path / "model.npz"
    save_checkpoint(path, model)
    return path, model


def test_cli_export(onnx, ort, checkpoint, tmp_path, capsys):
    path, model = checkpoint
    out = tmp_path / "out" / "net.onnx"
    out.parent.mkdir()
    assert export_cli(["export", str(path), "-o", str(out), "--opset", "13", "--probabilities"]) == 0
    line = capsys.readouterr().out
    proto = onnx.load(str(out))
    assert line == (f"wrote {out}: ONNX opset 13, {len(proto.graph.node)} nodes, {out.stat().st_size:,} bytes "
                    f"(deep_convnet_fashion_plus, float32, output 'probabilities')\n")
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]
    x = np.random.default_rng(4).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    assert_matches(run_onnx(ort, proto, x), softmax_rows(model.predict(x).astype(np.float64)).astype(np.float32))


def test_cli_default_output_and_dtype(onnx, checkpoint, capsys):
    path, _ = checkpoint
    assert export_cli(["export", str(path), "--dtype", "float16"]) == 0
    out = path.with_suffix(".onnx")
    assert capsys.readouterr().out.startswith(f"wrote {out}: ONNX opset {DEFAULT_OPSET}, ")
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_cli_user_errors(checkpoint, tmp_path):
    need("onnx")
    path, _ = checkpoint
    with pytest.raises(netspec.CheckpointError):
        export_cli(["export", str(tmp_path / "nope.npz"), "-o", str(tmp_path / "x.onnx")])
    with pytest.raises(ExportError, match="is the checkpoint itself"):
        export_cli(["export", str(path), "-o", str(path)])
    with pytest.raises(ExportError, match="opset 5 is too old"):
        export_cli(["export", str(path), "--opset", "5"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def _netspec_cli(*argv):
    return subprocess.run([sys.executable, "-m", "netspec", *argv], check=False, capture_output=True, text=True,
                          timeout=300)


def test_cli_export_command(onnx, checkpoint, tmp_path):
    path, _ = checkpoint
    out = tmp_path / "cli.onnx"
    done = _netspec_cli("export", str(path), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}: ONNX opset {DEFAULT_OPSET}, ")
    onnx.checker.check_model(str(out), full_check=True)
    bad = _netspec_cli("export", str(path), "-o", str(out), "--opset", "3")
    assert bad.returncode == 2
    assert "opset 3 is too old" in bad.stderr and "Traceback" not in bad.stderr


# -------------------------------------------------------------- acceptance

def test_trained_simple_convnet_agrees_on_every_mnist5k_test_image(ort):
    """Train simple_convnet one epoch; onnxruntime's arg-max equals predict's on all 1,000 test digits."""
    from netspec.data import load_data
    history = netspec.train(SPECS_DIR / "simple_convnet.yaml", epochs=1)
    model = history.model
    assert history.test_acc > 0.5          # really trained (one epoch on 4,000 digits gives about 75%)
    data = load_data(model.spec.train.data, seed=model.spec.seed, dtype=model.dtype)
    x, t = data.x_test, data.t_test
    assert x.shape == (1000, 1, 28, 28)
    proto = export_onnx(model)
    y = run_onnx(ort, proto, x)
    want = model.predict(x)
    assert_matches(y, want)
    np.testing.assert_array_equal(y.argmax(axis=1), want.argmax(axis=1))
    assert set(want.argmax(axis=1)) == set(range(10))   # every class is predicted somewhere
    assert float((y.argmax(axis=1) == t).mean()) == model.accuracy(x, t)


def test_export_to_a_name_near_the_file_name_limit(onnx, checkpoint, tmp_path, capsys):
    """A valid 236-255 character name failed "File name too long": the temporary added ~20
    characters to it. Temporaries now have short names of their own."""
    path, _ = checkpoint
    out = tmp_path / ("n" * 250 + ".onnx")
    assert export_cli(["export", str(path), "-o", str(out)]) == 0
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.npz", out.name])
