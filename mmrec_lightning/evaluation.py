"""The evaluation protocol, as MMRec runs it: full ranking of the catalogue, training items masked.

Every evaluation (validation, test, prediction) reads two loaders in this order:

1. ``CATALOGUE``: every item once (:class:`Catalogue`), encoded by the model into a table of item vectors;
2. ``USERS``: the users to rank for (:class:`EvalUsers`) — those with held-out interactions in the evaluated
   split, or everyone for prediction, which sees what test sees — each with the history the model describes
   them by and the items to mask: their training items (at test and prediction also their validation items
   when those precede the test ones in time, ``data.test_history``, or with ``data.mask_valid_at_test``),
   and the items to find.

Each user is scored against the whole table (:func:`rank_items`, chunked so memory stays bounded), the top-K
compared with the held-out items (:func:`hits_of`) and the ranking metrics updated
(:class:`~mmrec_lightning.metrics.RankingMetrics`). At test the same ranking is also scored for the warm and
the cold target items apart (:func:`target_groups`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmrec_lightning.data.datasets import user_statistics
from mmrec_lightning.data.items import ItemContent
from mmrec_lightning.data.schema import SplitIndex

CATALOGUE, USERS = 0, 1
"""The order of an evaluation's two loaders: the item catalogue first, then the users."""


def target_groups(
    target_rows: torch.Tensor, target_items: torch.Tensor, cold: torch.Tensor | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The (row, item) targets a ranking is scored against: ``all`` of them and, where ``cold`` (``[items]``
    bool) is given, the ``warm`` and the ``cold`` ones apart — the same ranking, other relevant items."""
    groups = {"all": (target_rows, target_items)}
    if cold is not None:
        is_cold = cold.to(target_items.device)[target_items]
        for name, keep in (("warm", ~is_cold), ("cold", is_cold)):
            groups[name] = (target_rows[keep], target_items[keep])
    return groups


def rank_items(
    users: torch.Tensor,
    items: torch.Tensor,
    exclude_rows: torch.Tensor,
    exclude_items: torch.Tensor,
    k: int,
    chunk_size: int = 1 << 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items ``(scores, indices)`` for each user by dot product, never an excluded (row, item)
    pair. The catalogue is scored ``chunk_size`` items at a time and the per-chunk top-k merged, so memory
    is bounded by ``users x chunk_size`` whatever the catalogue size."""
    best_scores = best_items = None
    for start in range(0, items.shape[0], chunk_size):
        block = items[start : start + chunk_size]
        scores = (users @ block.T).float()
        inside = (exclude_items >= start) & (exclude_items < start + block.shape[0])
        scores[exclude_rows[inside], exclude_items[inside] - start] = float("-inf")
        top_scores, top_items = scores.topk(min(k, block.shape[0]), dim=1)
        del scores  # else the next block's scores are computed while this one is still held
        top_items = top_items + start
        if best_scores is not None:
            top_scores = torch.cat([best_scores, top_scores], dim=1)
            top_items = torch.cat([best_items, top_items], dim=1)
            top_scores, order = top_scores.topk(min(k, top_scores.shape[1]), dim=1)
            top_items = top_items.gather(1, order)
        best_scores, best_items = top_scores, top_items
    return best_scores, best_items


def hits_of(top_items: torch.Tensor, target_rows: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
    """``[users, k]`` bool: whether each ranked item is one of the user's (row, item) targets."""
    hits = torch.zeros(top_items.shape, dtype=torch.long, device=top_items.device)
    hits.index_add_(0, target_rows, (top_items[target_rows] == target_items.unsqueeze(1)).long())
    return hits > 0


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
