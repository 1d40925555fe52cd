"""The Model API: predict, loss, gradient, accuracy; dropout, batchnorm, merges; the seeds' losses."""
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.gradcheck import check_model, numerical_gradient, relative_error
from netspec.layers import LOSSES


def small_convnet(**over):
    spec = {"input": {"shape": [3, 6, 7]}, "seed": 1, "loss": "softmax_cross_entropy", "layers": [
        {"type": "conv2d", "filters": 4, "kernel": [2, 3], "pad": 1},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2, "stride": 2},
        {"type": "dense", "units": 5},
    ]}
    spec.update(over)
    return netspec.compile(spec)


def test_param_and_gradient_keys_and_shapes():
    model = small_convnet()
    # conv: (filters, in_channels, kh, kw); output (4, 7, 7) -> pool (4, 3, 3) -> dense (36, 5)
    assert {k: v.shape for k, v in model.params.items()} == {
        "conv1.W": (4, 3, 2, 3), "conv1.b": (4,), "dense1.W": (36, 5), "dense1.b": (5,)}
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 7))
    _, grads = model.gradient(x, np.array([1, 4]))
    assert grads.keys() == model.params.keys()
    assert all(grads[k].shape == p.shape and grads[k].dtype == np.float32 for k, p in model.params.items())
    assert model.predict(x).shape == (2, 5)
    assert isinstance(model.loss(x, np.array([1, 4])), float)


def test_params_are_the_layers_arrays():
    model = small_convnet()
    model.params["dense1.b"][...] = 7.0
    np.testing.assert_array_equal(model.layers[-1].params["b"], np.full(5, 7.0))


def test_predict_accepts_one_sample_and_flat_rows():
    model = small_convnet(dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 7))
    batch = model.predict(x)
    np.testing.assert_allclose(model.predict(x[0]), batch[:1], rtol=1e-13)   # batch size changes rounding only
    np.testing.assert_array_equal(model.predict(x.reshape(2, -1)), batch)
    with pytest.raises(netspec.DataError, match=r"input: an array shaped \[2, 5\] does not fit the model input "
                       r"\[3, 6, 7\] \(expected a batch \(N, 3, 6, 7\), one sample \(3, 6, 7\), or N rows of 126 values\)"):
        model.predict(np.zeros((2, 5)))


def test_accuracy_counts_argmax_hits():
    model = netspec.compile({"input": {"shape": [3]}, "loss": "softmax_cross_entropy", "layers": [
        {"type": "dense", "units": 3, "bias": False,
         "init": {"values": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}}]})
    x = np.array([[5, 1, 0], [0, 3, 1], [1, 0, 2], [9, 0, 1]], dtype=float)   # arg-max: 0, 1, 2, 0
    assert model.accuracy(x, np.array([0, 1, 2, 2])) == 0.75
    assert model.accuracy(x, np.eye(3)[[0, 0, 2, 0]]) == 0.75
    assert model.accuracy(x, np.array([0, 1, 2, 2]), batch_size=3) == 0.75


def dropout_model(ratio):
    return netspec.compile({"input": {"shape": [20000]}, "seed": 4, "dtype": "float64", "loss": "mse",
                            "layers": [{"type": "dropout", "ratio": ratio}]})


def test_dropout_is_inverted():
    model = dropout_model(0.3)
    x = np.random.default_rng(0).uniform(1, 2, (1, 20000))
    np.testing.assert_array_equal(model.predict(x), x)                 # identity at test time
    out = model.forward(x, train=True)
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / 0.7, rtol=1e-15)   # kept units scaled by 1/(1-ratio)
    assert kept.mean() == pytest.approx(0.7, abs=0.01)
    assert out.mean() == pytest.approx(x.mean(), rel=0.01)             # same expectation as test time
    again = model.forward(x, train=True)
    assert not np.array_equal(again != 0, kept)                        # a fresh mask each step


def test_dropout_backward_uses_the_forward_mask():
    model = dropout_model(0.5)
    x = np.ones((1, 20000))
    out = model.forward(x, train=True)
    dx = model.backward(np.ones_like(out))
    np.testing.assert_array_equal(dx, out)      # d(x*mask*2)/dx = mask*2 = out for x = 1


def test_dropout_masks_follow_the_seed():
    a = dropout_model(0.5).forward(np.ones((1, 20000)), train=True)
    b = dropout_model(0.5).forward(np.ones((1, 20000)), train=True)
    np.testing.assert_array_equal(a, b)


def bn_model():
    return netspec.compile({"input": {"shape": [2, 3, 3]}, "dtype": "float64", "loss": "mse", "layers": [
        {"type": "batchnorm", "momentum": 0.9}]})


