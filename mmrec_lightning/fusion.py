"""Fusion of per-modality item vectors into one item vector.

Every fusion maps modality vectors ``h`` ``[B, M, D]`` and an availability mask ``[B, M]`` to the fused
vector ``z`` ``[B, D]`` and per-item modality weights ``[B, M]`` (which sum to 1 over the available
modalities), so that a recommendation can say which modality drove it. An item with no available
modality gets the zero vector. Models take a fusion *factory* ``(num_modalities, dim) -> Fusion``, so a
YAML ``class_path`` picks the fusion while the model supplies the dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Fusion(nn.Module):
    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.dim = dim

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def _uniform_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    weights = mask.to(dtype)
    return weights / weights.sum(1, keepdim=True).clamp(min=1.0)


class AttentionFusion(Fusion):
    """z = Σ_m α_m·h_m, α_m = softmax_m(qᵀh_m) over the available modalities, with a learnable query q.

    Args:
        num_modalities: number of modalities M.
        dim: vector size D.
        temperature: divides the logits qᵀh_m (lower is sharper).
    """

    def __init__(self, num_modalities: int, dim: int, temperature: float = 1.0) -> None:
        super().__init__(num_modalities, dim)
        self.query = nn.Parameter(torch.zeros(dim))
        self.temperature = temperature

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = (h @ self.query) / self.temperature
        logits = logits.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(logits, dim=1)
        alpha = torch.where(mask.any(1, keepdim=True), alpha, torch.zeros_like(alpha))
        return (alpha.unsqueeze(-1) * h).sum(1), alpha


class MeanFusion(Fusion):
    """z = mean of the available modality vectors."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = _uniform_weights(mask, h.dtype)
        return (weights.unsqueeze(-1) * h).sum(1), weights


class ConcatFusion(Fusion):
    """z = MLP([h_1; …; h_M]) with missing modalities zeroed; reports uniform weights over the available ones.

    Args:
        num_modalities: number of modalities M.
        dim: vector size D.
        hidden: width of the MLP's hidden layer (default 2·D).
        dropout: dropout inside the MLP.
    """

    def __init__(self, num_modalities: int, dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__(num_modalities, dim)
        hidden = hidden or 2 * dim
        self.mlp = nn.Sequential(
            nn.Linear(num_modalities * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.mlp((h * mask.unsqueeze(-1).to(h.dtype)).flatten(1))
        return torch.where(mask.any(1, keepdim=True), z, torch.zeros_like(z)), _uniform_weights(mask, h.dtype)


FusionFactory = Callable[[int, int], Fusion]
