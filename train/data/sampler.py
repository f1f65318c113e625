"""Resumable, sharded batch order (DistributedSampler-style): a seeded permutation per epoch, cut into global
batches of `batch_size * world_size` slices, each rank taking its own contiguous part of every global batch.

The last incomplete global batch of an epoch is dropped, so every rank runs the same number of steps, and the
batch at any global step is a pure function of (seed, step): resuming needs only the step count.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ShardedBatches:
    """One rank's batches from global step `start` to `stop` (exclusive; default one epoch), as lists of
    (dataset index, epoch) keys so that a dataset's per-sample randomness can depend on the epoch."""

    def __init__(self, n_items: int, batch_size: int, rank: int, world_size: int, seed: int,
                 start: int = 0, stop: int | None = None) -> None:
        self.n_items, self.batch_size, self.rank, self.world_size = n_items, batch_size, rank, world_size
        self.seed = seed
        self.steps_per_epoch = n_items // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n_items} training slices do not fill one global batch of "
                             f"{batch_size} x {world_size} processes")
        self.start = start
        self.stop = self.steps_per_epoch if stop is None else stop

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global step `step`."""
        return divmod(step, self.steps_per_epoch)

    def batch(self, step: int) -> np.ndarray:
        """This rank's indices at global step `step`."""
        epoch, i = self.position(step)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        first = (i * self.world_size + self.rank) * self.batch_size
        return order[first:first + self.batch_size]

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            epoch = self.position(step)[0]
            yield [(int(i), epoch) for i in self.batch(step)]
