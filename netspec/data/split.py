"""The validation split: a seeded part of the training set, held out from training.

Design: the held-out samples come from the training set only, so they can never
overlap the test set, and they are drawn from their own stream of the spec's seed
(netspec.seeds.split_stream): init, batches and dropout draw exactly what they drew
without a split. The indices are kept in the checkpoint; a resumed run holds out
the very samples it held out before, whatever a later numpy would draw.
"""
import dataclasses

import numpy as np

from ..errors import CheckpointError, DataError
from ..seeds import split_stream


def validation_count(n, validation, name="data"):
    """How many of ``n`` training samples a ``validation`` of a fraction or a count holds out."""
    k = validation if isinstance(validation, int) else int(round(n * validation))
    if k < 1:
        raise DataError(f"{name}: validation {validation} of {n} training samples holds out no sample; "
                        "give a larger fraction or a count")
    if k >= n:
        raise DataError(f"{name}: validation {validation} holds out {k} of the {n} training samples and "
                        "leaves none to train on; give a smaller fraction or count")
    return k


def validation_indices(n, validation, seed, name="data"):
    """Sorted positions in the training set (of ``n`` samples) held out for validation."""
    k = validation_count(n, validation, name)
    order = np.random.default_rng(split_stream(seed)).permutation(n)
    return np.sort(order[:k]).astype(np.int64)


def split_validation(data, validation, seed, indices=None):
    """``data`` (a Dataset) with the validation samples moved out of its training arrays.

    ``indices``, when given (a resumed run's checkpoint), are used instead of a fresh draw.
    The remaining training samples keep their order.
    """
    n = len(data.x_train)
    if indices is None:
        indices = validation_indices(n, validation, seed, data.name)
    else:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1 or not len(indices) or indices.min() < 0 or indices.max() >= n \
                or np.any(np.diff(indices) <= 0):
            raise CheckpointError(f"the checkpoint's validation split does not fit the {n} training samples of "
                                  f"{data.name}; the data changed since the run started")
    keep = np.ones(n, dtype=bool)
    keep[indices] = False
    return dataclasses.replace(data, x_train=data.x_train[keep], t_train=data.t_train[keep],
                               x_val=data.x_train[indices], t_val=data.t_train[indices], val_index=indices)


def without_test(data):
    """``data`` with its test arrays dropped, for runs that must never read them (tuning trials)."""
    return dataclasses.replace(data, x_test=None, t_test=None)
