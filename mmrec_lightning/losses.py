"""Recommendation losses over (user, positive, negatives) vectors; all computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RecommendationLoss(nn.Module):
    def forward(
        self, user: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, positive_ids: torch.Tensor
    ) -> torch.Tensor:
        """``user`` and ``positive`` ``[B, D]``, ``negatives`` ``[B, N, D]``, ``positive_ids`` ``[B]``."""
        raise NotImplementedError


class BPRLoss(RecommendationLoss):
    """Bayesian personalised ranking: mean of −log σ(s⁺ − s⁻) over every (positive, sampled negative) pair."""

    def forward(self, user, positive, negatives, positive_ids):
        user, positive, negatives = user.float(), positive.float(), negatives.float()
        pos = (user * positive).sum(-1, keepdim=True)
        neg = torch.einsum("bd,bnd->bn", user, negatives)
        return -F.logsigmoid(pos - neg).mean()


class SampledSoftmaxLoss(RecommendationLoss):
    """In-batch sampled softmax: each user's positive against the other rows' positives and its own sampled
    negatives; another row's positive that is the same item is not counted as a negative.

    Args:
        temperature: divides the scores.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, user, positive, negatives, positive_ids):
        user, positive, negatives = user.float(), positive.float(), negatives.float()
        in_batch = user @ positive.T
        same_item = positive_ids.unsqueeze(0) == positive_ids.unsqueeze(1)
        in_batch = in_batch.masked_fill(
            same_item & ~torch.eye(len(user), dtype=torch.bool, device=user.device), float("-inf")
        )
        sampled = torch.einsum("bd,bnd->bn", user, negatives)
        logits = torch.cat([in_batch, sampled], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.arange(len(user), device=user.device))
