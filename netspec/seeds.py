"""The random streams of a run, all derived from the spec's one seed.

``SeedSequence(seed)`` spawns three children: parameter initialisation (used by
``compile``), training (batch order, augmentation; used by the trainer) and
dropout masks, so each is reproducible on its own.
"""
import numpy as np


def seed_streams(seed):
    """(init, train, dropout) SeedSequences derived from one spec seed."""
    return np.random.SeedSequence(seed).spawn(3)
