"""Full-ranking metrics with MMRec's definitions, as a torchmetrics ``Metric`` (DDP sync built in).

torchmetrics' own retrieval metrics take one (query, document) row per score and group by query
index, which for full ranking means users x items rows per batch; here a batch is a dense score matrix
and each user's top-K is taken once for every metric and K.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

METRICS = ("recall", "ndcg", "precision", "map", "hit")


def ranking_metrics(hits: torch.Tensor, num_relevant: torch.Tensor, top_k: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user metrics from the relevance of each user's ranked top items.

    Args:
        hits: ``[users, max(top_k)]`` bool, whether the item at each rank is relevant.
        num_relevant: ``[users]`` number of relevant items of each user (all > 0).
        top_k: the cut-offs K.

    Returns:
        ``{"recall@10": [users], ...}`` in float64, with MMRec's definitions: Recall = hits / |relevant|;
        NDCG with binary gains and ideal DCG over min(|relevant|, K) positions; Precision = hits / K;
        MAP = sum of precision at each hit position / min(|relevant|, K); Hit = any hit.
    """
    hits = hits.to(torch.float64)
    num_relevant = num_relevant.to(torch.float64)
    positions = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float64)
    discount = 1.0 / torch.log2(positions + 1.0)
    cum_hits = hits.cumsum(1)
    dcg = (hits * discount).cumsum(1)
    ideal = discount.cumsum(0)
    precision_at_hits = (cum_hits / positions * hits).cumsum(1)
    out = {}
    for k in top_k:
        capped = torch.clamp(num_relevant, max=k)
        idcg = ideal[capped.long() - 1]
        out[f"recall@{k}"] = cum_hits[:, k - 1] / num_relevant
        out[f"ndcg@{k}"] = dcg[:, k - 1] / idcg
        out[f"precision@{k}"] = cum_hits[:, k - 1] / k
        out[f"map@{k}"] = precision_at_hits[:, k - 1] / capped
        out[f"hit@{k}"] = (cum_hits[:, k - 1] > 0).to(torch.float64)
    return out


class RankingMetrics(Metric):
    """Recall, NDCG, Precision, MAP and Hit at several K over all items, averaged over the users that have
    at least one relevant item.

    Args:
        top_k: the cut-offs K.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, top_k: Sequence[int] = (10, 20, 50)) -> None:
        super().__init__()
        if not top_k or min(top_k) < 1:
            raise ValueError(f"top_k must be a non-empty list of positive integers, got {list(top_k)}")
        self.top_k = sorted(set(int(k) for k in top_k))
        self.names = [f"{metric}@{k}" for metric in METRICS for k in self.top_k]
        for name in self.names:
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("users", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def max_k(self) -> int:
        return self.top_k[-1]

    def update(self, hits: torch.Tensor, num_relevant: torch.Tensor) -> None:
        """Accumulate users given the relevance ``hits`` ``[users, max(top_k)]`` of their ranked top items and
        their number of relevant items; users with no relevant item are skipped."""
        keep = num_relevant > 0
        if not keep.any():
            return
        values = ranking_metrics(hits[keep], num_relevant[keep], self.top_k)
        for name, per_user in values.items():
            setattr(self, name, getattr(self, name) + per_user.sum())
        self.users += keep.sum()

    def update_from_scores(self, scores: torch.Tensor, relevant: torch.Tensor) -> None:
        """Rank every item by ``scores`` ``[users, items]`` (items to exclude already at ``-inf``) against the
        bool matrix ``relevant``. Ties are broken as ``torch.topk`` breaks them, as in MMRec."""
        if self.max_k > scores.shape[1]:
            raise ValueError(f"top_k {self.max_k} is larger than the catalogue ({scores.shape[1]} items)")
        top = torch.topk(scores, self.max_k, dim=1).indices
        self.update(relevant.gather(1, top), relevant.sum(1))

    def compute(self) -> dict[str, torch.Tensor]:
        """The mean of each metric over the evaluated users, and ``users``, their number."""
        users = self.users.clamp(min=1).to(torch.float64)
        return {**{name: (getattr(self, name) / users).float() for name in self.names}, "users": self.users.float()}
