"""Losses: the last stage of a model, ``forward(y, t) -> float`` then ``backward() -> dy``.

- softmax_cross_entropy: mean over the batch of -log softmax(y)[label]; targets are
  integer labels (N,) or one-hot/probability rows (N, K). Computed as log-sum-exp,
  so the book's ``+1e-7`` guard is not needed and the gradient is exactly (softmax(y) - t) / N.
- mse: mean over every element of (y - t)^2, as seed network 1 uses (PyTorch's MSELoss).
- sse: 0.5 * sum((y - t)^2) per sample, averaged over the batch (for one sample it is
  exactly the seeds' 0.5 * sum).
"""
import math

import numpy as np

from ..errors import DataError

LOSSES = {}


def register_loss(name):
    def deco(cls):
        LOSSES[name] = cls
        cls.name = name
        return cls
    return deco


class Loss:
    """``prepare_targets`` checks targets once; ``forward(y, t)`` then ``backward()`` run per batch."""
    classification = False

    def prepare_targets(self, t, out_shape, dtype, where="targets"):
        """Targets (N, *out_shape) in ``dtype``; (N,) targets for a (1,) output get their axis back.

        Raises DataError naming ``where`` when they cannot match the model's output.
        """
        if t.dtype.kind not in "biuf":
            raise DataError(f"{where}: expected numbers, found {t.dtype}")
        if t.ndim == 0:
            raise DataError(f"{where}: expected one target per sample, found a single number")
        if t.shape[1:] != tuple(out_shape):
            if math.prod(t.shape[1:]) != math.prod(out_shape):
                raise DataError(f"{where}: targets are shaped {list(t.shape[1:])} per sample, "
                                f"but the model outputs {list(out_shape)} (loss {self.name})")
            t = t.reshape((len(t),) + tuple(out_shape))
        return t.astype(dtype, copy=False)


@register_loss("softmax_cross_entropy")
class SoftmaxCrossEntropy(Loss):
    classification = True

    def prepare_targets(self, t, out_shape, dtype, where="targets"):
        """Integer labels (N,) in [0, K), or one-hot / probability rows (N, K) cast to ``dtype``."""
        K = out_shape[0]
        if t.ndim == 1:
            if not np.issubdtype(t.dtype, np.integer):
                raise DataError(f"{where}: class labels must be integers, found {t.dtype}")
            if t.size and (t.min() < 0 or t.max() >= K):
                raise DataError(f"{where}: labels range over {t.min()}..{t.max()}, but the model "
                                f"outputs {K} classes (labels 0..{K - 1})")
            return t
        if t.shape[1:] != tuple(out_shape):
            raise DataError(f"{where}: one-hot targets are {list(t.shape[1:])} wide, "
                            f"the model outputs {list(out_shape)}")
        if t.dtype.kind not in "biuf":
            raise DataError(f"{where}: expected numbers, found {t.dtype}")
        return t.astype(dtype, copy=False)

    def forward(self, y, t):
        self.t = t
        # log-softmax with the row maximum subtracted first, so exp cannot overflow
        z = y - y.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(z).sum(axis=1, keepdims=True))
        logp = z - logsum
        self.p = np.exp(logp)
        N = y.shape[0]
        if t.ndim == 1:
            return float(-logp[np.arange(N), t].sum() / N)
        return float(-(t * logp).sum() / N)

    def backward(self):
        N = self.p.shape[0]
        d = self.p.copy()
        if self.t.ndim == 1:
            d[np.arange(N), self.t] -= 1
        else:
            d -= self.t
        return d / N


@register_loss("mse")
class MeanSquaredError(Loss):
    def forward(self, y, t):
        self.diff = y - t
        return float(np.mean(self.diff * self.diff))

    def backward(self):
        return (2.0 / self.diff.size) * self.diff


@register_loss("sse")
class SumSquaredError(Loss):
    def forward(self, y, t):
        self.diff = y - t
        return float(0.5 * np.sum(self.diff * self.diff) / y.shape[0])

    def backward(self):
        return self.diff / self.diff.shape[0]
