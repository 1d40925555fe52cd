"""Dense (affine) layer and flatten: out = flatten(x) @ W + b."""
import math
from typing import Literal, Optional

from pydantic import Field, StrictInt

from ..init import InitSpec
from .base import Layer, LayerSpec, register


@register
class Dense(Layer):
    """x (N, *in) -> (N, units); W (in, units), b (units,). Flattens N-D input, restores it in backward."""

    class Spec(LayerSpec):
        type: Literal["dense", "affine"]
        units: StrictInt = Field(gt=0, description="output features")
        bias: bool = Field(True, description="false drops the bias")
        init: Optional[InitSpec] = Field(None, description="weight init (default: he)")
        bias_init: Optional[InitSpec] = Field(None, description="bias init (default: zeros)")

    prefix = "dense"

    def infer_shape(self):
        self.fan_in = math.prod(self.in_shape)
        return (self.spec.units,)

    def param_specs(self):
        out = {"W": ((self.fan_in, self.spec.units), self.spec.init or "he", self.fan_in)}
        if self.spec.bias:
            out["b"] = ((self.spec.units,), self.spec.bias_init or "zeros", self.fan_in)
        return out

    def flops(self):
        return 2 * self.fan_in * self.spec.units

    def forward(self, x, train=False):
        self.x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        out = self.kernels.matmul(self.x, self.params["W"])
        if "b" in self.params:
            out += self.params["b"]
        return out

    def backward(self, dout, need_dx=True):
        self.grads["W"] = self.kernels.matmul(self.x.T, dout)
        if "b" in self.params:
            self.grads["b"] = dout.sum(axis=0)
        if not need_dx:
            return None
        return self.kernels.matmul(dout, self.params["W"].T).reshape(self.x_shape)


@register
class Flatten(Layer):
    """x (N, *in) -> (N, prod(in))."""

    class Spec(LayerSpec):
        type: Literal["flatten"]

    prefix = "flatten"

    def infer_shape(self):
        return (math.prod(self.in_shape),)

    def flops(self):
        return 0

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout, need_dx=True):
        return dout.reshape(self.x_shape)
