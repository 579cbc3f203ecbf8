"""Auxiliary heads on the fused item vector."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class CategoryHead(nn.Module):
    """Predicts an item's category from its fused vector; items with unknown category (-1) are ignored.

    Args:
        dim: item vector size.
        num_categories: number of categories.
        dropout: dropout before the classifier.
    """

    def __init__(self, dim: int, num_categories: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_categories))

    def loss(self, item_vectors: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        known = categories >= 0
        if not known.any():
            return item_vectors.new_zeros(())
        logits = self.classifier(item_vectors[known]).float()
        return F.cross_entropy(logits, categories[known])


CategoryHeadFactory = Callable[[int, int], CategoryHead]
