"""One gradient check over the whole layer registry and every loss, float64.

Design: ``check_layer`` drives a layer directly (forward, then backward of a
random ``dout``) and compares d/d(input) and every parameter gradient with
central differences. The objective is ``sum(forward(x) * dout)``, whose
gradient is exactly what ``backward(dout)`` must return. ``backward`` gets a
copy of ``dout`` that must come back unchanged, so a layer writing into its
argument is caught. Inputs come from ``separated`` (distinct values, well apart
from each other and from 0), so no perturbation crosses a ReLU kink or changes
a pooling winner; the checker asserts that none did rather than skipping.
"""
import numpy as np
import pytest

import netspec.kernels
from netspec.gradcheck import numerical_gradient, relative_error
from netspec.layers import LAYERS, LOSSES, MultiInputLayer
from netspec.layers.activations import ReLU
from netspec.layers.dense import Dense
from netspec.layers.losses import MeanSquaredError

from layer_cases import LAYER_CASES

TOL = 1e-6   # normwise relative error allowed in float64
H = 1e-5     # central-difference step


def separated(shape, rng, low=-2.0, high=2.0):
    """Distinct values evenly spread over [low, high] in random order, none within half a gap of 0."""
    n = int(np.prod(shape))
    gap = (high - low) / n
    values = low + gap * (np.arange(n) + 0.5)     # symmetric grid: 0 falls mid-gap
    return rng.permutation(values).reshape(shape)


def make_layer(type_, in_shapes, seed=0, name=None, **fields):
    """A float64 layer of ``type_`` built from its validated spec, with random (not init) parameters.

    Random parameters rather than the layer's init: a zero bias or a unit gamma
    would let a wrong gradient term hide.
    """
    cls = LAYERS[type_]
    spec = cls.Spec.model_validate({"type": type_, **fields})
    layer = cls(spec, name or f"{cls.prefix}1", spec.inputs or ["input"], in_shapes)
    layer.build(np.random.default_rng(seed), np.float64)
    layer.kernels = netspec.kernels.load()  # what a Model gives each of its layers
    rng = np.random.default_rng(seed)
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    return layer


def check_layer(layer, xs, *, train=False, seed=0, tol=TOL, h=H):
    """Assert back-propagation through ``layer`` matches central differences; returns the errors.

    ``xs`` is the list of inputs (one per input of the layer). Dropout gets the
    same generator state before every forward, so every evaluation sees one mask.
    """
    multi = isinstance(layer, MultiInputLayer)
    assert len(xs) == len(layer.in_shapes)

    def run():
        layer.set_rng(np.random.default_rng(seed))
        return layer.forward(list(xs) if multi else xs[0], train=train)

    out = run()
    assert out.shape == (xs[0].shape[0],) + layer.out_shape, "forward disagrees with infer_shape"
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    sent = dout.copy()
    dxs = layer.backward(sent)
    assert np.array_equal(sent, dout), f"{layer.name}.backward wrote into its argument dout"
    dxs = list(dxs) if multi else [dxs]
    analytic = {f"d(input {i})": dx for i, dx in enumerate(dxs)}
    assert set(layer.grads) == set(layer.params), "backward must fill a gradient for every parameter"
    analytic.update({f"d({k})": g.copy() for k, g in layer.grads.items()})
    wrt = {f"d(input {i})": x for i, x in enumerate(xs)}
    wrt.update({f"d({k})": p for k, p in layer.params.items()})

    base = _kinks(layer)

    def objective():
        return float(np.sum(run() * dout))

    def smooth():
        return all(np.array_equal(a, b) for a, b in zip(base, _kinks(layer)))

    errors = {}
    for key, x in wrt.items():
        assert analytic[key].shape == x.shape, f"{key} shaped {analytic[key].shape}, expected {x.shape}"
        numeric = numerical_gradient(objective, x, h=h, smooth=smooth)
        assert not np.isnan(numeric).any(), f"{key}: a perturbation crossed a kink; inputs not separated"
        assert np.abs(numeric).max() > 1e-3, f"{key}: gradient is zero, the check would prove nothing"
        errors[key] = relative_error(analytic[key], numeric)
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"{layer.name} ({layer.spec.type}): relative error above {tol:g}: {bad}"
    return errors


def _kinks(layer):
    state = layer.kink_state()
    return [] if state is None else [np.copy(state)]


def check_loss(loss, y, t, *, tol=TOL, h=H):
    """Assert ``loss.backward()`` is the gradient of ``loss.forward(y, t)`` in y; returns the error."""
    t_before = np.copy(t)
    loss.forward(y, t)
    dy = loss.backward().copy()
    assert dy.shape == y.shape
    numeric = numerical_gradient(lambda: loss.forward(y, t), y, h=h)
    assert np.array_equal(t, t_before), "the loss wrote into its targets"
    assert np.abs(numeric).max() > 1e-3
    err = relative_error(dy, numeric)
    assert err <= tol, f"{loss.name}: relative error {err:.2e} above {tol:g}"
    return err


# --- the cases: every registered type, several variants each -------------------

def _inputs(case, seed=0):
    rng = np.random.default_rng(seed)
    return [separated((case.n,) + tuple(s), rng) for s in case.in_shapes]


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_layer_gradients(case):
    layer = make_layer(case.type, case.in_shapes, **case.fields)
    if case.type == "batchnorm":
        # test mode normalises with running statistics: make them something other than 0 and 1
        rng = np.random.default_rng(7)
        layer.running_mean[...] = rng.standard_normal(layer.running_mean.shape)
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.running_var.shape)
    check_layer(layer, _inputs(case), train=case.train)


