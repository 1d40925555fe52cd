"""Optimizers against their update rules (docs/optimizers.md), written out here independently; schedules; state."""
import math

import numpy as np
import pytest
from pydantic import TypeAdapter

from netspec.optim import OptimizerSpec, ScheduleSpec, make_optimizer, scheduled_lr

spec_of = TypeAdapter(OptimizerSpec).validate_python


def grads_for(p, k):
    """A deterministic, parameter-dependent gradient sequence (like a real loss)."""
    return np.sin(3 * p + k) + 0.1 * p


def reference(kind, p, steps, lr, **hp):
    """The documented update rules, step by step, in float64."""
    p = p.copy()
    v = np.zeros_like(p); h = np.zeros_like(p); m = np.zeros_like(p)
    wd = hp.get("weight_decay", 0.0)
    for k in range(steps):
        g = grads_for(p, k) + wd * p
        if kind == "sgd":
            p = p - lr * g
        elif kind == "momentum":
            v = hp["momentum"] * v - lr * g
            p = p + v
        elif kind == "nesterov":   # m*m applied to the velocity before this step's update
            mu = hp["momentum"]
            p = p + mu * mu * v - (1 + mu) * lr * g
            v = mu * v - lr * g
        elif kind == "adagrad":
            h = h + g * g
            p = p - lr * g / (np.sqrt(h) + 1e-7)
        elif kind == "rmsprop":
            h = hp["decay"] * h + (1 - hp["decay"]) * g * g
            p = p - lr * g / (np.sqrt(h) + 1e-7)
        elif kind == "adam":
            b1, b2, t = 0.9, 0.999, k + 1
            lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            m = m + (1 - b1) * (g - m)
            v = v + (1 - b2) * (g * g - v)
            p = p - lr_t * m / (np.sqrt(v) + 1e-7)
    return p


CASES = [
    ("sgd", {"lr": 0.01}, {}),
    ("momentum", {"lr": 0.01}, {"momentum": 0.9}),
    ("nesterov", {"lr": 0.01}, {"momentum": 0.9}),
    ("adagrad", {"lr": 0.01}, {}),
    ("rmsprop", {"lr": 0.01}, {"decay": 0.99}),
    ("adam", {"lr": 0.001}, {}),
]


@pytest.mark.parametrize("kind,defaults,hp", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_update_rules_match_seeds(kind, defaults, hp, weight_decay):
    opt = make_optimizer(spec_of({"type": kind, "weight_decay": weight_decay}))
    assert opt.lr == defaults["lr"]  # the seeds' default learning rates
    p0 = np.linspace(-1, 1, 12).reshape(3, 4)
    params = {"a.W": p0.copy()}
    for k in range(10):
        opt.update(params, {"a.W": grads_for(params["a.W"], k)})
    expected = reference(kind, p0, 10, defaults["lr"], weight_decay=weight_decay, **hp)
    np.testing.assert_allclose(params["a.W"], expected, rtol=1e-12, atol=1e-15)
    assert np.abs(params["a.W"] - p0).max() > 1e-4  # it really moved


def test_float32_parameters_stay_float32_and_in_place():
    opt = make_optimizer(spec_of({"type": "adam"}))
    p = np.ones((5,), np.float32)
    ref = p
    opt.update({"x": p}, {"x": np.full(5, 0.5, np.float32)})
    assert ref is p and p.dtype == np.float32 and opt.state["x"]["m"].dtype == np.float32
    # first Adam step: lr_t * m / (sqrt(v) + eps) = lr * g / (|g| + eps / sqrt(1 - beta2))
    np.testing.assert_allclose(p, 1 - 0.001 * 0.5 / (0.5 + 1e-7 / math.sqrt(1 - 0.999)), rtol=1e-6)


def test_state_is_lazy_and_round_trips():
    opt = make_optimizer(spec_of({"type": "momentum"}))
    assert opt.state == {} and opt.t == 0
    params = {"a": np.ones(3), "b": np.zeros((2, 2))}
    opt.update(params, {"a": np.ones(3), "b": np.ones((2, 2))})
    sd = opt.state_dict()
    assert sorted(sd) == ["t", "v/a", "v/b"] and int(sd["t"]) == 1
    other = make_optimizer(spec_of({"type": "momentum"}))
    other.load_state_dict(sd)
    p1 = {k: v.copy() for k, v in params.items()}
    p2 = {k: v.copy() for k, v in params.items()}
    g = {"a": np.full(3, 0.3), "b": np.full((2, 2), -0.2)}
    opt.update(p1, g)
    other.update(p2, g)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])


def test_schedules():
    sched = TypeAdapter(ScheduleSpec).validate_python
    step = sched({"type": "step", "step_size": 2, "gamma": 0.5})
    assert [scheduled_lr(0.1, step, e, 10) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    exp = sched({"type": "exponential", "gamma": 0.9})
    assert scheduled_lr(1.0, exp, 3, 10) == pytest.approx(0.729)
    cos = sched({"type": "cosine", "min_lr": 0.01})
    assert scheduled_lr(0.1, cos, 0, 10) == pytest.approx(0.1)
    assert scheduled_lr(0.1, cos, 5, 10) == pytest.approx(0.055)
    assert scheduled_lr(0.1, cos, 10, 10) == pytest.approx(0.01)
    assert scheduled_lr(0.1, None, 7, 10) == 0.1
