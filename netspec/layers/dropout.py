"""Dropout, inverted convention.

Design: the book keeps activations unscaled while training and multiplies by
``1 - ratio`` at test time. netspec scales the kept activations by
``1 / (1 - ratio)`` while training and is the identity at test time. Both have
the same expected activation; ours means inference, export and float16
evaluation need no knowledge of the ratio, and matches PyTorch's nn.Dropout.
"""
from typing import Literal

from pydantic import Field

from .base import Layer, LayerSpec, register


@register
class Dropout(Layer):
    """train: out = x * mask / (1 - ratio), mask ~ Bernoulli(1 - ratio); test: out = x."""

    class Spec(LayerSpec):
        type: Literal["dropout"]
        ratio: float = Field(0.5, ge=0, lt=1, description="probability of dropping a unit")

    prefix = "dropout"
    rng = None

    def set_rng(self, rng):
        self.rng = rng

    def flops(self):
        return 0

    def forward(self, x, train=False):
        ratio = self.spec.ratio
        if not train or ratio == 0:
            self.scale = None
            return x
        keep = self.rng.random(x.shape) >= ratio
        self.scale = keep.astype(x.dtype) / (1.0 - ratio)
        return x * self.scale

    def backward(self, dout, need_dx=True):
        return dout if self.scale is None else dout * self.scale
