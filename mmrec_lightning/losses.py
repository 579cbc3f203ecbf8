"""Recommendation losses over (user, positive, negatives) vectors, and the weighting of auxiliary task
losses; all computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RecommendationLoss(nn.Module):
    def forward(
        self,
        user: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor,
        positive_ids: torch.Tensor,
        negative_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``user`` and ``positive`` ``[B, D]``, ``negatives`` ``[B, N, D]``; the item ids ``positive_ids``
        ``[B]`` and ``negative_ids`` ``[B, N]``."""
        raise NotImplementedError

    def set_item_counts(self, counts: torch.Tensor) -> None:
        """Receive every item's number of training interactions (models call this in ``setup``); only losses
        that correct for popularity use it."""


def _scores(user: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s⁺ ``[B, 1]``, s⁻ ``[B, N]``) in float32."""
    user, positive, negatives = user.float(), positive.float(), negatives.float()
    # vecdot rather than einsum: on CPU einsum's batched product of 1-row matrices is 4-10x slower
    return torch.linalg.vecdot(user, positive).unsqueeze(-1), torch.linalg.vecdot(user.unsqueeze(1), negatives)


class BPRLoss(RecommendationLoss):
    """Bayesian personalised ranking: mean of −log σ(s⁺ − s⁻) over every (positive, sampled negative) pair."""

    def forward(self, user, positive, negatives, positive_ids, negative_ids=None):
        pos, neg = _scores(user, positive, negatives)
        return -F.logsigmoid(pos - neg).mean()


class BCELoss(RecommendationLoss):
    """Binary cross-entropy on the scores: the positive labelled 1 and each sampled negative 0, averaged
    over all B·(1 + N) labels."""

    def forward(self, user, positive, negatives, positive_ids, negative_ids=None):
        logits = torch.cat(_scores(user, positive, negatives), dim=1)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)


class SampledSoftmaxLoss(RecommendationLoss):
    """In-batch sampled softmax: each user's positive against the other rows' positives and its own sampled
    negatives; another row's positive that is the same item is not counted as a negative.

    With ``logq_correction`` (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
    Recommendations", RecSys 2019) each candidate's logit is reduced by the log of the number of times it
    is expected among a row's candidates: B·c_j/C as one of the B in-batch positives (an item is a positive
    in proportion to its training count c_j, C = Σ c) plus N/I as one of the row's N uniformly sampled
    negatives (I items that occur in training) — the sampled negatives play the part of the extra uniform
    negatives of mixed negative sampling (Yang et al., WWW 2020). Without it, popular items are
    over-represented among the negatives and their scores are pushed down; the correction removes that
    popularity penalty.

    Args:
        temperature: divides the scores.
        logq_correction: correct the logits for how often each candidate is sampled (needs the training
            item counts, which the model passes in ``setup``, and the negatives' item ids).
        in_batch: whether the other rows' positives are candidates too. Without, each row's positive competes
            with its own sampled negatives only (uniform, so no correction is needed): what a sequential model
            wants, whose batch holds a row per position of each history, B² candidates too many.
    """

    def __init__(self, temperature: float = 0.1, logq_correction: bool = False, in_batch: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.logq_correction = logq_correction
        self.in_batch = in_batch
        self.register_buffer("item_counts", None, persistent=False)

    def set_item_counts(self, counts: torch.Tensor) -> None:
        self.item_counts = torch.as_tensor(counts, dtype=torch.float32)
        self._sampled_items = int((self.item_counts > 0).sum())  # negatives are uniform over the trained items

    def _log_expected_count(self, ids: torch.Tensor, batch_size: int, num_negatives: int) -> torch.Tensor:
        counts = self.item_counts
        return torch.log(batch_size * counts[ids] / counts.sum() + num_negatives / self._sampled_items)

    def logits(self, user, positive, negatives, positive_ids, negative_ids=None) -> torch.Tensor:
        """``[B, B + N]``: the in-batch candidates (column b is row b's positive), then the row's negatives;
        without ``in_batch``, ``[B, 1 + N]``: the row's positive, then its negatives."""
        user, positive, negatives = user.float(), positive.float(), negatives.float()
        sampled = torch.einsum("bd,bnd->bn", user, negatives)
        if not self.in_batch:
            return torch.cat([torch.linalg.vecdot(user, positive).unsqueeze(1), sampled], dim=1) / self.temperature
        in_batch = user @ positive.T
        same_item = positive_ids.unsqueeze(0) == positive_ids.unsqueeze(1)
        in_batch = in_batch.masked_fill(
            same_item & ~torch.eye(len(user), dtype=torch.bool, device=user.device), float("-inf")
        )
        logits = torch.cat([in_batch, sampled], dim=1) / self.temperature
        if not self.logq_correction:
            return logits
        if self.item_counts is None or negative_ids is None:
            raise RuntimeError(
                "SampledSoftmaxLoss(logq_correction=True) needs the training item counts (set_item_counts, called "
                "by RecommenderModule.setup) and the negatives' item ids"
            )
        batch_size, num_negatives = negatives.shape[:2]
        log_q = torch.cat(
            [
                self._log_expected_count(positive_ids, batch_size, num_negatives).expand(batch_size, -1),
                self._log_expected_count(negative_ids, batch_size, num_negatives),
            ],
            dim=1,
        )
        return logits - log_q

    def forward(self, user, positive, negatives, positive_ids, negative_ids=None):
        logits = self.logits(user, positive, negatives, positive_ids, negative_ids)
        targets = torch.arange(len(user), device=logits.device) if self.in_batch else logits.new_zeros(len(user))
        return F.cross_entropy(logits, targets.long())


class TaskWeighting(nn.Module):
    """Combines auxiliary task losses into one term added to the recommendation loss.

    ``fixed``: Σ_k λ_k·L_k. ``uncertainty`` (Kendall et al., "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018): Σ_k exp(−s_k)·L_k + s_k with a learned s_k per
    task, started at s_k = −log λ_k so that training begins with the configured weights. A task whose loss
    is exactly zero in a batch had no example there (see :mod:`mmrec_lightning.heads`): its s_k term is
    left out, so that such batches do not drive its weight up.

    Args:
        weights: λ_k (> 0) of each task, by name.
        learned: learn the weights by uncertainty instead of keeping λ.
    """

    def __init__(self, weights: dict[str, float], learned: bool = False) -> None:
        super().__init__()
        self.names = list(weights)
        initial = torch.tensor([weights[name] for name in self.names], dtype=torch.float32)
        self.learned = learned
        if learned:
            self.log_variance = nn.Parameter(-initial.log())
        else:
            self.register_buffer("fixed", initial, persistent=False)

    def weights(self) -> torch.Tensor:
        """The current weight of each task, in the order of ``names``."""
        return torch.exp(-self.log_variance) if self.learned else self.fixed

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([losses[name].float() for name in self.names])
        total = (self.weights() * stacked).sum()
        if self.learned:
            total = total + (self.log_variance * (stacked.detach() != 0)).sum()
        return total
