"""The three streams a recommender needs: training examples, evaluation users, and the item catalogue.

Datasets return item *indices* only; the collators load each distinct item's image and text once per
batch (batches share popular items), in the loader's worker processes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from mmrec_lightning.data.items import ItemContent
from mmrec_lightning.data.sampling import example_rng, seeded_augmentation
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


def _pad(rows: list[np.ndarray], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned padding of variable-length index rows; returns (indices, mask), padding index 0."""
    out = np.zeros((len(rows), max(width, 1)), dtype=np.int64)
    mask = np.zeros_like(out, dtype=bool)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
        mask[r, : len(row)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def _pairs(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """A ragged batch as (row, column) coordinate tensors."""
    lengths = [len(r) for r in rows]
    row_ids = np.repeat(np.arange(len(rows)), lengths)
    cols = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    return torch.from_numpy(row_ids.astype(np.int64)), torch.from_numpy(cols.astype(np.int64))


class TrainInteractions(Dataset):
    """One example per training interaction: the user, the positive item, sampled negatives (uniform over the
    items that occur in training, never one of the user's training items), the user's history, and the
    interaction's rating where the split has ratings.

    The history is, with ``history="preceding"``, the items the user interacted with just before the positive
    (next-item prediction, for leave-one-out and temporal splits, where what is held out follows the training
    data); with ``"others"``, the user's latest training items other than the positive — what evaluation
    shows the model (the latest training items) when held-out interactions fall anywhere in the user's time
    line, as in a random split.

    Indexed a batch at a time by ``(indices, epoch)`` (see :class:`~mmrec_lightning.data.sampling.EpochSampler`),
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
        self._seen = np.sort(self._users * num_items + train.items)  # (user, item) keys, for negative rejection
        # negatives are drawn from the items that occur in training: an item no one chose in training (a cold
        # item) would otherwise only ever be a negative, and a content model would learn to bury its content
        self._candidates = np.flatnonzero(np.bincount(train.items, minlength=num_items) > 0)
        self._full_users = np.flatnonzero(train.lengths() >= len(self._candidates))
        self._stats = user_statistics(train)

    def __len__(self) -> int:
        return len(self.train.items)

    def _is_seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.num_items + items
        found = np.minimum(np.searchsorted(self._seen, keys), len(self._seen) - 1)
        return self._seen[found] == keys

    def _negatives(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """Uniform negatives per user, redrawn until none is one of the user's training items."""
        if np.isin(users, self._full_users).any():
            raise ValueError("cannot sample a negative: a user has interacted with every item")
        users = np.repeat(users, self.num_negatives)
        negatives = self._candidates[rng.integers(len(self._candidates), size=len(users))]
        redraw = self._is_seen(users, negatives)
        while redraw.any():
            negatives[redraw] = self._candidates[rng.integers(len(self._candidates), size=int(redraw.sum()))]
            redraw[redraw] = self._is_seen(users[redraw], negatives[redraw])
        return negatives.reshape(-1, self.num_negatives)

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


class TrainCollator:
    """Loads each distinct item of a batch (positive, negative or history) once and turns the batch into
    tensors whose item fields index the batch's item list."""

    def __init__(self, content: ItemContent, seed: int) -> None:
        self.content = content
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        positives, negatives, history, mask = (
            batch["items"],
            batch["negatives"],
            batch["history"],
            batch["history_mask"],
        )
        unique, inverse = np.unique(np.concatenate([positives, negatives.ravel(), history[mask]]), return_inverse=True)
        n, k = len(positives), negatives.size
        history_index = np.zeros_like(history)
        history_index[mask] = inverse[n + k :]
        index, epoch = batch["key"]
        augmented = self.content.preprocessing.image_train is not None
        with seeded_augmentation(self.seed, epoch, index) if augmented else contextlib.nullcontext():
            items = self.content.load(unique, train=True)
        collated = {
            "users": torch.from_numpy(batch["users"]),
            "positives": torch.from_numpy(inverse[:n]),
            "negatives": torch.from_numpy(inverse[n : n + k].reshape(negatives.shape)),
            "history": torch.from_numpy(history_index),
            "history_mask": torch.from_numpy(mask),
            "stats": torch.from_numpy(batch["stats"]),
            "items": items,
        }
        if "ratings" in batch:
            collated["ratings"] = torch.from_numpy(batch["ratings"])  # NaN where an interaction has no rating
        return collated


class EvalUsers(Dataset):
    """The users with at least one interaction in the evaluated split (every user when ``target`` is None,
    for prediction), with what the ranking needs: their history (last training items), the items to find
    and the items to mask out.

    Nothing of the evaluated split reaches the model: the history and the behaviour statistics come from the
    training split alone (:func:`user_statistics`), the same for validation, test and prediction.
    """

    def __init__(
        self,
        train: SplitIndex,
        target: SplitIndex | None,
        history_length: int,
        also_exclude: SplitIndex | None = None,
    ) -> None:
        self.train = train
        self.target = target
        self.also_exclude = also_exclude
        self.history_length = history_length
        self.users = np.flatnonzero(target.lengths() > 0) if target is not None else np.arange(len(train.indptr) - 1)
        self._stats = user_statistics(train)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> dict[str, Any]:
        user = int(self.users[index])
        seen = self.train.row(user)
        exclude = seen if self.also_exclude is None else np.concatenate([seen, self.also_exclude.row(user)])
        return {
            "user": user,
            "history": np.asarray(seen[-self.history_length :] if self.history_length else seen[:0], dtype=np.int64),
            "stats": self._stats[user],
            "targets": np.asarray(self.target.row(user) if self.target is not None else [], dtype=np.int64),
            "exclude": np.asarray(exclude, dtype=np.int64),
        }


def collate_eval_users(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    histories = [e["history"] for e in examples]
    history, history_mask = _pad(histories, max(len(h) for h in histories))
    target_rows, target_items = _pairs([e["targets"] for e in examples])
    exclude_rows, exclude_items = _pairs([e["exclude"] for e in examples])
    return {
        "users": torch.tensor([e["user"] for e in examples], dtype=torch.long),
        "history": history,
        "history_mask": history_mask,
        "stats": torch.from_numpy(np.stack([e["stats"] for e in examples])),
        "target_rows": target_rows,
        "target_items": target_items,
        "exclude_rows": exclude_rows,
        "exclude_items": exclude_items,
    }


class Catalogue(Dataset):
    """Every item index once, for encoding the whole catalogue at evaluation."""

    def __init__(self, num_items: int) -> None:
        self.num_items = num_items

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> int:
        return index


class CatalogueCollator:
    def __init__(self, content: ItemContent) -> None:
        self.content = content

    def __call__(self, items: list[int]) -> dict[str, torch.Tensor]:
        return self.content.load(np.asarray(items, dtype=np.int64), train=False)