def test_batchnorm_running_stats_update_only_in_training():
    model = bn_model()
    bn = model.layers[0]
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 2, 3, 3))
    model.predict(x)
    model.loss(x, np.zeros_like(x))
    np.testing.assert_array_equal(bn.running_mean, [0, 0])
    np.testing.assert_array_equal(bn.running_var, [1, 1])
    model.gradient(x, np.zeros_like(x))
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var, rtol=1e-12)
    assert model.buffers.keys() == {"bn1.running_mean", "bn1.running_var"}


def test_batchnorm_train_normalises_with_batch_and_test_with_running_stats():
    model = bn_model()
    x = np.random.default_rng(1).normal(3.0, 2.0, (4, 2, 3, 3))
    out = model.forward(x, train=True)   # gamma 1, beta 0
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), x.var(axis=(0, 2, 3)) / (x.var(axis=(0, 2, 3)) + 1e-5))
    bn = model.layers[0]
    bn.running_mean[...] = [1.0, -1.0]
    bn.running_var[...] = [4.0, 0.25]
    expected = (x - np.array([1.0, -1.0]).reshape(1, 2, 1, 1)) / np.sqrt(
        np.array([4.0, 0.25]).reshape(1, 2, 1, 1) + 1e-5)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12)


RESIDUAL = {
    "input": {"shape": [2, 5, 5]}, "dtype": "float64", "seed": 2, "loss": "softmax_cross_entropy",
    "layers": [
        {"type": "conv2d", "name": "stem", "filters": 3, "kernel": 3, "pad": 1},
        {"type": "tanh", "name": "act"},
        {"type": "conv2d", "name": "branch", "filters": 3, "kernel": 3, "pad": 1},
        {"type": "add", "name": "res", "inputs": ["branch", "act"]},
        {"type": "conv2d", "name": "side", "filters": 2, "kernel": 1, "inputs": ["input"]},
        {"type": "concat", "name": "cat", "inputs": ["res", "side", "input"]},
        {"type": "avgpool2d", "size": 2, "stride": 1},
        {"type": "dense", "units": 4},
    ]}


def test_residual_add_and_concat_graph_compiles_and_gradchecks():
    model = netspec.compile(RESIDUAL)
    assert [(l.name, l.input_names, l.out_shape) for l in model.layers] == [
        ("stem", ["input"], (3, 5, 5)), ("act", ["stem"], (3, 5, 5)), ("branch", ["act"], (3, 5, 5)),
        ("res", ["branch", "act"], (3, 5, 5)), ("side", ["input"], (2, 5, 5)),
        ("cat", ["res", "side", "input"], (7, 5, 5)), ("avgpool1", ["cat"], (7, 4, 4)),
        ("dense1", ["avgpool1"], (4,))]
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((2, 2, 5, 5)), np.array([0, 3])
    report = check_model(model, x, t, max_elements=None)
    assert set(report) == set(model.params)
    for name, r in report.items():
        assert (r["checked"], r["skipped"]) == (r["size"], 0)
        assert r["error"] <= 1e-6, (name, r["error"])


def test_gradient_wrt_an_input_used_three_times_sums_every_path():
    model = netspec.compile(RESIDUAL)
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((2, 2, 5, 5)), np.array([1, 2])
    model.loss(x, t, train=True)
    dx = model.backward(model.loss_fn.backward())
    numeric = numerical_gradient(lambda: model.loss(x, t, train=True), x, h=1e-5)
    assert relative_error(dx, numeric) <= 1e-6


def test_softmax_cross_entropy_labels_equal_one_hot():
    rng = np.random.default_rng(0)
    y, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    a, b = LOSSES["softmax_cross_entropy"](), LOSSES["softmax_cross_entropy"]()
    assert a.forward(y, labels) == pytest.approx(b.forward(y, np.eye(4)[labels]), rel=1e-15)
    np.testing.assert_allclose(a.backward(), b.backward(), rtol=1e-15)


def test_cross_entropy_known_value():
    loss = LOSSES["softmax_cross_entropy"]()
    y = np.log(np.array([[1.0, 2.0, 7.0]]))              # softmax: [0.1, 0.2, 0.7]
    assert loss.forward(y, np.array([2])) == pytest.approx(-np.log(0.7), rel=1e-14)
    np.testing.assert_allclose(loss.backward(), [[0.1, 0.2, -0.3]], atol=1e-15)
    # batch mean: a confident hit and a 0.1 miss
    assert loss.forward(np.log(np.array([[1.0, 2.0, 7.0]] * 2)), np.array([2, 0])) == pytest.approx(
        (-np.log(0.7) - np.log(0.1)) / 2, rel=1e-14)


