"""Losses: the last stage of a model, ``forward(y, t) -> float`` then ``backward() -> dy``.

- softmax_cross_entropy: mean over the batch of -log softmax(y)[label]; targets are
  integer labels (N,) or one-hot/probability rows (N, K). Computed as log-sum-exp,
  so the book's ``+1e-7`` guard is not needed and the gradient is exactly (softmax(y) - t) / N.
- mse: mean over every element of (y - t)^2, as seed network 1 uses (PyTorch's MSELoss).
- sse: 0.5 * sum((y - t)^2) per sample, averaged over the batch (for one sample it is
  exactly the seeds' 0.5 * sum).
"""
import numpy as np

from .activations import softmax

LOSSES = {}


def register_loss(name):
    def deco(cls):
        LOSSES[name] = cls
        cls.name = name
        return cls
    return deco


class Loss:
    classification = False

    def check_targets(self, y, t):
        """Raise ValueError when targets cannot match outputs ``y``."""
        if t.shape != y.shape:
            raise ValueError(f"targets shaped {list(t.shape)} do not match outputs shaped {list(y.shape)}")


@register_loss("softmax_cross_entropy")
class SoftmaxCrossEntropy(Loss):
    classification = True

    def check_targets(self, y, t):
        if t.ndim == 1:
            if not np.issubdtype(t.dtype, np.integer):
                raise ValueError(f"integer class labels expected, got {t.dtype}")
            if t.shape[0] != y.shape[0]:
                raise ValueError(f"{t.shape[0]} labels for {y.shape[0]} samples")
            if t.size and (t.min() < 0 or t.max() >= y.shape[1]):
                raise ValueError(f"labels must lie in [0, {y.shape[1] - 1}], got {t.min()}..{t.max()}")
        else:
            super().check_targets(y, t)

    def forward(self, y, t):
        self.t = t
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
