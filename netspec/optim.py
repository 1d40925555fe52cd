"""Optimizers and learning-rate schedules (every formula: docs/optimizers.md).

Each optimizer updates parameters in place through the kernel seam; its state
(velocity, squared-gradient sums, moments) is created lazily on the first
update of each parameter and can be saved and restored by name, so a resumed
run continues bit for bit.
"""
import math

import numpy as np

from . import kernels


def scheduled_lr(base_lr, schedule, epoch, epochs, steps_per_epoch=1):
    """Learning rate for a 0-based ``epoch`` of ``epochs``.

    A warm-up of w epochs gives lr * (e + 1) / (w + 1) at epochs e < w; the schedule's own
    formula then counts epochs from the end of the warm-up (e - w of epochs - w).
    With ``per: step`` the trainer passes ``epoch`` and ``epochs`` in steps and the number of
    steps per epoch: the warm-up is then lr * (s + 1) / (w * steps_per_epoch + 1) at step s,
    and the formulas count fractional epochs (s / steps_per_epoch).
    """
    if schedule is None:
        return base_lr
    w = schedule.warmup_epochs * steps_per_epoch
    if epoch < w:
        return base_lr * (epoch + 1) / (w + 1)
    epoch, epochs = (epoch - w) / steps_per_epoch, max(epochs - w, 1) / steps_per_epoch
    if steps_per_epoch == 1:
        epoch, epochs = int(epoch), int(epochs)   # per epoch: whole numbers, exactly as before
    if schedule.type == "constant":
        return base_lr
    if schedule.type == "step":
        return base_lr * schedule.gamma ** int(epoch // schedule.step_size)
    if schedule.type == "exponential":
        return base_lr * schedule.gamma ** epoch
    frac = min(epoch / epochs, 1.0)
    return schedule.min_lr + (base_lr - schedule.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))


class Optimizer:
    """update(params, grads) applies one step to every parameter, in place."""

    slots = ()  # names of the per-parameter state arrays

    def __init__(self, spec, no_decay=()):
        self.spec = spec
        self.lr = spec.lr
        self.t = 0
        self.state = {}  # param name -> {slot: array}
        # parameters weight decay skips (biases, batchnorm) when the spec asks for it
        self.no_decay = frozenset(() if spec.decay_bias_and_norm else no_decay)

    def update(self, params, grads):
        self.t += 1
        for name, p in params.items():
            st = self.state.get(name)
            if st is None:
                st = self.state[name] = {s: np.zeros_like(p) for s in self.slots}
            self.step(p, grads[name], st, 0.0 if name in self.no_decay else self.spec.weight_decay)

    def step(self, p, g, st, wd):
        """Update one parameter array in place; ``wd`` is its weight decay."""
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

    def step(self, p, g, st, wd):
        kernels.sgd_update(p, g, self.lr, wd)


class Momentum(Optimizer):
    """v = m*v - lr*g; p += v."""

    slots = ("v",)

    def step(self, p, g, st, wd):
        kernels.momentum_update(p, g, st["v"], self.lr, self.spec.momentum, wd)


class Nesterov(Optimizer):
    """p += m*m*v - (1+m)*lr*g with the old v; then v = m*v - lr*g (PyTorch's nesterov=True)."""

    slots = ("v",)

    def step(self, p, g, st, wd):
        kernels.nesterov_update(p, g, st["v"], self.lr, self.spec.momentum, wd)


class AdaGrad(Optimizer):
    """h += g*g; p -= lr * g / (sqrt(h) + eps)."""

    slots = ("h",)

    def step(self, p, g, st, wd):
        kernels.adagrad_update(p, g, st["h"], self.lr, self.spec.eps, wd)


class RMSprop(Optimizer):
    """h = d*h + (1-d)*g*g; p -= lr * g / (sqrt(h) + eps)."""

    slots = ("h",)

    def step(self, p, g, st, wd):
        kernels.rmsprop_update(p, g, st["h"], self.lr, self.spec.decay, self.spec.eps, wd)


class Adam(Optimizer):
    """m += (1-b1)(g-m); v += (1-b2)(g*g-v); p -= lr_t * m / (sqrt(v) + eps), lr_t = lr*sqrt(1-b2^t)/(1-b1^t)."""

    slots = ("m", "v")

    def update(self, params, grads):
        s = self.spec
        t = self.t + 1
        # bias correction folded into the step size: eps is added to the uncorrected sqrt(v)
        self.lr_t = self.lr * math.sqrt(1.0 - s.beta2 ** t) / (1.0 - s.beta1 ** t)
        super().update(params, grads)

    def step(self, p, g, st, wd):
        s = self.spec
        kernels.adam_update(p, g, st["m"], st["v"], self.lr_t, s.beta1, s.beta2, s.eps, wd)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov,
              "adagrad": AdaGrad, "rmsprop": RMSprop, "adam": Adam}


def make_optimizer(spec, no_decay=()):
    """The optimizer a spec names; ``no_decay``: parameter names exempt from weight decay when
    the spec sets ``decay_bias_and_norm: false`` (``Model.no_decay_names()``)."""
    return OPTIMIZERS[spec.type](spec, no_decay)
