"""Optimizers and learning-rate schedules (every formula: docs/optimizers.md).

Each optimizer updates parameters in place through the kernel seam; its state
(velocity, squared-gradient sums, moments) is created lazily on the first
update of each parameter and can be saved and restored by name, so a resumed
run continues bit for bit.
"""
import math
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import ConfigDict, Field, StrictInt

from . import kernels
from ._strict import Strict


class _FiniteSpec(Strict):
    """Numbers must be finite: NaN or infinity in a hyper-parameter is a spec error."""
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _OptSpec(_FiniteSpec):

    weight_decay: float = Field(0.0, ge=0, description="L2 penalty: adds weight_decay * p to the gradient")


class SGDSpec(_OptSpec):
    type: Literal["sgd"]
    lr: float = Field(0.01, gt=0)


class MomentumSpec(_OptSpec):
    type: Literal["momentum"]
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)


class NesterovSpec(MomentumSpec):
    type: Literal["nesterov"]


class AdaGradSpec(_OptSpec):
    type: Literal["adagrad"]
    lr: float = Field(0.01, gt=0)
    eps: float = Field(1e-7, gt=0)


class RMSpropSpec(_OptSpec):
    type: Literal["rmsprop"]
    lr: float = Field(0.01, gt=0)
    decay: float = Field(0.99, ge=0, lt=1)
    eps: float = Field(1e-7, gt=0)


class AdamSpec(_OptSpec):
    type: Literal["adam"]
    lr: float = Field(0.001, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-7, gt=0)


OptimizerSpec = Annotated[Union[SGDSpec, MomentumSpec, NesterovSpec, AdaGradSpec, RMSpropSpec, AdamSpec],
                          Field(discriminator="type")]


class StepSchedule(_FiniteSpec):
    """lr * gamma ** (epoch // step_size)."""
    type: Literal["step"]
    step_size: StrictInt = Field(gt=0, description="epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1)


class ExponentialSchedule(_FiniteSpec):
    """lr * gamma ** epoch."""
    type: Literal["exponential"]
    gamma: float = Field(gt=0, le=1)


class CosineSchedule(_FiniteSpec):
    """min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2."""
    type: Literal["cosine"]
    min_lr: float = Field(0.0, ge=0)


ScheduleSpec = Annotated[Union[StepSchedule, ExponentialSchedule, CosineSchedule], Field(discriminator="type")]


def scheduled_lr(base_lr, schedule, epoch, epochs):
    """Learning rate for a 0-based ``epoch``."""
    if schedule is None:
        return base_lr
    if schedule.type == "step":
        return base_lr * schedule.gamma ** (epoch // schedule.step_size)
    if schedule.type == "exponential":
        return base_lr * schedule.gamma ** epoch
    frac = min(epoch / max(epochs, 1), 1.0)
    return schedule.min_lr + (base_lr - schedule.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))


class Optimizer:
    """update(params, grads) applies one step to every parameter, in place."""

    slots = ()  # names of the per-parameter state arrays

    def __init__(self, spec):
        self.spec = spec
        self.lr = spec.lr
        self.t = 0
        self.state = {}  # param name -> {slot: array}

    def update(self, params, grads):
        self.t += 1
        for name, p in params.items():
            st = self.state.get(name)
            if st is None:
                st = self.state[name] = {s: np.zeros_like(p) for s in self.slots}
            self.step(p, grads[name], st)

    def step(self, p, g, st):
        raise NotImplementedError

    def state_dict(self):
        """Flat {"slot/param": array} plus the step count, for checkpoints."""
        out = {f"{slot}/{name}": arr for name, st in self.state.items() for slot, arr in st.items()}
        out["t"] = np.asarray(self.t, dtype=np.int64)
        return out

    def load_state_dict(self, d):
        self.t = int(d.get("t", 0))
        self.state = {}
        for key, arr in d.items():
            if key == "t":
                continue
            slot, name = key.split("/", 1)
            self.state.setdefault(name, {})[slot] = np.array(arr)


class SGD(Optimizer):
    """p -= lr * g."""

    def step(self, p, g, st):
        kernels.sgd_update(p, g, self.lr, self.spec.weight_decay)


class Momentum(Optimizer):
    """v = m*v - lr*g; p += v."""

    slots = ("v",)

    def step(self, p, g, st):
        kernels.momentum_update(p, g, st["v"], self.lr, self.spec.momentum, self.spec.weight_decay)


class Nesterov(Optimizer):
    """p += m*m*v - (1+m)*lr*g with the old v; then v = m*v - lr*g (PyTorch's nesterov=True)."""

    slots = ("v",)

    def step(self, p, g, st):
        kernels.nesterov_update(p, g, st["v"], self.lr, self.spec.momentum, self.spec.weight_decay)


class AdaGrad(Optimizer):
    """h += g*g; p -= lr * g / (sqrt(h) + eps)."""

    slots = ("h",)

    def step(self, p, g, st):
        kernels.adagrad_update(p, g, st["h"], self.lr, self.spec.eps, self.spec.weight_decay)


class RMSprop(Optimizer):
    """h = d*h + (1-d)*g*g; p -= lr * g / (sqrt(h) + eps)."""

    slots = ("h",)

    def step(self, p, g, st):
        kernels.rmsprop_update(p, g, st["h"], self.lr, self.spec.decay, self.spec.eps, self.spec.weight_decay)


class Adam(Optimizer):
    """m += (1-b1)(g-m); v += (1-b2)(g*g-v); p -= lr_t * m / (sqrt(v) + eps), lr_t = lr*sqrt(1-b2^t)/(1-b1^t)."""

    slots = ("m", "v")

    def update(self, params, grads):
        s = self.spec
        t = self.t + 1
        # bias correction folded into the step size: eps is added to the uncorrected sqrt(v)
        self.lr_t = self.lr * math.sqrt(1.0 - s.beta2 ** t) / (1.0 - s.beta1 ** t)
        super().update(params, grads)

    def step(self, p, g, st):
        s = self.spec
        kernels.adam_update(p, g, st["m"], st["v"], self.lr_t, s.beta1, s.beta2, s.eps, s.weight_decay)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov,
              "adagrad": AdaGrad, "rmsprop": RMSprop, "adam": Adam}


def make_optimizer(spec):
    return OPTIMIZERS[spec.type](spec)
