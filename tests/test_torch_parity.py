"""PyTorch as an independent reference, float64: every layer, every loss, the optimizers, one training step
(simple_convnet, and the resnet_fashion spec through netspec's Trainer).

Design: netspec's conventions are translated into torch calls explicitly, never
approximated: dense ``W`` is (in, out) and torch's Linear weight is its
transpose; batchnorm's ``momentum`` weighs the old running statistics (torch's
is ``1 - momentum``) and netspec's running variance is the biased one; dropout
in torch is driven by netspec's own mask, since the two RNGs differ. Where the
book's update rules are not torch.optim's (Adam's epsilon, momentum under a
changing learning rate), netspec is checked against the book's formula written
out here, and the difference from torch is shown to be real.
docs/book_vs_torch.md explains each difference.
"""
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from extras import need

torch = need("torch")
F = torch.nn.functional

import netspec  # noqa: E402
from netspec.data import load_data  # noqa: E402
from netspec.expand import expanded  # noqa: E402
from layer_cases import LAYER_CASES  # noqa: E402
from netspec.layers import LAYERS, LOSSES, MultiInputLayer  # noqa: E402
from netspec.optim import make_optimizer, scheduled_lr  # noqa: E402
from netspec.optim_spec import (AdaGradSpec, AdamSpec, MomentumSpec, NesterovSpec, RMSpropSpec,  # noqa: E402
                                SGDSpec)
from netspec.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.torch

TOL = 1e-10
SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