LOSS_CASES = [
    ("softmax_cross_entropy", "labels"),
    ("softmax_cross_entropy", "one-hot"),
    ("softmax_cross_entropy", "probabilities"),
    ("mse", "vector"),
    ("mse", "single-output"),
    ("sse", "vector"),
    ("sse", "single-output"),
]


def _loss_inputs(variant, rng, n=4, k=5):
    k = 1 if variant == "single-output" else k
    y = rng.standard_normal((n, k))
    if variant == "labels":
        return y, rng.integers(0, k, size=n)
    if variant == "one-hot":
        return y, np.eye(k)[rng.integers(0, k, size=n)]
    if variant == "probabilities":
        p = rng.uniform(0.1, 1.0, (n, k))
        return y, p / p.sum(axis=1, keepdims=True)
    return y, rng.standard_normal((n, k))


@pytest.mark.parametrize("loss_name,variant", LOSS_CASES, ids=lambda v: str(v))
def test_loss_gradients(loss_name, variant):
    y, t = _loss_inputs(variant, np.random.default_rng(3))
    check_loss(LOSSES[loss_name](), y, t)


def test_every_layer_type_and_loss_has_a_gradient_case():
    """Registering a layer or loss without adding it here fails this test."""
    assert {c.type for c in LAYER_CASES} == set(LAYERS)
    assert {name for name, _ in LOSS_CASES} == set(LOSSES)


def test_separated_inputs_have_no_ties_and_no_zeros():
    x = separated((3, 4, 5), np.random.default_rng(0))
    assert len(np.unique(x)) == x.size
    assert np.abs(x).min() == pytest.approx(2.0 / x.size)   # half a gap from 0
    assert np.diff(np.sort(x.ravel())).min() == pytest.approx(4.0 / x.size)


# --- the checker must fail on a wrong backward ----------------------------------

def test_checker_catches_relu_backward_without_mask(monkeypatch):
    monkeypatch.setattr(ReLU, "backward", lambda self, dout: dout * 1.0)
    layer = make_layer("relu", [(6,)])
    with pytest.raises(AssertionError, match=r"relative error above 1e-06: \{'d\(input 0\)'"):
        check_layer(layer, [separated((2, 6), np.random.default_rng(0))])


def test_checker_catches_a_slightly_wrong_weight_gradient(monkeypatch):
    original = Dense.backward

    def backward(self, dout):
        dx = original(self, dout)
        self.grads["W"] = self.grads["W"] * (1 + 1e-4)   # off by 0.01 %
        return dx

    monkeypatch.setattr(Dense, "backward", backward)
    layer = make_layer("dense", [(4,)], units=3)
    with pytest.raises(AssertionError, match=r"relative error above 1e-06: \{'d\(W\)': 9\.99\d*e-05\}"):
        check_layer(layer, [separated((2, 4), np.random.default_rng(0))])


def test_checker_catches_a_backward_that_writes_into_dout(monkeypatch):
    def backward(self, dout, need_dx=True):
        dout *= self.out > 0     # the right gradient, computed in place in the caller's array
        return dout

    monkeypatch.setattr(ReLU, "backward", backward)
    layer = make_layer("relu", [(6,)])
    with pytest.raises(AssertionError, match="relu1.backward wrote into its argument dout"):
        check_layer(layer, [separated((2, 6), np.random.default_rng(0))])


def test_checker_catches_a_parameter_without_gradient(monkeypatch):
    original = Dense.backward

    def backward(self, dout):
        dx = original(self, dout)
        del self.grads["b"]
        return dx

    monkeypatch.setattr(Dense, "backward", backward)
    layer = make_layer("dense", [(4,)], units=3)
    with pytest.raises(AssertionError, match="backward must fill a gradient for every parameter"):
        check_layer(layer, [separated((2, 4), np.random.default_rng(0))])


def test_checker_refuses_inputs_at_a_relu_kink():
    layer = make_layer("relu", [(3,)])
    x = np.array([[0.5, 0.0, -0.5]])
    with pytest.raises(AssertionError, match="crossed a kink"):
        check_layer(layer, [x])


def test_loss_checker_catches_mse_missing_factor_two(monkeypatch):
    monkeypatch.setattr(MeanSquaredError, "backward", lambda self: self.diff / self.diff.size)
    y, t = _loss_inputs("vector", np.random.default_rng(0))
    with pytest.raises(AssertionError, match=r"mse: relative error 5\.00e-01 above 1e-06"):
        check_loss(MeanSquaredError(), y, t)


def test_relative_error_is_judged_against_the_whole_array_when_sampling():
    # a sample of ReLU-dead elements: analytic round-off 2e-12, numeric exactly 0
    assert relative_error([2e-12, 0.0], [0.0, 0.0]) == 1.0
    assert relative_error([2e-12, 0.0], [0.0, 0.0], scale=0.1) == pytest.approx(2e-11)
    # a wrong gradient stays O(1) whatever the scale
    assert relative_error([0.2, 0.1], [0.1, 0.1], scale=0.1) == pytest.approx(0.5)
    # elements skipped at kinks (NaN numeric) are left out
    assert relative_error([1.0, 5.0], [1.0, np.nan]) == 0.0
    # every element skipped: nothing compared, no error to report (check_model's "checked" says 0)
    assert relative_error([1.0, 2.0], [np.nan, np.nan], scale=2.0) == 0.0
