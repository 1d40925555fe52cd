"""The spec schema of optimizers and learning-rate schedules: data only (no kernels).

``netspec.spec`` validates a spec's ``train.optimizer`` and ``train.schedule``
with these models; ``netspec.optim`` implements them. Every formula:
docs/optimizers.md.
"""
from typing import Annotated, Literal, Union

from pydantic import ConfigDict, Field, StrictInt

from ._strict import Strict


class _FiniteSpec(Strict):
    """Numbers must be finite: NaN or infinity in a hyper-parameter is a spec error."""
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _OptSpec(_FiniteSpec):

    weight_decay: float = Field(0.0, ge=0, description="L2 penalty: adds weight_decay * p to the gradient")
    decay_bias_and_norm: bool = Field(
        True, description="false: weight decay skips biases and batchnorm's gamma and beta (usual for "
        "residual networks); true: it applies to every parameter, as in the book")


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


class _Schedule(_FiniteSpec):
    warmup_epochs: StrictInt = Field(
        0, ge=0, description="epochs of linear warm-up first: lr * (e + 1) / (warmup_epochs + 1) at epoch e; "
        "the schedule then runs over the remaining epochs")
    per: Literal["epoch", "step"] = Field(
        "epoch", description="when the learning rate changes: at the start of each epoch (the formulas count "
        "whole epochs), or before every step (they count fractional epochs: step / steps_per_epoch, and the "
        "warm-up rises step by step)")


class ConstantSchedule(_Schedule):
    """lr after the warm-up (a warm-up alone)."""
    type: Literal["constant"]


class StepSchedule(_Schedule):
    """lr * gamma ** (epoch // step_size)."""
    type: Literal["step"]
    step_size: StrictInt = Field(gt=0, description="epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1)


class ExponentialSchedule(_Schedule):
    """lr * gamma ** epoch."""
    type: Literal["exponential"]
    gamma: float = Field(gt=0, le=1)


class CosineSchedule(_Schedule):
    """min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2."""
    type: Literal["cosine"]
    min_lr: float = Field(0.0, ge=0)


ScheduleSpec = Annotated[Union[ConstantSchedule, StepSchedule, ExponentialSchedule, CosineSchedule],
                         Field(discriminator="type")]