def rel_err(ours, ref):
    """max|ours - ref| / max|ref|, normwise over the array; NaN anywhere counts as infinite."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape}, torch {ref.shape}"
    if np.isnan(ours).any() or np.isnan(ref).any():
        return math.inf
    scale = np.abs(ref).max(initial=0.0)
    diff = np.abs(ours - ref).max(initial=0.0)
    return float(diff / scale) if scale else float(diff)


def assert_close(what, ours, ref, tol=TOL):
    err = rel_err(ours, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} against torch, expected <= {tol:g}"


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# --- layers ----------------------------------------------------------------------------

def test_every_layer_type_has_a_parity_case():
    """A newly registered layer type fails here until it gets a torch reference."""
    covered = {c.type for c in LAYER_CASES}
    assert covered == set(LAYERS), f"no parity case for {sorted(set(LAYERS) - covered)}"
    assert set(TORCH_LAYERS) == set(LAYERS)


def compile_layer(case):
    """Compile a spec whose last layer is the one under test; merges get one feeder per input."""
    layer_spec = {"type": case.type, "name": "under_test", **case.fields}
    layers = []
    if LAYERS[case.type].n_inputs is None:
        first = case.in_shapes[0]
        input_shape = list(first) if len(first) == 1 else [1, *first[1:]]
        for i, s in enumerate(case.in_shapes):
            # a dense or 1x1 conv feeder turns the input into the shape this case needs
            if len(s) == 1:
                feeder = {"type": "dense", "units": s[0]}
            else:
                feeder = {"type": "conv2d", "filters": s[0], "kernel": 1}
            layers.append({**feeder, "name": f"in{i}", "inputs": ["input"]})
        layer_spec["inputs"] = [f"in{i}" for i in range(len(case.in_shapes))]
    else:
        input_shape = list(case.in_shapes[0])
    spec = {"name": "parity", "input": {"shape": input_shape}, "layers": layers + [layer_spec], "loss": "mse"}
    layer = netspec.compile(spec, dtype="float64").layers[-1]
    assert layer.name == "under_test" and [tuple(s) for s in layer.in_shapes] == [tuple(s) for s in case.in_shapes]
    return layer


def _conv(layer, xs, p, train):
    return F.conv2d(xs[0], p["W"], p.get("b"), stride=layer.spec.stride, padding=layer.spec.pad)


def _pool(fn, **kw):
    def run(layer, xs, p, train):
        return fn(xs[0], tuple(layer.spec.size), stride=layer.spec.stride or layer.spec.size[0],
                  padding=layer.spec.pad, **kw)
    return run


def _dense(layer, xs, p, train):
    # torch.nn.Linear keeps its weight as (out, in): p["W"] here is netspec's W transposed
    return F.linear(xs[0].flatten(1), p["W"], p.get("b"))


def _dropout(layer, xs, p, train):
    if layer.scale is None:
        return F.dropout(xs[0], layer.spec.ratio, training=False)
    # torch's own RNG cannot reproduce netspec's draw: use netspec's keep-mask in torch's formula
    keep = t64(layer.scale != 0)
    return xs[0] * keep / (1 - layer.spec.ratio)


def _batchnorm(layer, xs, p, train):
    layer.torch_running = (t64(layer.running_before[0]), t64(layer.running_before[1]))
    return F.batch_norm(xs[0], *layer.torch_running, p["gamma"], p["beta"], training=train,
                        momentum=1 - layer.spec.momentum, eps=layer.spec.eps)


def _add(layer, xs, p, train):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


TORCH_LAYERS = {
    "dense": _dense,
    "affine": _dense,
    "flatten": lambda layer, xs, p, train: torch.flatten(xs[0], 1),
    "conv2d": _conv,
    "maxpool2d": _pool(F.max_pool2d),
    "avgpool2d": _pool(F.avg_pool2d, count_include_pad=True),
    "globalavgpool2d": lambda layer, xs, p, train: torch.flatten(F.adaptive_avg_pool2d(xs[0], 1), 1),
    "relu": lambda layer, xs, p, train: torch.relu(xs[0]),
    "sigmoid": lambda layer, xs, p, train: torch.sigmoid(xs[0]),
    "tanh": lambda layer, xs, p, train: torch.tanh(xs[0]),
    "softmax": lambda layer, xs, p, train: F.softmax(xs[0], dim=-1),
    "dropout": _dropout,
    "batchnorm": _batchnorm,
    "add": _add,
    "concat": lambda layer, xs, p, train: torch.cat(xs, dim=1),
}


def _to_torch_layout(layer, name, a):
    return a.T if layer.spec.type in ("dense", "affine") and name == "W" else a


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_layer_matches_torch(case):
    layer = compile_layer(case)
    rng = np.random.default_rng(0)
    for p in layer.params.values():   # random, not init: unit gammas and zero biases hide mistakes
        p[...] = rng.standard_normal(p.shape)
    if case.type == "batchnorm":
        layer.running_mean[...] = rng.standard_normal(layer.running_mean.shape)
        layer.running_var[...] = rng.uniform(0.5, 2.0, layer.running_var.shape)
        layer.running_before = (layer.running_mean.copy(), layer.running_var.copy())
    layer.set_rng(np.random.default_rng(1))
    xs = [rng.standard_normal((case.n,) + tuple(s)) for s in case.in_shapes]
    multi = isinstance(layer, MultiInputLayer)

    out = layer.forward(list(xs) if multi else xs[0], train=case.train)
    dout = rng.standard_normal(out.shape)
    dxs = layer.backward(dout.copy())
    dxs = list(dxs) if multi else [dxs]

    xs_t = [t64(x, grad=True) for x in xs]
    params_t = {k: t64(_to_torch_layout(layer, k, v), grad=True) for k, v in layer.params.items()}
    out_t = TORCH_LAYERS[case.type](layer, xs_t, params_t, case.train)
    out_t.backward(t64(dout))

    assert_close("output", out, out_t)
    for i, (dx, x_t) in enumerate(zip(dxs, xs_t)):
        assert_close(f"d(input {i})", dx, x_t.grad)
    assert set(layer.grads) == set(layer.params)
    for k, g in layer.grads.items():
        assert_close(f"d({k})", _to_torch_layout(layer, k, g), params_t[k].grad)
    if case.type == "dropout" and case.train:
        kept = layer.scale[layer.scale != 0]
        assert kept.size and np.all(kept == 1 / (1 - case.fields["ratio"])), "inverted dropout scale"
    if case.type == "batchnorm":
        _check_running_stats(layer, case)


def _check_running_stats(layer, case):
    rm_t, rv_t = layer.torch_running
    if not case.train:
        assert np.array_equal(layer.running_mean, layer.running_before[0])
        assert np.array_equal(layer.running_var, layer.running_before[1])
        return
    assert_close("running_mean", layer.running_mean, rm_t)
    # torch folds the unbiased batch variance into its running variance, netspec the biased one:
    # recover torch's batch variance from its update and rescale it by (n - 1) / n before comparing
    m = layer.spec.momentum
    n = case.n * int(np.prod(case.in_shapes[0][1:]))   # samples per feature: N, or N*H*W
    batch_var_unbiased = (rv_t.numpy() - m * layer.running_before[1]) / (1 - m)
    expected = m * layer.running_before[1] + (1 - m) * batch_var_unbiased * (n - 1) / n
    assert_close("running_var", layer.running_var, expected)
    assert rel_err(layer.running_var, rv_t) > 1e-3, "running variances should differ by the n/(n-1) factor"


# --- losses ----------------------------------------------------------------------------

def _targets(kind, y, rng):
    N, K = y.shape[0], y.shape[-1]
    if kind == "labels":
        return rng.integers(0, K, N)
    if kind == "one-hot":
        return np.eye(K)[rng.integers(0, K, N)]
    if kind == "probabilities":
        return rng.dirichlet(np.ones(K), N)
    return rng.standard_normal(y.shape)


LOSS_CASES = [
    ("softmax_cross_entropy", "labels", (5, 4)),
    ("softmax_cross_entropy", "one-hot", (5, 4)),
    ("softmax_cross_entropy", "probabilities", (5, 4)),
    ("mse", "values", (5, 3)),
    ("mse", "values", (2, 3, 2, 4)),
    ("sse", "values", (5, 3)),
    ("sse", "values", (1, 4)),
    ("sse", "values", (2, 3, 2, 4)),
]


def _torch_loss(name, y, t):
    N = y.shape[0]
    if name == "softmax_cross_entropy":   # class indices, or probability rows (one-hot included)
        return F.cross_entropy(y, t)
    if name == "mse":
        return F.mse_loss(y, t)   # mean over every element
    return 0.5 * F.mse_loss(y, t, reduction="sum") / N   # sse: 0.5 * sum per sample, mean over the batch


def test_every_loss_has_a_parity_case():
    assert {name for name, _, _ in LOSS_CASES} == set(LOSSES)


@pytest.mark.parametrize("name,kind,shape", LOSS_CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_loss_matches_torch(name, kind, shape):
    rng = np.random.default_rng(2)
    y = rng.standard_normal(shape) * 3
    t = _targets(kind, y, rng)
    loss = LOSSES[name]()
    value = loss.forward(y, t)
    dy = loss.backward()
    y_t = t64(y, grad=True)
    value_t = _torch_loss(name, y_t, torch.tensor(t))
    value_t.backward()
    assert_close("loss", value, value_t)
    assert_close("d(y)", dy, y_t.grad)


def test_cross_entropy_has_no_1e7_floor():
    """A confidently wrong prediction costs its full log-probability, as in torch.

    The book's -log(y + 1e-7) would cap the loss at -log(1e-7) = 16.1; netspec's
    log-sum-exp and torch's log_softmax agree far beyond it.
    """
    y = np.array([[60.0, 0.0, -5.0], [0.0, 1.0, 2.0]])
    t = np.array([2, 0])
    loss = LOSSES["softmax_cross_entropy"]()
    value = loss.forward(y, t)
    y_t = t64(y, grad=True)
    value_t = F.cross_entropy(y_t, torch.tensor(t))
    value_t.backward()
    assert value > 30 > -math.log(1e-7)
    assert_close("loss", value, value_t)
    assert_close("d(y)", loss.backward(), y_t.grad)


# --- optimizers --------------------------------------------------------------------------
# Every trajectory descends the same smooth objective from the same start:
#   f(p) = sum(0.5 * c * p^2 + s * sin(p)),  grad = c * p + s * cos(p),
# so each step's gradient depends on where the previous steps went.

STEPS = 30   # "a few dozen" steps: enough for momentum terms to compound


def _start():
    rng = np.random.default_rng(3)
    params = {"fc.W": rng.standard_normal((3, 4)), "fc.b": rng.standard_normal(4)}
    coef = {k: (rng.uniform(0.5, 2.0, v.shape), rng.uniform(-1.0, 1.0, v.shape)) for k, v in params.items()}
    return params, coef


def _grad(coef, name, p):
    c, s = coef[name]
    return c * p + s * np.cos(p)


def netspec_trajectory(spec, lrs=None):
    """Parameters after each of STEPS updates by netspec's optimizer; ``lrs`` changes opt.lr per step."""
    params, coef = _start()
    opt = make_optimizer(spec)
    out = []
    for step in range(STEPS):
        if lrs is not None:
            opt.lr = lrs[step]
        opt.update(params, {k: _grad(coef, k, p) for k, p in params.items()})
        out.append({k: p.copy() for k, p in params.items()})
    return out


