"""The three streams a recommender needs: training examples, evaluation users, and the item catalogue.

Datasets return item *indices* only; the collators load each distinct item's image and text once per
batch (batches share popular items), in the loader's worker processes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmrec_lightning.data.items import ItemContent
from mmrec_lightning.data.sampling import example_rng, seeded_augmentation
from mmrec_lightning.data.schema import SplitIndex

SECONDS_PER_DAY = 86_400.0


def behaviour_stats(history_size: np.ndarray, seconds_since_last: np.ndarray) -> np.ndarray:
    """The user tower's behaviour statistics ``[N, 2]``: log interaction count and log days since the last
    one (0 without history)."""
    days = np.where(history_size > 0, np.maximum(seconds_since_last, 0.0) / SECONDS_PER_DAY, 0.0)
    return np.stack([np.log1p(history_size), np.log1p(days)], axis=-1).astype(np.float32)


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
    """One example per training interaction: the user, the positive item, sampled negatives that are not
    among the user's training items, the user's preceding history in time, and the interaction's rating
    where the split has ratings.

    Indexed a batch at a time by ``(indices, epoch)`` (see :class:`~mmrec_lightning.data.sampling.EpochSampler`),
    vectorised: negatives are drawn from a generator seeded by (seed, epoch, first index of the batch), so
    batches do not depend on the number of workers.
    """

    def __init__(self, train: SplitIndex, num_items: int, num_negatives: int, history_length: int, seed: int) -> None:
        self.train = train
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.history_length = history_length
        self.seed = seed
        self._users = np.repeat(np.arange(len(train.indptr) - 1, dtype=np.int64), train.lengths())  # per interaction
        self._seen = np.sort(self._users * num_items + train.items)  # (user, item) keys, for negative rejection
        self._full_users = np.flatnonzero(train.lengths() >= num_items)

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
        negatives = rng.integers(self.num_items, size=len(users))
        redraw = self._is_seen(users, negatives)
        while redraw.any():
            negatives[redraw] = rng.integers(self.num_items, size=int(redraw.sum()))
            redraw[redraw] = self._is_seen(users[redraw], negatives[redraw])
        return negatives.reshape(-1, self.num_negatives)

    def __getitem__(self, key: tuple[np.ndarray, int]) -> dict[str, np.ndarray]:
        """The batch of the interactions at ``indices`` in ``epoch``, ``key = (indices, epoch)``."""
        indices, epoch = key
        index = np.asarray(indices, dtype=np.int64)
        train = self.train
        users = self._users[index]
        starts = train.indptr[users]
        positions = index[:, None] + np.arange(-self.history_length, 0)[None, :]
        history_mask = positions >= starts[:, None]
        history = np.where(history_mask, train.items[np.maximum(positions, 0)], 0)
        has_previous = index > starts
        gap = np.where(has_previous, train.times[index] - train.times[np.maximum(index - 1, 0)], 0)
        batch = {
            "key": (int(index[0]), epoch),
            "users": users,
            "items": train.items[index].astype(np.int64),
            "negatives": self._negatives(example_rng(self.seed, epoch, int(index[0])), users),
            "history": history.astype(np.int64),
            "history_mask": history_mask,
            "stats": behaviour_stats(index - starts, gap.astype(np.float64)),
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

    Recency is measured as of the time the user's evaluated interactions begin (only their timestamp is
    used, never their items), as training measures it as of each predicted interaction; for prediction,
    as of the end of the training data.
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
        self.reference_time = float(train.times.max()) if len(train.times) else 0.0
        self._target_lengths = target.lengths() if target is not None else None

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> dict[str, Any]:
        user = int(self.users[index])
        seen = self.train.row(user)
        lo, hi = self.train.indptr[user], self.train.indptr[user + 1]
        last = float(self.train.times[hi - 1]) if hi > lo else self.reference_time
        now = self.reference_time
        if self._target_lengths is not None and self._target_lengths[user]:
            now = float(self.target.times[self.target.indptr[user]])
        exclude = seen if self.also_exclude is None else np.concatenate([seen, self.also_exclude.row(user)])
        return {
            "user": user,
            "history": np.asarray(seen[-self.history_length :] if self.history_length else seen[:0], dtype=np.int64),
            "stats": behaviour_stats(np.array(len(seen)), np.array(now - last)),
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
