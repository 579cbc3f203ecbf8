"""The user tower: who the user is, what they interacted with recently, and how they behave."""

from __future__ import annotations

import torch
from torch import nn


class UserTower(nn.Module):
    """user vector = ID embedding + W_h · mean(history item vectors) + MLP(behaviour statistics), the ID
    embedding optional: without it a user is described by their items alone (as in FISM), which generalises
    better where users have many interactions and needs no retraining for a new user.

    Args:
        num_users: size of the user-ID embedding table.
        dim: vector size, the same as the item vectors (scores are dot products).
        num_stats: behaviour statistics per user (log interaction count, log days since the last one).
        dropout: dropout on the output.
        use_id: whether the user-ID embedding is a part.
    """

    def __init__(self, num_users: int, dim: int, num_stats: int = 2, dropout: float = 0.0, use_id: bool = True) -> None:
        super().__init__()
        self.num_users, self.dim = num_users, dim
        self.embedding: nn.Embedding | None = None
        if use_id:
            self.add_id()
        self.history = nn.Linear(dim, dim, bias=False)
        self.stats = nn.Sequential(nn.Linear(num_stats, dim), nn.GELU(), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def add_id(self) -> None:
        """Give the tower its user-ID embedding, for a model that decides on it once it has seen its data."""
        device = next((parameter.device for parameter in self.parameters()), None)  # built first in __init__
        self.embedding = nn.Embedding(self.num_users, self.dim, device=device)
        nn.init.normal_(self.embedding.weight, std=0.1)

    def forward(
        self,
        users: torch.Tensor,
        history: torch.Tensor,
        history_mask: torch.Tensor,
        stats: torch.Tensor,
    ) -> torch.Tensor:
        """``history`` ``[B, L, D]`` item vectors with ``history_mask`` ``[B, L]``; ``stats`` ``[B, S]``."""
        weights = history_mask.unsqueeze(-1).to(history.dtype)
        pooled = (history * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        vector = self.history(pooled) + self.stats(stats.to(history.dtype))
        if self.embedding is not None:
            vector = vector + self.embedding(users)
        return self.dropout(vector)