def torch_trajectory(make_opt, before_step=None):
    """The same descent driven by a torch.optim optimizer (gradients by autograd)."""
    params, coef = _start()
    params_t = {k: t64(p, grad=True) for k, p in params.items()}
    coef_t = {k: (t64(c), t64(s)) for k, (c, s) in coef.items()}
    opt = make_opt(list(params_t.values()))
    out = []
    for step in range(STEPS):
        opt.zero_grad()
        f = sum((0.5 * coef_t[k][0] * p * p + coef_t[k][1] * torch.sin(p)).sum() for k, p in params_t.items())
        f.backward()
        if before_step:
            before_step(opt, step)
        opt.step()
        out.append({k: p.detach().numpy().copy() for k, p in params_t.items()})
    return out


def closed_form_trajectory(rule, hp, lrs=None):
    """The documented update rules written out in numpy (weight decay adds wd * p to the gradient)."""
    params, coef = _start()
    state = {k: {"v": np.zeros_like(p), "h": np.zeros_like(p), "m": np.zeros_like(p)} for k, p in params.items()}
    out = []
    for step in range(STEPS):
        t = step + 1
        lr = hp["lr"] if lrs is None else lrs[step]
        for k, p in params.items():
            g = _grad(coef, k, p) + hp.get("weight_decay", 0.0) * p
            st = state[k]
            if rule == "sgd":
                p -= lr * g
            elif rule == "momentum":
                st["v"] = hp["momentum"] * st["v"] - lr * g
                p += st["v"]
            elif rule == "nesterov":   # m*m applied to the velocity before this step
                m = hp["momentum"]
                v_old = st["v"]
                st["v"] = m * v_old - lr * g
                p += m * m * v_old - (1 + m) * lr * g
            elif rule == "nesterov_prefix":   # the book's code before its 2021 fix: m*m on the new velocity
                m = hp["momentum"]
                st["v"] = m * st["v"] - lr * g
                p += m * m * st["v"]
                p -= (1 + m) * lr * g
            elif rule == "adagrad":
                st["h"] = st["h"] + g * g
                p -= lr * g / (np.sqrt(st["h"]) + hp["eps"])
            elif rule == "rmsprop":
                st["h"] = hp["decay"] * st["h"] + (1 - hp["decay"]) * g * g
                p -= lr * g / (np.sqrt(st["h"]) + hp["eps"])
            elif rule == "adam":   # bias correction folded into lr_t; eps added to the uncorrected sqrt(v)
                b1, b2 = hp["beta1"], hp["beta2"]
                lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                st["m"] = st["m"] + (1 - b1) * (g - st["m"])
                st["v"] = st["v"] + (1 - b2) * (g * g - st["v"])
                p -= lr_t * st["m"] / (np.sqrt(st["v"]) + hp["eps"])
            else:
                raise AssertionError(rule)
        out.append({k: p.copy() for k, p in params.items()})
    return out


