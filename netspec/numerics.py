"""Small functions several modules need: softmax, class labels from targets, window output sizes."""
import numpy as np


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, the maximum subtracted first so exp cannot overflow."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def class_labels(t):
    """Integer labels (N,) from targets that are labels already or one-hot/probability rows (N, K)."""
    t = np.asarray(t)
    return t if t.ndim == 1 else t.argmax(axis=1)


def out_size(size, k, stride, pad):
    """Output length of a sliding window: (size + 2*pad - k) // stride + 1 (floor mode).

    The one definition netspec uses (layers' shape inference and the kernels).
    """
    return (size + 2 * pad - k) // stride + 1
