"""Negative sampling and the epoch-aware training sampler."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """Shuffles the training interactions per epoch and shards them over ranks, yielding
    ``(index, epoch)`` pairs so that the dataset can seed each example's negatives and augmentation from
    (seed, epoch, index): the data then do not depend on the number of workers, and a resumed run draws
    exactly what an uninterrupted one would.

    It subclasses ``DistributedSampler`` so that Lightning leaves it in place under DDP; Lightning calls
    ``set_epoch`` on it at the start of every epoch.
    """

    def __init__(self, dataset_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        self.size = dataset_size
        super().__init__(
            range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for index in super().__iter__():
            yield int(index), self.epoch


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, epoch, index))


@contextlib.contextmanager
def seeded_augmentation(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Seed the generators image transforms draw from (torch's and Python's: timm's crops use ``random``)
    from (seed, epoch, index), restoring both afterwards."""
    value = int(np.random.SeedSequence((seed, epoch, index)).generate_state(1, np.uint64)[0] % (2**63))
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(value)
        random.seed(value)
        try:
            yield
        finally:
            random.setstate(state)