def trajectory_error(ours, ref):
    """Worst relative error over steps and parameters of the displacement from the start p_t - p_0."""
    start, _ = _start()
    return max(rel_err(o[k] - start[k], r[k] - start[k]) for o, r in zip(ours, ref) for k in start)


SPEC_TYPES = {"sgd": SGDSpec, "momentum": MomentumSpec, "nesterov": NesterovSpec,
              "adagrad": AdaGradSpec, "rmsprop": RMSpropSpec, "adam": AdamSpec}


def opt_spec(rule, **hp):
    return SPEC_TYPES[rule].model_validate({"type": rule, **hp})


TORCH_OPT_CASES = [
    # (id, netspec spec fields, torch.optim constructor)
    ("sgd", {"type": "sgd", "lr": 0.1},
     lambda ps: torch.optim.SGD(ps, lr=0.1)),
    ("sgd-weight-decay", {"type": "sgd", "lr": 0.1, "weight_decay": 0.05},
     lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.05)),
    # torch: buf = m*buf + g; p -= lr*buf.  book: v = m*v - lr*g; p += v.  v = -lr*buf while lr is constant
    ("momentum", {"type": "momentum", "lr": 0.05, "momentum": 0.9},
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    ("momentum-weight-decay", {"type": "momentum", "lr": 0.05, "momentum": 0.8, "weight_decay": 0.1},
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, weight_decay=0.1)),
    # torch's nesterov=True steps p -= lr*(g + m*buf_new); with v = -lr*buf that is
    # p += m*m*v_old - (1+m)*lr*g, then v = m*v_old - lr*g: netspec's rule
    ("nesterov", {"type": "nesterov", "lr": 0.05, "momentum": 0.9},
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)),
    ("nesterov-weight-decay", {"type": "nesterov", "lr": 0.02, "momentum": 0.5, "weight_decay": 0.1},
     lambda ps: torch.optim.SGD(ps, lr=0.02, momentum=0.5, weight_decay=0.1, nesterov=True)),
    # torch's accumulator starts at initial_accumulator_value=0 and eps goes after the sqrt, as in the book
    ("adagrad", {"type": "adagrad", "lr": 0.3, "eps": 1e-7},
     lambda ps: torch.optim.Adagrad(ps, lr=0.3, eps=1e-7)),
    ("adagrad-weight-decay", {"type": "adagrad", "lr": 0.3, "eps": 1e-3, "weight_decay": 0.1},
     lambda ps: torch.optim.Adagrad(ps, lr=0.3, eps=1e-3, weight_decay=0.1)),
    # torch's alpha is our decay; eps after the sqrt
    ("rmsprop", {"type": "rmsprop", "lr": 0.01, "decay": 0.99, "eps": 1e-7},
     lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.99, eps=1e-7)),
    ("rmsprop-weight-decay", {"type": "rmsprop", "lr": 0.02, "decay": 0.9, "eps": 1e-3, "weight_decay": 0.1},
     lambda ps: torch.optim.RMSprop(ps, lr=0.02, alpha=0.9, eps=1e-3, weight_decay=0.1)),
]


