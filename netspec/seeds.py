"""The random streams of a run, all derived from the spec's one seed.

``SeedSequence(seed)`` spawns three children: parameter initialisation (used by
``compile``), training (batch order, augmentation; used by the trainer) and
dropout masks, so each is reproducible on its own. A fourth child draws the
validation split (``split_stream``); spawning it leaves the first three as they were.
"""
import numpy as np


def seed_streams(seed):
    """(init, train, dropout) SeedSequences derived from one spec seed."""
    return np.random.SeedSequence(seed).spawn(3)


def split_stream(seed):
    """The SeedSequence of the validation split: the fourth child of ``SeedSequence(seed)``."""
    return np.random.SeedSequence(seed).spawn(4)[3]
