"""Element-wise activations and softmax; each backward sits under its forward."""
from typing import Literal

import numpy as np

from ..numerics import softmax
from .base import Layer, LayerSpec, register


@register
class ReLU(Layer):
    """out = max(x, 0); dx = dout where x > 0."""

    class Spec(LayerSpec):
        type: Literal["relu"]

    prefix = "relu"

    def forward(self, x, train=False):
        self.out = self.kernels.relu_forward(x)
        return self.out

    def backward(self, dout, need_dx=True):
        return self.kernels.relu_backward(dout, self.out)

    absorbed = False   # set by the model when the train pipeline runs this ReLU inside a batchnorm

    def kink_state(self):
        """Which side of the kink at 0 each input was on (for gradient checks); None when a
        batchnorm ran it (that layer reports it)."""
        return None if self.absorbed else self.out > 0


@register
class Sigmoid(Layer):
    """out = 1 / (1 + exp(-x)); dx = dout * out * (1 - out)."""

    class Spec(LayerSpec):
        type: Literal["sigmoid"]

    prefix = "sigmoid"

    def forward(self, x, train=False):
        with np.errstate(over="ignore"):  # exp(-x) -> inf gives the right limit, 0
            self.out = 1.0 / (1.0 + np.exp(-x))
        return self.out

    def backward(self, dout, need_dx=True):
        return dout * self.out * (1.0 - self.out)


@register
class Tanh(Layer):
    """out = tanh(x); dx = dout * (1 - out^2)."""

    class Spec(LayerSpec):
        type: Literal["tanh"]

    prefix = "tanh"

    def forward(self, x, train=False):
        self.out = np.tanh(x)
        return self.out

    def backward(self, dout, need_dx=True):
        return dout * (1.0 - self.out * self.out)


@register
class Softmax(Layer):
    """Probabilities over the last axis; dx = y * (dout - sum(dout * y))."""

    class Spec(LayerSpec):
        type: Literal["softmax"]

    prefix = "softmax"

    def forward(self, x, train=False):
        self.out = softmax(x)
        return self.out

    def backward(self, dout, need_dx=True):
        y = self.out
        return y * (dout - (dout * y).sum(axis=-1, keepdims=True))