@pytest.mark.parametrize("fields,make_opt", [c[1:] for c in TORCH_OPT_CASES], ids=[c[0] for c in TORCH_OPT_CASES])
def test_optimizer_trajectory_matches_torch(fields, make_opt):
    spec = SPEC_TYPES[fields["type"]].model_validate(fields)
    err = trajectory_error(netspec_trajectory(spec), torch_trajectory(make_opt))
    assert err <= TOL, f"{STEPS}-step trajectory differs from torch.optim by {err:.3e}"


ADAM = {"lr": 0.05, "beta1": 0.9, "beta2": 0.999}


def torch_adam(eps, weight_decay=0.0):
    return lambda ps: torch.optim.Adam(ps, lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]),
                                       eps=eps, weight_decay=weight_decay)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_torch_with_eps_translated(weight_decay):
    """netspec's Adam is torch's Adam whose eps at step t is eps / sqrt(1 - beta2^t).

    The book adds eps to sqrt(v) before the bias correction sqrt(1 - beta2^t), which
    is folded into the step size; torch adds it after. Feeding torch the translated
    eps each step makes the two formulas identical.
    """
    eps = 1e-3   # large enough that a wrong translation would show
    spec = opt_spec("adam", eps=eps, weight_decay=weight_decay, **ADAM)

    def translate_eps(opt, step):
        opt.param_groups[0]["eps"] = eps / math.sqrt(1 - ADAM["beta2"] ** (step + 1))

    ref = torch_trajectory(torch_adam(eps, weight_decay), before_step=translate_eps)
    err = trajectory_error(netspec_trajectory(spec), ref)
    assert err <= TOL, f"Adam with translated eps differs from torch by {err:.3e}"


def test_adam_matches_torch_with_eps_zero():
    """With eps = 0 on both sides the two placements coincide exactly.

    netspec's spec refuses eps = 0 (a zero gradient would divide 0 by 0), so the
    spec is built without validation for this check only.
    """
    spec = AdamSpec.model_construct(type="adam", eps=0.0, weight_decay=0.0, **ADAM)
    ref = torch_trajectory(torch_adam(eps=0.0))
    err = trajectory_error(netspec_trajectory(spec), ref)
    assert err <= TOL, f"Adam with eps=0 differs from torch by {err:.3e}"


def test_adam_same_eps_differs_from_torch_within_bound():
    """Same eps: the first step differs from torch's, relatively, by at most eps*(1/sqrt(1-beta2) - 1)/min|g|.

    First step: m = (1-b1) g, v = (1-b2) g^2. netspec moves lr*g/(|g| + eps/c) with
    c = sqrt(1-b2), torch lr*g/(|g| + eps); their ratio differs from 1 by at most
    eps*(1/c - 1)/|g|. The difference is real but, for the default eps, negligible.
    """
    eps = 1e-7
    params, coef = _start()
    g_min = min(np.abs(_grad(coef, k, p)).min() for k, p in params.items())
    ours = netspec_trajectory(opt_spec("adam", eps=eps, **ADAM))[0]
    ref = torch_trajectory(torch_adam(eps))[0]
    bound = eps * (1 / math.sqrt(1 - ADAM["beta2"]) - 1) / g_min
    errs = [rel_err(ours[k] - params[k], ref[k] - params[k]) for k in params]
    assert max(errs) <= bound * 1.01 + 1e-14
    assert max(errs) > TOL, "the eps placements should give visibly different steps"


CLOSED_FORM_CASES = [
    ("sgd", {"lr": 0.1, "weight_decay": 0.05}),
    ("momentum", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05}),
    ("nesterov", {"lr": 0.05, "momentum": 0.9}),
    ("nesterov", {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.1}),
    ("adagrad", {"lr": 0.3, "eps": 1e-3, "weight_decay": 0.05}),
    ("rmsprop", {"lr": 0.02, "decay": 0.9, "eps": 1e-3, "weight_decay": 0.05}),
    ("adam", {**ADAM, "eps": 1e-7}),
    ("adam", {**ADAM, "eps": 1e-3, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("rule,hp", CLOSED_FORM_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CLOSED_FORM_CASES)])
def test_optimizer_trajectory_matches_book_formula(rule, hp):
    err = trajectory_error(netspec_trajectory(opt_spec(rule, **hp)), closed_form_trajectory(rule, hp))
    assert err <= TOL, f"{rule}: {STEPS}-step trajectory differs from the documented formula by {err:.3e}"


def test_nesterov_is_not_the_pre_fix_book_form():
    """The book's code before its 2021 fix applied m*m to the updated velocity, which is not
    Nesterov's method: its first step is (1 + m + m^2)*lr*g, netspec's and torch's (1 + m)*lr*g."""
    hp = {"lr": 0.05, "momentum": 0.9}
    ours = netspec_trajectory(opt_spec("nesterov", **hp))
    assert trajectory_error(ours, closed_form_trajectory("nesterov_prefix", hp)) > 0.05
    start, coef = _start()
    for k in start:
        g = _grad(coef, k, start[k])
        assert_close(f"first step {k}", ours[0][k] - start[k], -(1 + 0.9) * 0.05 * g)


