"""Batch normalisation over the batch (and spatial axes for (C, H, W) input).

Train: normalise with the batch mean and (biased) variance and update running
statistics as ``running = momentum * running + (1 - momentum) * batch``, the
book's convention (PyTorch's ``momentum`` is our ``1 - momentum``, and PyTorch
stores the unbiased variance). Test: normalise with the running statistics.
"""
import math
from typing import Literal

import numpy as np
from pydantic import Field

from ..init import ConstantInit, ZerosInit
from .base import Layer, LayerSpec, register


@register
class BatchNorm(Layer):
    """out = gamma * (x - mean) / sqrt(var + eps) + beta, per feature or per channel."""

    class Spec(LayerSpec):
        type: Literal["batchnorm"]
        momentum: float = Field(0.9, ge=0, lt=1, description="weight of the old running statistics")
        eps: float = Field(1e-5, gt=0, allow_inf_nan=False)

    prefix = "bn"
    buffer_names = ("running_mean", "running_var")
    fused_relu = False   # set by the model when the train pipeline fuses the ReLU after it (netspec.passes)

    def infer_shape(self):
        if len(self.in_shape) not in (1, 3):
            raise self.shape_error(f"expects (features,) or (C, H, W) input, got {list(self.in_shape)}")
        return self.in_shape

    def param_specs(self):
        C = self.in_shape[0]
        return {"gamma": ((C,), ConstantInit(value=1.0), None), "beta": ((C,), ZerosInit(), None)}

    def no_decay(self):
        """gamma and beta: a scale and a shift, not weights to shrink."""
        return list(self.params)

    def buffers(self):
        """Non-learned state saved with the parameters."""
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def init_buffers(self, dtype):
        C = self.in_shape[0]
        self.running_mean = np.zeros(C, dtype=dtype)
        self.running_var = np.ones(C, dtype=dtype)

    def flops(self):
        return 4 * math.prod(self.out_shape)

    def forward(self, x, train=False):
        x3 = x.reshape(x.shape[0], x.shape[1], -1)   # (N, C, H*W), or (N, features, 1)
        if train:
            mean, var = self.kernels.batchnorm_stats(x3)
            m = self.spec.momentum
            self.running_mean *= m
            self.running_mean += (1 - m) * mean
            self.running_var *= m
            self.running_var += (1 - m) * var
        else:
            mean, var = self.running_mean, self.running_var
        self.inv_std = (1.0 / np.sqrt(var + self.spec.eps)).astype(x.dtype, copy=False)
        out, self.xhat = self.kernels.batchnorm_forward(x3, self.params["gamma"], self.params["beta"],
                                                   mean.astype(x.dtype, copy=False), self.inv_std,
                                                   self.fused_relu)
        self.out = out if self.fused_relu else None   # the fused ReLU's output: its backward mask
        self.train = train
        return out.reshape(x.shape)

    def backward(self, dout, need_dx=True):
        d3 = dout.reshape(dout.shape[0], dout.shape[1], -1)
        dx, self.grads["gamma"], self.grads["beta"] = self.kernels.batchnorm_backward(
            d3, self.xhat, self.params["gamma"], self.inv_std, self.train, self.out)
        return dx.reshape(dout.shape)

    def kink_state(self):
        """With a fused ReLU: which side of its kink each output was on (as the ReLU's own)."""
        return self.out > 0 if self.fused_relu and getattr(self, "out", None) is not None else None