def test_cross_entropy_is_finite_for_huge_logits():
    loss = LOSSES["softmax_cross_entropy"]()
    assert loss.forward(np.array([[1000.0, 0.0, -1000.0]]), np.array([0])) == 0.0
    assert loss.forward(np.array([[1000.0, 0.0, -1000.0]]), np.array([2])) == pytest.approx(2000.0)


def test_mse_is_the_mean_of_squares():
    y, t = np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[0.0, 2.0], [1.0, 1.0]])
    loss = LOSSES["mse"]()
    assert loss.forward(y, t) == (1 + 0 + 4 + 16) / 4
    np.testing.assert_array_equal(loss.backward(), 2 * (y - t) / 4)


def test_sse_is_half_the_sum_for_one_sample_and_averaged_over_a_batch():
    loss = LOSSES["sse"]()
    assert loss.forward(np.array([[0.6, 0.1, 0.3]]), np.array([[0.0, 0.0, 1.0]])) == pytest.approx(
        0.5 * (0.36 + 0.01 + 0.49), rel=1e-15)
    y, t = np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[0.0, 2.0], [1.0, 1.0]])
    assert loss.forward(y, t) == 0.5 * (1 + 0 + 4 + 16) / 2


def test_forward_example_loss_by_hand():
    model = netspec.compile(Path(__file__).resolve().parent.parent / "specs" / "forward_example.yaml")
    x, t = np.array([[0.5, 0.8]]), np.array([[0.2, 0.1]])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h = sig(x @ [[0.1, 0.2], [0.3, 0.1]] + [0.1, 0.2])
    y = sig(h @ [[0.4, 0.5], [0.1, 0.3]] + [0.3, 0.4])
    assert model.loss(x, t) == pytest.approx(np.mean((y - t) ** 2), rel=1e-15)


def test_loss_rejects_targets_that_do_not_fit():
    model = small_convnet()
    x = np.zeros((2, 3, 6, 7))
    with pytest.raises(netspec.DataError, match=r"labels range over 0\.\.5, but the model outputs 5 classes \(labels 0\.\.4\)"):
        model.loss(x, np.array([0, 5]))
    with pytest.raises(netspec.DataError, match="3 targets for 2 samples"):
        model.loss(x, np.array([0, 1, 2]))
    with pytest.raises(netspec.DataError, match=r"one-hot targets are \[4\] wide, the model outputs \[5\]"):
        model.loss(x, np.zeros((2, 4)))
    with pytest.raises(netspec.DataError, match="class labels must be integers, found float64"):
        model.loss(x, np.array([0.0, 1.0]))


BN_AFTER_CONV = {"input": {"shape": [1, 4, 4]}, "dtype": "float64", "loss": "mse", "layers": [
    {"type": "conv2d", "filters": 2, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "tanh"}]}


def test_gradcheck_reports_a_gradient_that_is_zero_everywhere():
    # batchnorm removes any per-channel constant: the conv bias has no effect on the loss
    model = netspec.compile(BN_AFTER_CONV)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((3, 1, 4, 4)), rng.standard_normal((3, 2, 4, 4))
    report = check_model(model, x, t, max_elements=None)
    assert report["conv1.b"] == {"error": 0.0, "checked": 2, "skipped": 0, "size": 2, "zero": True}
    assert not report["conv1.W"]["zero"] and report["conv1.W"]["error"] <= 1e-6


def test_gradcheck_fails_a_nonzero_gradient_where_the_true_one_is_zero(monkeypatch):
    from netspec.layers.conv import Conv2D
    original = Conv2D.backward

    def backward(self, dout, need_dx=True):
        dx = original(self, dout, need_dx)
        self.grads["b"] = self.grads["b"] + 1e-6
        return dx

    monkeypatch.setattr(Conv2D, "backward", backward)
    model = netspec.compile(BN_AFTER_CONV)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((3, 1, 4, 4)), rng.standard_normal((3, 2, 4, 4))
    report = check_model(model, x, t, max_elements=None)
    assert report["conv1.b"]["zero"] is False
    assert report["conv1.b"]["error"] == pytest.approx(1.0, abs=1e-3)


def test_the_same_input_twice_in_a_merge_counts_twice():
    model = netspec.compile({"input": {"shape": [3]}, "dtype": "float64", "loss": "mse", "layers": [
        {"type": "add", "inputs": ["input", "input"]}]})
    x = np.array([[1.0, -2.0, 0.5]])
    np.testing.assert_array_equal(model.predict(x), 2 * x)
    model.forward(x)
    np.testing.assert_array_equal(model.backward(np.array([[1.0, 2.0, 3.0]])), [[2.0, 4.0, 6.0]])