def test_momentum_under_changing_lr_differs_from_torch():
    """The book's velocity stores lr*g; torch's buffer stores g and multiplies by the current lr.

    Identical while lr is constant (tested above); once a schedule changes lr,
    netspec keeps the old lr inside its velocity, as the book's formula does.
    """
    lrs = [0.05] * 5 + [0.01] * (STEPS - 5)
    hp = {"lr": 0.05, "momentum": 0.9}
    ours = netspec_trajectory(opt_spec("momentum", **hp), lrs=lrs)
    assert trajectory_error(ours, closed_form_trajectory("momentum", hp, lrs=lrs)) <= TOL

    def schedule(opt, step):
        opt.param_groups[0]["lr"] = lrs[step]

    ref = torch_trajectory(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), before_step=schedule)
    assert trajectory_error(ours[:5], ref[:5]) <= TOL
    assert trajectory_error(ours, ref) > 1e-3


# --- a whole network: simple_convnet, one training step -------------------------------

@pytest.fixture(scope="module")
def mnist_batch():
    model = netspec.compile(SPECS_DIR / "simple_convnet.yaml", dtype="float64")
    data = load_data(model.spec.train.data, dtype="float64")
    return data.x_train[:100], data.t_train[:100]


def torch_simple_convnet(model):
    """torch.nn twin of specs/simple_convnet.yaml carrying the compiled model's weights."""
    p = model.params
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 30, 5, stride=1, padding=0), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Flatten(), torch.nn.Linear(30 * 12 * 12, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10),
    ).double()
    names = {"0.weight": "conv1.W", "0.bias": "conv1.b", "4.weight": "affine1.W", "4.bias": "affine1.b",
             "6.weight": "affine2.W", "6.bias": "affine2.b"}
    with torch.no_grad():
        for tname, tparam in net.named_parameters():
            ours = p[names[tname]]
            tparam.copy_(t64(ours.T if ours.ndim == 2 else ours))
    return net, names


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_simple_convnet_training_step_matches_torch(optimizer, mnist_batch):
    x, t = mnist_batch
    model = netspec.compile(SPECS_DIR / "simple_convnet.yaml", dtype="float64")
    net, names = torch_simple_convnet(model)
    if optimizer == "adam":
        spec = model.spec.train.optimizer   # the spec's own: Adam, lr 0.001, eps 1e-7
        assert spec.type == "adam" and spec.lr == 0.001
        # one step: torch's eps after the bias correction equals ours divided by sqrt(1 - beta2)
        opt_t = torch.optim.Adam(net.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2),
                                 eps=spec.eps / math.sqrt(1 - spec.beta2))
    else:
        spec = SGDSpec(type="sgd", lr=0.1)
        opt_t = torch.optim.SGD(net.parameters(), lr=0.1)
    start = {k: v.copy() for k, v in model.params.items()}

    loss, grads = model.gradient(x, t)
    opt_t.zero_grad()
    loss_t = F.cross_entropy(net(t64(x)), torch.tensor(t))
    loss_t.backward()
    assert_close("loss", loss, loss_t)
    for tname, tparam in net.named_parameters():
        g = grads[names[tname]]
        assert_close(f"d({names[tname]})", g.T if g.ndim == 2 else g, tparam.grad)

    make_optimizer(spec).update(model.params, grads)
    opt_t.step()
    for tname, tparam in net.named_parameters():
        name = names[tname]
        new_t = tparam.detach().numpy()
        new_t = new_t.T if new_t.ndim == 2 else new_t
        assert_close(f"updated {name}", model.params[name], new_t)
        assert_close(f"update of {name}", model.params[name] - start[name], new_t - start[name])


def test_label_smoothing_equals_torch_cross_entropy_with_label_smoothing():
    """netspec's smoothed targets under softmax_cross_entropy = torch's label_smoothing=e."""
    rng = np.random.default_rng(3)
    y, t, e, K = rng.standard_normal((5, 7)), rng.integers(0, 7, 5), 0.15, 7
    smooth = (1 - e) * np.eye(K)[t] + e / K
    loss = LOSSES["softmax_cross_entropy"]()
    ours = loss.forward(y, smooth)
    yt = t64(y, grad=True)
    ref = F.cross_entropy(yt, torch.from_numpy(t), label_smoothing=e)
    ref.backward()
    assert_close("loss", np.array(ours), ref.detach())
    assert_close("dy", loss.backward(), yt.grad)


# --- a whole network: resnet_fashion (66 flat layers), one training step -------------

