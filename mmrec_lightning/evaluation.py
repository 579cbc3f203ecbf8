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


GROUP = 32
"""Columns per group in :func:`chunk_top`."""


def rank_items(
    users: torch.Tensor,
    items: torch.Tensor,
    exclude_rows: torch.Tensor,
    exclude_items: torch.Tensor,
    k: int,
    chunk_size: int = 1 << 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items ``(scores, indices)`` for each user by dot product, never an excluded (row, item)
    pair, best first. The catalogue is scored ``chunk_size`` items at a time into one reused buffer (a fresh
    ``users x chunk_size`` block per chunk would be paged in anew each time) in the vectors' own dtype, each
    chunk's top-k kept and one ``topk`` taken over them at the end, so memory is bounded by
    ``users x chunk_size`` whatever the catalogue size."""
    chunk_size = min(chunk_size, items.shape[0])
    dtype = torch.promote_types(users.dtype, items.dtype)
    buffer = torch.empty(users.shape[0] * chunk_size, dtype=dtype, device=users.device)
    candidate_scores, candidate_items = [], []
    users = users.to(dtype)
    with torch.autocast(users.device.type, enabled=False):  # ``out=`` products run in the inputs' dtype
        for start in range(0, items.shape[0], chunk_size):
            block = items[start : start + chunk_size]
            scores = buffer[: users.shape[0] * block.shape[0]].view(users.shape[0], block.shape[0])
            torch.mm(users, block.to(dtype).T, out=scores)
            inside = (exclude_items >= start) & (exclude_items < start + block.shape[0])
            scores[exclude_rows[inside], exclude_items[inside] - start] = float("-inf")
            top_scores, top_items = chunk_top(scores, k)
            candidate_scores.append(top_scores.float())
            candidate_items.append(top_items + start)
    scores, at = torch.cat(candidate_scores, dim=1).topk(min(k, items.shape[0]), dim=1)
    return scores, torch.cat(candidate_items, dim=1).gather(1, at)


def chunk_top(scores: torch.Tensor, k: int, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` ``(scores, columns)`` of each row, unordered. Over a wide chunk through group maxima: the
    ``k`` groups of ``group`` columns with the largest maxima hold a row's top ``k``, so ``topk`` runs over the
    maxima and those groups instead of every score (a third of the time at 65,536 columns); ``group`` 0: a
    plain ``topk``."""
    rows, columns = scores.shape
    if not group or columns % group or columns // group < 4 * k:
        return scores.topk(min(k, columns), dim=1, sorted=False)
    groups = scores.view(rows, columns // group, group)
    best = groups.amax(2).topk(k, dim=1, sorted=False).indices
    candidates = groups.gather(1, best.unsqueeze(2).expand(rows, k, group)).reshape(rows, k * group)
    values, at = candidates.topk(k, dim=1, sorted=False)
    return values, best.gather(1, at // group) * group + at % group


def hits_of(top_items: torch.Tensor, target_rows: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
    """``[users, k]`` bool: whether each ranked item is one of the user's (row, item) targets."""
    hits = torch.zeros(top_items.shape, dtype=torch.long, device=top_items.device)
    hits.index_add_(0, target_rows, (top_items[target_rows] == target_items.unsqueeze(1)).long())
    return hits > 0


def _slices(split: SplitIndex, users: np.ndarray, last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each user's interactions in ``split`` (their latest ``last`` only, when given), in time order, as
    (row of the user in ``users``, index into ``split.items``) — sliced from the CSR arrays without a loop."""
    ends = split.indptr[users + 1]
    starts = split.indptr[users] if last is None else np.maximum(split.indptr[users], ends - last)
    lengths = ends - starts
    rows = np.repeat(np.arange(len(users)), lengths)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    return rows, offsets


def _pairs(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) coordinate tensors of the parts together, grouped by row, each row's parts in order."""
    rows = np.concatenate([r for r, _ in parts])
    items = np.concatenate([i for _, i in parts])
    order = np.argsort(rows, kind="stable")
    return torch.from_numpy(rows[order].astype(np.int64)), torch.from_numpy(items[order].astype(np.int64))


class EvalUsers(Dataset):
    """The users with at least one interaction in the evaluated split (every user when ``target`` is None,
    for prediction), with what the ranking needs: their history (last training items), the items to find
    and the items to mask out.

    Nothing of the evaluated split reaches the model: the history and the behaviour statistics come from the
    training split alone (:func:`user_statistics`), the same for validation, test and prediction.

    A batch is built at once from the splits' CSR arrays (``__getitems__``, which the ``DataLoader`` calls
    with a batch's indices): a loop over users in Python would cost as much as ranking them.
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

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The batch of the one user at ``index``."""
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The batch of the users at ``indices``: ``users`` ``[B]``; ``history`` ``[B, H]`` (each user's latest
        ``history_length`` training items, oldest first, left-aligned) with ``history_mask``; ``stats``
        ``[B, S]``; the (row, item) coordinates of the items to find (``target_rows``, ``target_items``) and
        to mask (``exclude_rows``, ``exclude_items``)."""
        users = self.users[np.asarray(indices, dtype=np.int64)]
        history_rows, history_offsets = _slices(self.train, users, self.history_length)
        lengths = np.bincount(history_rows, minlength=len(users))
        history = np.zeros((len(users), max(int(lengths.max(initial=0)), 1)), dtype=np.int64)
        columns = np.arange(len(history_rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        history[history_rows, columns] = self.train.items[history_offsets]
        empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
        targets = empty if self.target is None else self._coordinates(self.target, users)
        excluded = [self._coordinates(self.train, users)]
        if self.also_exclude is not None:
            excluded.append(self._coordinates(self.also_exclude, users))
        target_rows, target_items = _pairs(targets)
        exclude_rows, exclude_items = _pairs(*excluded)
        return {
            "users": torch.from_numpy(users.astype(np.int64)),
            "history": torch.from_numpy(history),
            "history_mask": torch.from_numpy(np.arange(history.shape[1]) < lengths[:, None]),
            "stats": torch.from_numpy(self._stats[users]),
            "target_rows": target_rows,
            "target_items": target_items,
            "exclude_rows": exclude_rows,
            "exclude_items": exclude_items,
        }

    @staticmethod
    def _coordinates(split: SplitIndex, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, offsets = _slices(split, users)
        return rows, split.items[offsets]


def collate_eval_users(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The evaluation loader's collate: :meth:`EvalUsers.__getitems__` has built the batch already."""
    return batch


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
