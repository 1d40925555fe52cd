"""Layers with several named inputs: element-wise add (residual) and channel concat."""
from typing import Literal

import numpy as np
from pydantic import Field

from .base import LayerSpec, MultiInputLayer, Name, register


class MergeSpec(LayerSpec):
    inputs: list[Name] = Field(min_length=2, description="names of the layers to merge")


@register
class Add(MultiInputLayer):
    """out = x1 + x2 + ...; every input has the same shape."""

    class Spec(MergeSpec):
        type: Literal["add"]

    prefix = "add"

    def infer_shape(self):
        for name, s in zip(self.spec.inputs[1:], self.in_shapes[1:]):
            if s != self.in_shape:
                raise self.shape_error(f"cannot add input '{name}' shaped {list(s)} to "
                                       f"'{self.spec.inputs[0]}' shaped {list(self.in_shape)}")
        return self.in_shape

    def forward(self, xs, train=False):
        out = xs[0] + xs[1]   # one pass over memory (a copy then an add in place took two)
        for x in xs[2:]:
            out += x
        return out

    def backward(self, dout, need_dx=True):
        return [dout] * len(self.in_shapes)


@register
class Concat(MultiInputLayer):
    """Join inputs along the channel (first non-batch) axis; other axes must agree."""

    class Spec(MergeSpec):
        type: Literal["concat"]

    prefix = "concat"

    def infer_shape(self):
        rest = self.in_shape[1:]
        for name, s in zip(self.spec.inputs, self.in_shapes):
            if s[1:] != rest:
                raise self.shape_error(f"input '{name}' shaped {list(s)} does not match "
                                       f"{list(self.in_shape)} outside the channel axis")
        self.splits = np.cumsum([s[0] for s in self.in_shapes])[:-1]
        return (sum(s[0] for s in self.in_shapes),) + rest

    def flops(self):
        return 0

    def forward(self, xs, train=False):
        return np.concatenate(xs, axis=1)

    def backward(self, dout, need_dx=True):
        return np.split(dout, self.splits, axis=1)