class TorchTwin:
    """A flat netspec spec (``netspec expand`` data) run with torch.nn.functional, float64.

    Built from the spec's fields alone (type, inputs, bias, stride, pad, size,
    momentum, eps; kernel sizes are the weights' shapes), not from netspec's layer
    objects; only the starting values come from the compiled model. Parameters are
    leaf tensors and buffers plain tensors, keyed by netspec's names
    ("<layer>.W", ".b", ".gamma", ".beta", ".running_mean", ".running_var"); a
    dense W is stored transposed, as torch's (out, in); ``decayed`` names the conv
    and dense weights. A layer without ``inputs`` reads the layer before it;
    ``in_shapes`` records what each layer read in the last forward pass.
    """

    def __init__(self, flat, params, buffers):
        self.layers = flat["layers"]
        self.params, self.buffers, self.decayed, self.in_shapes = {}, {}, set(), {}
        for layer in self.layers:
            kind, name = layer["type"], layer["name"]
            assert kind in self.RUN, f"layer type {kind!r} has no torch twin here"
            if kind in ("conv2d", "dense"):
                self.params[f"{name}.W"] = t64(params[f"{name}.W"].T if kind == "dense" else params[f"{name}.W"],
                                               grad=True)
                self.decayed.add(f"{name}.W")
                if layer["bias"]:
                    self.params[f"{name}.b"] = t64(params[f"{name}.b"], grad=True)
            elif kind == "batchnorm":
                for k in ("gamma", "beta"):
                    self.params[f"{name}.{k}"] = t64(params[f"{name}.{k}"], grad=True)
                for k in ("running_mean", "running_var"):
                    self.buffers[f"{name}.{k}"] = t64(buffers[f"{name}.{k}"])

    def forward(self, x):
        outs, prev = {"input": x}, "input"
        for layer in self.layers:
            name = layer["name"]
            xs = [outs[n] for n in layer["inputs"] or [prev]]
            self.in_shapes[name] = tuple(xs[0].shape)
            outs[name] = self.RUN[layer["type"]](self, layer, xs, lambda k: self.params.get(f"{name}.{k}"),
                                                 lambda k: self.buffers[f"{name}.{k}"])
            prev = name
        return outs[prev]

    def _conv(self, layer, xs, p, buf):
        stride, pad = (tuple(v) if isinstance(v, list) else v for v in (layer["stride"], layer["pad"]))
        return F.conv2d(xs[0], p("W"), p("b"), stride=stride, padding=pad)

    def _batchnorm(self, layer, xs, p, buf):
        # netspec's momentum weighs the old statistics, torch's the batch's
        return F.batch_norm(xs[0], buf("running_mean"), buf("running_var"), p("gamma"), p("beta"),
                            training=True, momentum=1 - layer["momentum"], eps=layer["eps"])

    def _maxpool(self, layer, xs, p, buf):
        size = tuple(layer["size"])
        stride = layer["stride"] or size
        return F.max_pool2d(xs[0], size, stride=tuple(stride) if isinstance(stride, list) else stride,
                            padding=layer["pad"])

    RUN = {
        "conv2d": _conv,
        "batchnorm": _batchnorm,
        "relu": lambda self, layer, xs, p, buf: torch.relu(xs[0]),
        "maxpool2d": _maxpool,
        "add": lambda self, layer, xs, p, buf: sum(xs[1:], xs[0]),
        "globalavgpool2d": lambda self, layer, xs, p, buf: xs[0].mean(dim=(2, 3)),
        "dense": lambda self, layer, xs, p, buf: F.linear(xs[0].flatten(1), p("W"), p("b")),
    }


