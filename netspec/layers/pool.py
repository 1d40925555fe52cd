"""Max and average pooling through the kernel seam (direct loops in the compiled backend),
and global average pooling (a channel's mean over the whole image)."""
from typing import Literal, Optional

import numpy as np
from pydantic import Field, StrictInt, model_validator

from ..numerics import out_size
from .base import MAX_STRIDE_OR_PAD, Layer, LayerSpec, PositivePair, register


class PoolSpec(LayerSpec):
    size: PositivePair = Field(description="window: int or [kh, kw]")
    stride: Optional[StrictInt] = Field(None, gt=0, le=MAX_STRIDE_OR_PAD,
                                        description="default: the window size (square windows only)")
    pad: StrictInt = Field(0, ge=0, le=MAX_STRIDE_OR_PAD)

    @model_validator(mode="after")
    def _pad_fits(self):
        if self.stride is None and self.size[0] != self.size[1]:
            # one stride serves both axes, so "the window size" has no single value here
            raise ValueError(f"a rectangular window {list(self.size)} needs an explicit stride")
        if self.pad * 2 > min(self.size):
            raise ValueError(f"pad must be at most half the window (pad {self.pad}, window {list(self.size)})")
        return self


class _Pool(Layer):
    def infer_shape(self):
        if len(self.in_shape) != 3:
            raise self.shape_error(f"expects input shaped (C, H, W), got {list(self.in_shape)}")
        C, H, W = self.in_shape
        kh, kw = self.spec.size
        self.stride = self.spec.stride or kh
        p, s = self.spec.pad, self.stride
        if kh > H + 2 * p or kw > W + 2 * p:
            raise self.shape_error(f"window {kh}x{kw} is larger than the padded input "
                                   f"{H + 2 * p}x{W + 2 * p} (input {list(self.in_shape)})")
        # Like the book and PyTorch (floor mode), a ragged last row/column is dropped.
        return (C, out_size(H, kh, s, p), out_size(W, kw, s, p))

    def attrs(self):
        return {**super().attrs(), "stride": self.stride}

    def flops(self):
        kh, kw = self.spec.size
        C, OH, OW = self.out_shape
        return C * OH * OW * kh * kw


@register
class MaxPool2D(_Pool):
    """Max over each window; remembers the arg-max so backward routes dout there."""

    class Spec(PoolSpec):
        type: Literal["maxpool2d"]

    prefix = "pool"

    def forward(self, x, train=False):
        kh, kw = self.spec.size
        self.x_shape = x.shape
        out, self.argmax = self.kernels.maxpool2d_forward(x, kh, kw, self.stride, self.spec.pad)
        return out

    def backward(self, dout, need_dx=True):
        kh, kw = self.spec.size
        return self.kernels.maxpool2d_backward(dout, self.argmax, self.x_shape, kh, kw,
                                          self.stride, self.spec.pad)

    def kink_state(self):
        """Which element won each window (for gradient checks)."""
        return self.argmax


@register
class AvgPool2D(_Pool):
    """Mean over each window (padding counts as zeros)."""

    class Spec(PoolSpec):
        type: Literal["avgpool2d"]

    prefix = "avgpool"

    def forward(self, x, train=False):
        kh, kw = self.spec.size
        self.x_shape = x.shape
        return self.kernels.avgpool2d_forward(x, kh, kw, self.stride, self.spec.pad)

    def backward(self, dout, need_dx=True):
        kh, kw = self.spec.size
        return self.kernels.avgpool2d_backward(dout, self.x_shape, kh, kw, self.stride, self.spec.pad)


@register
class GlobalAvgPool2D(Layer):
    """x (N, C, H, W) -> (N, C): the mean of each channel over the whole image.

    The usual head of a residual network: it replaces a large dense layer on the last
    feature maps; dx = dout / (H*W) at every position of the channel.
    """

    class Spec(LayerSpec):
        type: Literal["globalavgpool2d"]

    prefix = "gap"

    def infer_shape(self):
        if len(self.in_shape) != 3:
            raise self.shape_error(f"expects input shaped (C, H, W), got {list(self.in_shape)}")
        return (self.in_shape[0],)

    def flops(self):
        return self.in_shape[0] * self.in_shape[1] * self.in_shape[2]

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return self.kernels.global_avgpool_forward(x)

    def backward(self, dout, need_dx=True):
        N, C, H, W = self.x_shape
        return np.broadcast_to((dout / (H * W))[:, :, None, None], self.x_shape).copy()