# --- regressions: one way to build a spec, one validation path, read-only inputs ---------

def test_compile_accepts_a_netspec_built_directly():
    """A NetSpec from model_validate (no file, no loader) gets names and graph checks too."""
    from netspec.spec import NetSpec
    spec = NetSpec.model_validate({"input": {"shape": [4]}, "loss": "mse", "layers": [
        {"type": "dense", "units": 3}, {"type": "relu"}, {"type": "dense", "units": 2, "name": "out"}]})
    assert spec.layer_names == ["dense1", "relu1", "out"]
    assert spec.layer_inputs == [["input"], ["dense1"], ["relu1"]]
    model = netspec.compile(spec)
    assert [l.name for l in model.layers] == ["dense1", "relu1", "out"]
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="unknown input 'dense9'"):
        NetSpec.model_validate({"input": {"shape": [4]}, "loss": "mse", "layers": [
            {"type": "dense", "units": 3}, {"type": "dense", "units": 2, "inputs": ["dense9"]}]})


@pytest.mark.parametrize("method", ["predict", "loss", "gradient", "evaluate"])
def test_read_only_inputs_work(method):
    """A memory-mapped (read-only) dataset works on either backend and is left untouched."""
    model = small_convnet(dtype="float32")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 6, 7)).astype(np.float32)
    t = np.array([0, 1, 2, 3])
    x.setflags(write=False)
    t.setflags(write=False)
    before = x.copy()
    if method == "predict":
        assert model.predict(x).shape == (4, 5)
    elif method == "evaluate":
        loss, acc, _ = model.evaluate(x, t)
        assert np.isfinite(loss) and 0 <= acc <= 1
    else:
        getattr(model, method)(x, t)
    np.testing.assert_array_equal(x, before)


def test_float16_models_round_like_half_precision_hardware():
    """float16: parameters, inputs and every layer's output are float16 values; products run in float32."""
    spec = {"input": {"shape": [3, 6, 7]}, "seed": 1, "loss": "softmax_cross_entropy", "layers": [
        {"type": "conv2d", "filters": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "maxpool2d", "size": 2}, {"type": "dense", "units": 5}, {"type": "softmax"}]}
    half = netspec.compile(spec, dtype="float16")
    assert half.dtype == np.float16 and half.compute_dtype == np.float32
    for name, p in {**half.params, **half.buffers}.items():
        np.testing.assert_array_equal(p, p.astype(np.float16), err_msg=f"{name} is not a float16 value")
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 7))
    y = half.predict(x)
    assert y.dtype == np.float16
    # an independent replay in float64 of the same rounding rule: round the input and each output
    ref = netspec.compile(spec, dtype="float64")
    ref.load_arrays({**half.params, **half.buffers})
    outs = x.astype(np.float16).astype(np.float64)
    for layer in ref.layers:
        outs = layer.forward(outs).astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(y.astype(np.float64), outs, rtol=2e-3, atol=2e-3)
    full = netspec.compile(spec, dtype="float32")
    full.load_arrays({**half.params, **half.buffers})
    assert np.abs(y - full.predict(x)).max() < 5e-3        # float16 is close to float32
    loss, acc, _ = half.evaluate(x, np.array([0, 1, 2, 3]))
    assert np.isfinite(loss) and isinstance(loss, float)


def test_api_mistakes_are_data_errors_that_say_what_is_wrong():
    """predict on no samples said "cannot reshape array of size 0"; batch_size 0 or -1 ended in
    numpy's own errors; one-hot targets of the wrong width are refused, not scored 0."""
    m = netspec.compile({"input": {"shape": [2]}, "layers": [{"type": "dense", "units": 3}],
                         "loss": "softmax_cross_entropy"})
    x = np.zeros((4, 2))
    cases = [(lambda: m.predict(np.zeros((0, 2))), "input: no samples (an array shaped [0, 2])"),
             (lambda: m.predict(x, batch_size=0), "batch_size must be a whole number >= 1, got 0"),
             (lambda: m.predict(x, batch_size=-1), "batch_size must be a whole number >= 1, got -1"),
             (lambda: m.evaluate(x, [0, 1, 2, 0], batch_size=0), "batch_size must be a whole number >= 1, got 0"),
             (lambda: m.accuracy(x, [0, 1, 2]), "targets: 3 targets for 4 samples"),
             (lambda: m.accuracy(x, np.eye(5)[:4]), "targets: one-hot targets are [5] wide, the model outputs [3]")]
    for call, message in cases:
        with pytest.raises(netspec.DataError) as exc:
            call()
        assert str(exc.value) == message