def test_resnet_fashion_training_step_matches_torch(mnist_batch):
    """One float64 training step of specs/resnet_fashion.yaml: netspec's Trainer against a torch twin.

    netspec takes the step with ``Trainer.train_step``, as ``netspec train`` does: the
    optimizer made from ``train.optimizer`` (Nesterov, momentum 0.9, weight decay 5e-4
    with ``decay_bias_and_norm: false``, so the trainer exempts ``Model.no_decay_names()``:
    batchnorm gamma/beta and biases), label smoothing 0.1, and a learning rate the schedule
    gives (``scheduled_lr``, stepped per iteration as the epoch loop does: at the first step
    after the one-epoch warm-up the cosine starts at the full 0.1; the schedule is not
    bypassed, and the warm-up's first steps would move the weights too little to compare).
    The one change to the spec: augmentation off. The spec's Fashion-MNIST is not shipped;
    the batch is 16 of the shipped mnist-5k digits (any fixed images do).

    torch: the flat spec (``netspec expand`` data) run by TorchTwin with netspec's initial
    values; torch.optim.SGD(nesterov=True) with weight decay only in the group of conv and
    dense weights (docs/optimizers.md: netspec's Nesterov is torch's, decay folded into the
    gradient as g + wd*p); cross_entropy(label_smoothing=0.1), mean over the batch.

    Compared within TOL: the loss, all 59 parameter arrays (and each one's update), the
    running mean and variance of all 19 batchnorms (torch's unbiased variance converted).
    """
    x, t = (a[:16] for a in mnist_batch)
    flat, _ = expanded(SPECS_DIR / "resnet_fashion.yaml")
    assert len(flat["layers"]) == 66
    cfg = flat["train"]
    model = netspec.compile({**flat, "dtype": "float64", "train": {**cfg, "augment": None}})
    assert all(a.dtype == np.float64 for a in {**model.params, **model.buffers}.values())
    data = SimpleNamespace(name="mnist-5k[:16]", x_train=x, t_train=t, x_test=None, t_test=None,
                           x_val=None, t_val=None, val_index=None)
    trainer = Trainer(model, data, quiet=True, progress=False)
    sched = model.spec.train.schedule
    steps = 469   # per epoch of Fashion-MNIST's 60,000 images in batches of 128
    lr = scheduled_lr(model.spec.train.optimizer.lr, sched, steps * sched.warmup_epochs, trainer.epochs * steps, steps)
    assert (sched.type, sched.per, sched.warmup_epochs, lr) == ("cosine", "step", 1, 0.1)
    trainer.optimizer.lr = lr

    start = {k: v.copy() for k, v in model.params.items()}
    twin = TorchTwin(flat, model.params, model.buffers)
    running_start = {k: v.numpy().copy() for k, v in twin.buffers.items()}
    assert set(twin.params) == set(model.params) and set(twin.buffers) == set(model.buffers)
    # the decay split, found from layer types alone, is the one the trainer's optimizer applies
    assert set(twin.params) - twin.decayed == trainer.optimizer.no_decay

    loss = trainer.train_step(np.arange(len(x)))

    decayed = [p for k, p in twin.params.items() if k in twin.decayed]
    rest = [p for k, p in twin.params.items() if k not in twin.decayed]
    o = cfg["optimizer"]
    opt_t = torch.optim.SGD([{"params": decayed, "weight_decay": o["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=lr, momentum=o["momentum"], nesterov=True)
    loss_t = F.cross_entropy(twin.forward(t64(x)), torch.from_numpy(t), label_smoothing=cfg["label_smoothing"])
    loss_t.backward()
    opt_t.step()

    # relative errors by kind; each entry of each kind must be within TOL
    errs = {"loss": {"loss": rel_err(loss, loss_t.detach())}, "params": {}, "updates": {},
            "running_mean": {}, "running_var": {}}
    for k, p_t in twin.params.items():
        new_t = p_t.detach().numpy()
        new_t = new_t.T if k.endswith(".W") and new_t.ndim == 2 else new_t
        moved = np.abs(new_t - start[k]).max()
        assert moved > 1e-4, f"{k} moved by {moved:.1e} only: the comparison would be nearly vacuous"
        errs["params"][k] = rel_err(model.params[k], new_t)
        errs["updates"][k] = rel_err(model.params[k] - start[k], new_t - start[k])
    # the spec's own count: conv2d and dense have W (and b with bias: true), batchnorm gamma and beta
    counts = {"conv2d": lambda s: 1 + s["bias"], "dense": lambda s: 1 + s["bias"], "batchnorm": lambda s: 2}
    in_spec = sum(counts[s["type"]](s) for s in flat["layers"] if s["type"] in counts)
    assert len(errs["params"]) == len(model.params) == in_spec == 59, "a parameter array was not compared"

    # running statistics: netspec folds in the biased batch variance, torch the unbiased one.
    # Recover torch's batch variance from its update, rescale it by (n - 1)/n, apply netspec's rule.
    momentum = {s["name"]: s["momentum"] for s in flat["layers"] if s["type"] == "batchnorm"}
    raw_var_gap = 0.0
    for k, b_t in twin.buffers.items():
        name, stat = k.rsplit(".", 1)
        m, ours, ref, before = momentum[name], model.buffers[k], b_t.numpy(), running_start[k]
        assert rel_err(ours, before) > 1e-4, f"{k} did not change"
        if stat == "running_var":
            N, _, H, W = twin.in_shapes[name]
            n = N * H * W   # values per channel in the batch
            raw_var_gap = max(raw_var_gap, rel_err(ours, ref))
            ref = m * before + (1 - m) * ((ref - m * before) / (1 - m)) * (n - 1) / n
        errs[stat][k] = rel_err(ours, ref)
    assert len(errs["running_mean"]) == len(errs["running_var"]) == len(momentum) == 19
    assert raw_var_gap > 1e-4, "running variances should differ by the n/(n-1) factor before the conversion"

    print("max relative errors: " + ", ".join(f"{kind} {max(e.values()):.2e}" for kind, e in errs.items()))
    for kind, e in errs.items():
        worst = max(e, key=e.get)
        assert e[worst] <= TOL, f"{kind} {worst}: relative error {e[worst]:.3e} against torch, expected <= {TOL:g}"
