"""Mini-batch indices: shuffled passes over the data, or the book's draws with replacement."""
import numpy as np


class Sampler:
    """``next()`` gives the indices of the next batch; ``perm`` and ``pos`` are its checkpointed state.

    shuffle: each pass is a fresh permutation, consumed ``batch_size`` at a time (the last
    batch of a pass may be smaller). replacement: every batch is ``batch_size`` independent
    uniform draws, as the book's training loop does.
    """

    def __init__(self, n, batch_size, mode, rng):
        self.n, self.batch_size, self.mode, self.rng = n, batch_size, mode, rng
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0

    def next(self):
        b = self.batch_size
        if self.mode == "replacement":
            return self.rng.choice(self.n, size=b)
        if self.pos >= len(self.perm):
            self.perm, self.pos = self.rng.permutation(self.n), 0
        idx = self.perm[self.pos:self.pos + b]
        self.pos += len(idx)
        return idx
