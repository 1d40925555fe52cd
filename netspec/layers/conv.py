"""2-D convolution through the kernel seam (im2col + matrix product)."""
from typing import Literal, Optional

from pydantic import Field, StrictInt

from ..init import InitSpec
from ..numerics import out_size
from .base import MAX_STRIDE_OR_PAD, Layer, LayerSpec, PositivePair, register


@register
class Conv2D(Layer):
    """x (N, C, H, W) -> (N, filters, OH, OW); W (filters, C, kh, kw), b (filters,).

    OH = (H + 2*pad - kh) // stride + 1 (floor mode, as PyTorch and ONNX: when the
    stride does not tile the padded input, the last rows/columns are not read).
    """

    class Spec(LayerSpec):
        type: Literal["conv2d"]
        filters: StrictInt = Field(gt=0, description="output channels")
        kernel: PositivePair = Field(description="kernel size: int or [kh, kw]")
        stride: StrictInt = Field(1, gt=0, le=MAX_STRIDE_OR_PAD)
        pad: StrictInt = Field(0, ge=0, le=MAX_STRIDE_OR_PAD, description="zero padding on each side")
        bias: bool = True
        init: Optional[InitSpec] = Field(None, description="weight init (default: he)")
        bias_init: Optional[InitSpec] = Field(None, description="bias init (default: zeros)")

    prefix = "conv"

    def infer_shape(self):
        if len(self.in_shape) != 3:
            raise self.shape_error(f"expects input shaped (C, H, W), got {list(self.in_shape)}")
        C, H, W = self.in_shape
        kh, kw = self.spec.kernel
        s, p = self.spec.stride, self.spec.pad
        out = []
        for axis, size, k in (("height", H, kh), ("width", W, kw)):
            formula = f"output {axis} = ({size} + 2*{p} - {k}) / {s} + 1"
            if k > size + 2 * p:
                raise self.shape_error(
                    f"kernel {kh}x{kw} is larger than the padded input {H + 2 * p}x{W + 2 * p} "
                    f"({formula} = {(size + 2 * p - k) / s + 1:g} < 1)")
            out.append(out_size(size, k, s, p))
        self.fan_in = C * kh * kw
        return (self.spec.filters, out[0], out[1])

    def param_specs(self):
        kh, kw = self.spec.kernel
        out = {"W": ((self.spec.filters, self.in_shape[0], kh, kw), self.spec.init or "he", self.fan_in)}
        if self.spec.bias:
            out["b"] = ((self.spec.filters,), self.spec.bias_init or "zeros", self.fan_in)
        return out

    def flops(self):
        FN, OH, OW = self.out_shape
        return 2 * self.fan_in * FN * OH * OW

    def forward(self, x, train=False):
        self.x = x
        return self.kernels.conv2d_forward(x, self.params["W"], self.params.get("b"),
                                      self.spec.stride, self.spec.pad)

    def backward(self, dout, need_dx=True):
        dx, dW, db = self.kernels.conv2d_backward(dout, self.x, self.params["W"],
                                                  self.spec.stride, self.spec.pad, need_dx, "b" in self.params)
        self.grads["W"] = dW
        if "b" in self.params:
            self.grads["b"] = db
        return dx
