"""Optimizers against their update rules (docs/optimizers.md), written out here independently; schedules; state."""
import math

import numpy as np
import pytest
from pydantic import TypeAdapter

import netspec
from netspec.optim import make_optimizer, scheduled_lr
from netspec.optim_spec import OptimizerSpec, ScheduleSpec

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


def test_warmup_then_the_schedule_on_the_remaining_epochs():
    from netspec.optim_spec import CosineSchedule, ConstantSchedule, StepSchedule
    cos = CosineSchedule.model_validate({"type": "cosine", "warmup_epochs": 2, "min_lr": 0.0})
    lrs = [scheduled_lr(0.3, cos, e, 10) for e in range(10)]
    assert lrs[:2] == pytest.approx([0.1, 0.2])                     # lr * (e + 1) / (w + 1)
    assert lrs[2] == pytest.approx(0.3)                               # cosine starts at the full lr
    assert lrs[2:] == pytest.approx([0.15 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    const = ConstantSchedule.model_validate({"type": "constant", "warmup_epochs": 3})
    assert [scheduled_lr(1.0, const, e, 6) for e in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    step = StepSchedule.model_validate({"type": "step", "step_size": 2, "gamma": 0.5, "warmup_epochs": 1})
    assert [scheduled_lr(1.0, step, e, 6) for e in range(6)] == pytest.approx([0.5, 1, 1, 0.5, 0.5, 0.25])


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_weight_decay_can_skip_biases_and_batchnorm(kind):
    """decay_bias_and_norm: false leaves biases and batchnorm's gamma/beta out of the L2 term."""
    model = netspec.compile({"input": {"shape": [1, 4, 4]}, "loss": "mse", "dtype": "float64", "layers": [
        {"type": "conv2d", "filters": 2, "kernel": 3}, {"type": "batchnorm"}, {"type": "dense", "units": 1}]})
    assert model.no_decay_names() == {"conv1.b", "bn1.gamma", "bn1.beta", "dense1.b"}
    for exempt in (False, True):
        m = netspec.compile(model.spec, dtype="float64")
        for p in m.params.values():
            p[...] = 1.0
        before = {k: v.copy() for k, v in m.params.items()}
        opt = make_optimizer(spec_of({"type": kind, "weight_decay": 0.1, "decay_bias_and_norm": not exempt}),
                             no_decay=m.no_decay_names())
        opt.update(m.params, {k: np.zeros_like(v) for k, v in m.params.items()})   # only the decay moves p
        for k, p in m.params.items():
            moved = not np.array_equal(p, before[k])
            assert moved == (not exempt or k not in m.no_decay_names()), (exempt, k)


def test_a_schedule_per_step_counts_fractional_epochs_and_warms_up_step_by_step():
    from netspec.optim_spec import CosineSchedule, StepSchedule
    cos = CosineSchedule.model_validate({"type": "cosine", "warmup_epochs": 1, "per": "step"})
    spe, epochs = 4, 3
    lrs = [scheduled_lr(0.2, cos, s, epochs * spe, spe) for s in range(epochs * spe)]
    assert lrs[:4] == pytest.approx([0.2 * (s + 1) / 5 for s in range(4)])        # lr * (s + 1) / (w * spe + 1)
    assert lrs[4:] == pytest.approx([0.1 * (1 + math.cos(math.pi * (s / 4) / 2)) for s in range(8)])
    assert len(set(lrs)) == len(lrs)                                                # it moves every step
    step = StepSchedule.model_validate({"type": "step", "step_size": 1, "gamma": 0.5, "per": "step"})
    assert [scheduled_lr(1.0, step, s, 8, 4) for s in range(8)] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5]
    # per epoch (the default), nothing changed: the same whole-epoch values as before
    per_epoch = CosineSchedule.model_validate({"type": "cosine", "warmup_epochs": 1})
    assert per_epoch.per == "epoch"
    assert [scheduled_lr(0.2, per_epoch, e, 3) for e in range(3)] == pytest.approx(
        [0.1, 0.2, 0.1 * (1 + math.cos(math.pi / 2))])


def test_the_trainer_sets_the_learning_rate_before_every_step_with_per_step(tmp_path):
    from netspec.runner import trainer_for
    spec = {"name": "s", "seed": 1, "input": {"shape": [2]}, "layers": [{"type": "dense", "units": 1}], "loss": "mse",
            "train": {"data": {"source": "function", "coefficients": [1, 0], "n_train": 32, "n_test": 8},
                      "optimizer": {"type": "sgd", "lr": 0.1}, "epochs": 3, "batch_size": 8,
                      "schedule": {"type": "cosine", "warmup_epochs": 1, "per": "step"}}}
    spec["input"]["shape"] = [1]
    tr = trainer_for(spec, save=False, quiet=True, progress=False)
    seen, real = [], tr.train_step

    def record(idx):
        seen.append(tr.optimizer.lr)
        return real(idx)
    tr.train_step = record
    tr.run()
    sched = tr.cfg.schedule
    assert len(seen) == 12 and seen == [scheduled_lr(0.1, sched, s, 12, 4) for s in range(12)]
    assert seen[0] == pytest.approx(0.1 / 5) and seen[4] == pytest.approx(0.1)
