"""The training stream: one example per training interaction, with its negatives, the user's history and
behaviour statistics (the evaluation streams are in :mod:`mmrec_lightning.evaluation`).

The dataset returns item *indices* only; the collator loads each distinct item's image and text once per
batch (batches share popular items), in the loader's worker processes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from mmrec_lightning.data.items import ItemContent
from mmrec_lightning.data.negatives import NegativeSampler
from mmrec_lightning.data.samplers import example_rng, seeded_augmentation
from mmrec_lightning.data.schema import SplitIndex

SECONDS_PER_DAY = 86_400.0

HistoryMode = Literal["preceding", "others"]


def user_statistics(train: SplitIndex) -> np.ndarray:
    """The user tower's behaviour statistics ``[users, 2]``, as of the end of the training data: the log number
    of training interactions and the log days from the user's last one to the last one in the training data
    (both 0 for a user without any).

    Training, evaluation and prediction all use these values: nothing about a held-out interaction (its item,
    time or count) may reach the model when it scores, and a statistic measured "as of each predicted
    interaction" in training would teach it gaps that never occur when it serves.
    """
    counts = train.lengths()
    if len(train.times) == 0:
        return np.zeros((len(counts), 2), dtype=np.float32)
    end = float(train.times.max())
    last = train.times[np.maximum(train.indptr[1:] - 1, 0)].astype(np.float64)
    days = np.where(counts > 0, np.maximum(end - last, 0.0) / SECONDS_PER_DAY, 0.0)
    return np.stack([np.log1p(counts), np.log1p(days)], axis=-1).astype(np.float32)


class TrainInteractions(Dataset):
    """One example per training interaction: the user, the positive item, sampled negatives (uniform over the
    items that occur in training, never one of the user's training items), the user's history, and the
    interaction's rating where the split has ratings.

    The history is, with ``history="preceding"``, the items the user interacted with just before the positive
    (next-item prediction, for leave-one-out and temporal splits, where what is held out follows the training
    data); with ``"others"``, the user's latest training items other than the positive — what evaluation
    shows the model (the latest training items) when held-out interactions fall anywhere in the user's time
    line, as in a random split.

    Indexed a batch at a time by ``(indices, epoch)`` (see :class:`~mmrec_lightning.data.samplers.EpochSampler`),
    vectorised: negatives are drawn from a generator seeded by (seed, epoch, first index of the batch), so
    batches do not depend on the number of workers.
    """

    def __init__(
        self,
        train: SplitIndex,
        num_items: int,
        num_negatives: int,
        history_length: int,
        seed: int,
        history: HistoryMode = "preceding",
    ) -> None:
        self.train = train
        self.history = history
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.history_length = history_length
        self.seed = seed
        self._users = np.repeat(np.arange(len(train.indptr) - 1, dtype=np.int64), train.lengths())  # per interaction
        self._negatives = NegativeSampler(train, num_items, num_negatives)
        self._stats = user_statistics(train)

    def __len__(self) -> int:
        return len(self.train.items)

    def __getitem__(self, key: tuple[np.ndarray, int]) -> dict[str, np.ndarray]:
        """The batch of the interactions at ``indices`` in ``epoch``, ``key = (indices, epoch)``."""
        indices, epoch = key
        index = np.asarray(indices, dtype=np.int64)
        train = self.train
        users = self._users[index]
        starts = train.indptr[users]
        if self.history == "preceding":
            positions = index[:, None] + np.arange(-self.history_length, 0)[None, :]
        else:  # the latest of the user's other training items, newest last, skipping the positive itself
            positions = train.indptr[users + 1][:, None] - np.arange(self.history_length, 0, -1)[None, :]
            positions = np.where(positions <= index[:, None], positions - 1, positions)
        history_mask = positions >= starts[:, None]
        history = np.where(history_mask, train.items[np.maximum(positions, 0)], 0)
        batch = {
            "key": (int(index[0]), epoch),
            "users": users,
            "items": train.items[index].astype(np.int64),
            "negatives": self._negatives(example_rng(self.seed, epoch, int(index[0])), users),
            "history": history.astype(np.int64),
            "history_mask": history_mask,
            "stats": self._stats[users],
        }
        if train.ratings is not None:
            batch["ratings"] = train.ratings[index].astype(np.float32)
        return batch


def _load_distinct(
    content: ItemContent, seed: int, key: tuple[int, int], parts: list[np.ndarray]
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Each distinct item of ``parts`` loaded once (augmented from (seed, epoch, batch)), and each part as
    indices into the loaded items."""
    unique, inverse = np.unique(np.concatenate([part.ravel() for part in parts]), return_inverse=True)
    index, epoch = key
    augmented = content.preprocessing.image_train is not None
    with seeded_augmentation(seed, epoch, index) if augmented else contextlib.nullcontext():
        items = content.load(unique, train=True)
    ends = np.cumsum([part.size for part in parts])
    return items, [
        torch.from_numpy(i.reshape(p.shape)) for i, p in zip(np.split(inverse, ends[:-1]), parts, strict=True)
    ]


def _scatter(indices: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """``indices`` of the ``mask``ed places, in an array of the mask's shape (0 elsewhere)."""
    full = torch.zeros(mask.shape, dtype=indices.dtype)
    full[torch.from_numpy(mask)] = indices
    return full


class TrainCollator:
    """Loads each distinct item of a batch (positive, negative or history) once and turns the batch into
    tensors whose item fields index the batch's item list."""

    def __init__(self, content: ItemContent, seed: int) -> None:
        self.content = content
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        mask = batch["history_mask"]
        parts = [batch["items"], batch["negatives"], batch["history"][mask]]
        items, (positives, negatives, history) = _load_distinct(self.content, self.seed, batch["key"], parts)
        collated = {
            "users": torch.from_numpy(batch["users"]),
            "positives": positives,
            "negatives": negatives,
            "history": _scatter(history, mask),
            "history_mask": torch.from_numpy(mask),
            "stats": torch.from_numpy(batch["stats"]),
            "items": items,
        }
        if "ratings" in batch:
            collated["ratings"] = torch.from_numpy(batch["ratings"])  # NaN where an interaction has no rating
        return collated


class TrainSequences(Dataset):
    """One example per user with at least two training items, a target at every position of the user's
    latest training items (oldest first, padded at the end, with sampled negatives per position, never one of
    the user's training items).

    What a position predicts follows ``history`` (see :class:`TrainInteractions`): with ``"preceding"``, the
    item that follows it (next-item prediction; the sequence is the latest ``max_length + 1`` items but the
    last); with ``"others"``, one of the user's training items not yet in the sequence, drawn at random each
    epoch — from later in the sequence or from before it (the sequence is the latest ``max_length`` items, as
    evaluation reads them). The second is what a random split asks: its held-out items fall anywhere in the
    user's time line, not after the latest one (a dense "all actions" target, as in PinnerFormer, Pancha et
    al. 2022, over the whole history rather than a future window).

    Indexed a batch at a time by ``(indices, epoch)`` like :class:`TrainInteractions`, negatives and targets
    drawn from (seed, epoch, first index of the batch).
    """

    def __init__(
        self,
        train: SplitIndex,
        num_items: int,
        num_negatives: int,
        max_length: int,
        seed: int,
        history: HistoryMode = "preceding",
    ) -> None:
        self.train = train
        self.max_length = max_length
        self.seed = seed
        self.history = history
        self.users = np.flatnonzero(train.lengths() >= 2)
        self._negatives = NegativeSampler(train, num_items, num_negatives)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, key: tuple[np.ndarray, int]) -> dict[str, Any]:
        indices, epoch = key
        users = self.users[np.asarray(indices, dtype=np.int64)]
        train = self.train
        lengths = train.indptr[users + 1] - train.indptr[users]
        targeted = np.minimum(lengths - 1, self.max_length)  # positions with a target: every one but a last
        # item without a successor (or, with "others", the last of a whole history: nothing is left for it)
        if self.history == "preceding":
            first = lengths - 1 - targeted
        else:
            first = lengths - np.minimum(lengths, self.max_length)
        width = int(targeted.max())
        offsets = np.arange(width)[None, :]
        mask = offsets < targeted[:, None]
        starts = train.indptr[users][:, None]
        sequence = np.where(mask, train.items[starts + np.minimum(first[:, None] + offsets, lengths[:, None] - 1)], 0)
        rng = example_rng(self.seed, epoch, int(indices[0]))
        negatives = self._negatives(rng, np.repeat(users, width)).reshape(len(users), width, -1)
        if self.history == "preceding":
            target_positions = first[:, None] + offsets + 1
        else:  # uniform over the items outside positions first..first+t: before the sequence, or after t in it
            outside = lengths[:, None] - offsets - 1
            draw = np.floor(rng.random(mask.shape) * np.maximum(outside, 1)).astype(np.int64)
            target_positions = np.where(draw < first[:, None], draw, draw + offsets + 1)
        targets = np.where(mask, train.items[starts + np.minimum(target_positions, lengths[:, None] - 1)], 0)
        return {
            "key": (int(indices[0]), epoch),
            "users": users,
            "sequence": sequence.astype(np.int64),
            "targets": targets.astype(np.int64),
            "sequence_mask": mask,
            "negatives": negatives,
        }


class SequenceCollator:
    """Loads each distinct item of a batch of sequences (inputs, targets, negatives) once; the item fields of
    the batch index the batch's item list."""

    def __init__(self, content: ItemContent, seed: int) -> None:
        self.content = content
        self.seed = seed

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        mask = batch["sequence_mask"]
        parts = [batch["sequence"][mask], batch["targets"][mask], batch["negatives"][mask]]
        items, (sequence, targets, negatives) = _load_distinct(self.content, self.seed, batch["key"], parts)
        full = torch.zeros((*mask.shape, negatives.shape[-1]), dtype=negatives.dtype)
        full[torch.from_numpy(mask)] = negatives
        return {
            "users": torch.from_numpy(batch["users"]),
            "sequence": _scatter(sequence, mask),
            "targets": _scatter(targets, mask),
            "sequence_mask": torch.from_numpy(mask),
            "negatives": full,
            "items": items,
        }
