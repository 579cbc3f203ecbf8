"""Negative sampling: uniform items a user has not interacted with in training."""

from __future__ import annotations

import numpy as np

from mmrec_lightning.data.schema import SplitIndex


class NegativeSampler:
    """Draws negatives uniformly over the items that occur in training, never one of the user's training items.

    An item no one chose in training (a cold item) is never drawn: it would otherwise only ever be a negative,
    and a content model would learn to bury its content.

    Args:
        train: the training split (users' item rows).
        num_items: size of the catalogue.
        num_negatives: negatives per interaction.
    """

    def __init__(self, train: SplitIndex, num_items: int, num_negatives: int) -> None:
        self.num_items = num_items
        self.num_negatives = num_negatives
        users = np.repeat(np.arange(len(train.indptr) - 1, dtype=np.int64), train.lengths())
        self._seen = np.sort(users * num_items + train.items)  # (user, item) keys, for rejection
        self._candidates = np.flatnonzero(np.bincount(train.items, minlength=num_items) > 0)
        self._full_users = np.flatnonzero(train.lengths() >= len(self._candidates))

    def _is_seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.num_items + items
        found = np.minimum(np.searchsorted(self._seen, keys), len(self._seen) - 1)
        return self._seen[found] == keys

    def __call__(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """``[len(users), num_negatives]`` negatives, redrawn until none is one of its user's training items."""
        if np.isin(users, self._full_users).any():
            raise ValueError("cannot sample a negative: a user has interacted with every item")
        users = np.repeat(users, self.num_negatives)
        negatives = self._candidates[rng.integers(len(self._candidates), size=len(users))]
        redraw = self._is_seen(users, negatives)
        while redraw.any():
            negatives[redraw] = self._candidates[rng.integers(len(self._candidates), size=int(redraw.sum()))]
            redraw[redraw] = self._is_seen(users[redraw], negatives[redraw])
        return negatives.reshape(-1, self.num_negatives)
