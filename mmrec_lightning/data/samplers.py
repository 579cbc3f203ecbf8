"""The epoch-aware training batch sampler, the loader that resumes it mid-epoch, and the generators seeded
from (seed, epoch, batch) that make a batch the same whatever the number of workers."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler


def shard_sizes(size: int, num_replicas: int, batch_size: int) -> tuple[list[int], int]:
    """How many examples each rank takes so that every rank runs the same number of batches (DDP needs
    that) while no example is repeated: the last batches differ in size by at most one. Only when fewer
    examples than ranks are left over for those last batches are some repeated; returns (sizes, repeats)."""
    batches = -(-size // (num_replicas * batch_size))
    full = (batches - 1) * batch_size
    rest = size - num_replicas * full
    repeats = max(0, num_replicas - rest)
    rest += repeats
    return [full + rest // num_replicas + (rank < rest % num_replicas) for rank in range(num_replicas)], repeats


class EpochSampler(DistributedSampler):
    """Shuffles the training interactions per epoch, shards them over ranks and yields one key per batch,
    ``(indices, epoch)``, so that the dataset fetches a whole batch in one vectorised call and seeds its
    negatives and augmentation from (seed, epoch, first index): the data then do not depend on the number
    of workers, and a resumed run draws exactly what an uninterrupted one would. (Keys per example would
    cost a Python iteration per interaction, more than the fetch itself for ID models.)

    Unlike ``DistributedSampler``, which pads every shard to the same length with repeated examples, it
    sizes the shards (see :func:`shard_sizes`) so that within an epoch each interaction is seen once
    across ranks. It subclasses ``DistributedSampler`` so that Lightning leaves it in place under DDP;
    Lightning calls ``set_epoch`` on it at the start of every epoch. Use it with ``batch_size=None`` in the
    DataLoader: its items are batches already.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.size = dataset_size
        self.batch_size = batch_size
        sizes, self.repeats = shard_sizes(dataset_size, num_replicas, batch_size)
        self.num_samples = sizes[rank]
        self.start = sum(sizes[:rank])
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, batches_done: int) -> None:
        """Make the next pass over ``epoch`` start after its first ``batches_done`` batches."""
        self._resume = (epoch, batches_done)

    def __iter__(self) -> Iterator[tuple[np.ndarray, int]]:  # type: ignore[override]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        order = torch.cat([order, order[: self.repeats]])[self.start : self.start + self.num_samples].numpy()
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        for first in range(skip * self.batch_size, self.num_samples, self.batch_size):
            yield order[first : first + self.batch_size], self.epoch

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)


def derived_seed(*key: int) -> int:
    """A torch / Python seed drawn from ``key`` alone (well mixed: nearby keys give unrelated seeds)."""
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] % (2**63))


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng((seed, epoch, index))


@contextlib.contextmanager
def seeded_augmentation(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Seed the generators image transforms draw from (torch's and Python's: timm's crops use ``random``)
    from (seed, epoch, index), restoring both afterwards."""
    value = derived_seed(seed, epoch, index)
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(value)  # torch.manual_seed would also queue seeding every GPU
        random.seed(value)
        try:
            yield
        finally:
            random.setstate(state)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose place in the epoch is saved in checkpoints (Lightning calls ``state_dict`` /
    ``load_state_dict`` on stateful loaders), so a run resumed from a mid-epoch checkpoint continues with
    the next batch instead of starting the epoch again.

    Args:
        progress: returns how many batches of the current epoch have been trained on. It is read from the
            trainer rather than counted here, because the trainer fetches batches ahead of training them.
        *args, **kwargs: as for ``DataLoader``; the sampler must be an :class:`EpochSampler`.
    """

    def __init__(self, *args, progress: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": int(self.progress())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume(state["epoch"], state["batches_done"])
