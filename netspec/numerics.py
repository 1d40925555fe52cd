"""Small array functions several modules need: softmax and class labels from targets."""
import numpy as np


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, the maximum subtracted first so exp cannot overflow."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def class_labels(t):
    """Integer labels (N,) from targets that are labels already or one-hot/probability rows (N, K)."""
    t = np.asarray(t)
    return t if t.ndim == 1 else t.argmax(axis=1)
