"""Auxiliary heads trained next to the recommendation loss.

Each head's ``loss`` is a mean over the batch's examples for its task, and exactly zero when the batch has
none (no known category, no item with both an image and a text, no rated interaction); that zero is still
computed from the head's parameters, so under DDP every parameter takes part in every step. Examples
without a label are masked rather than selected, so no loss waits on the GPU to learn how many there are.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp(min=1)


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
        logits = self.classifier(item_vectors).float()
        categories = categories.clamp(min=-1)  # any negative category is unknown
        total = F.cross_entropy(logits, categories, ignore_index=-1, reduction="sum")
        return _mean(total, (categories >= 0).sum())


CategoryHeadFactory = Callable[[int, int], CategoryHead]


class ImageTextContrastiveHead(nn.Module):
    """Symmetric InfoNCE (as in CLIP) between the image and the text vector of the same item: within a
    batch, each item's image should be closer to its own text than to the other items' texts, and vice
    versa. Vectors are L2-normalised, so the logits are cosine similarities divided by the temperature.

    Args:
        temperature: the initial (or, when not learnable, fixed) temperature τ.
        learnable_temperature: learn τ (as log 1/τ, capped at 1/τ = 100 as in CLIP).
    """

    def __init__(self, temperature: float = 0.07, learnable_temperature: bool = True) -> None:
        super().__init__()
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def loss(self, image: torch.Tensor, text: torch.Tensor, both: torch.Tensor | None = None) -> torch.Tensor:
        """``image`` and ``text`` ``[N, D]``: row i of each belongs to the same item; ``both`` ``[N]`` marks
        the items that have both (default all), the only ones that take part."""
        both = torch.ones(len(image), dtype=torch.bool, device=image.device) if both is None else both
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
        # an item without both is no candidate for the others, and its own row and column keep only its
        # diagonal, which makes its loss exactly 0
        targets = torch.arange(len(logits), device=logits.device)
        kept = (both.unsqueeze(0) & both.unsqueeze(1)) | (targets.unsqueeze(0) == targets.unsqueeze(1))
        logits = logits.masked_fill(~kept, float("-inf"))
        total = F.cross_entropy(logits, targets, reduction="sum") + F.cross_entropy(logits.T, targets, reduction="sum")
        return _mean(total, 2 * both.sum())


class ContentAlignmentHead(ImageTextContrastiveHead):
    """The same symmetric InfoNCE between another pair of views of an item: its content vector (the item's
    modalities fused without its ID) and its ID vector, as CLCRec aligns them. The content path is what a
    cold item is scored by; aligning it with the ID vectors of trained items teaches it to place an item
    where its behaviour would have put it.

    Args:
        temperature: the initial (or, when not learnable, fixed) temperature τ.
        learnable_temperature: learn τ (as log 1/τ, capped at 1/τ = 100 as in CLIP).
    """


class RatingHead(nn.Module):
    """Predicts from the user and item vectors whether the user rated the item at least ``threshold`` (a
    like or click label), by binary cross-entropy; interactions without a rating (NaN) are ignored.

    Args:
        dim: user and item vector size.
        threshold: ratings at or above it are positive labels.
        hidden: width of the MLP's hidden layer (default 2·D).
        dropout: dropout inside the MLP.
    """

    def __init__(self, dim: int, threshold: float = 4.0, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.threshold = threshold
        hidden = hidden or 2 * dim
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` of P(rating >= threshold) for the (user, item) pairs ``[B, D]``."""
        return self.mlp(torch.cat([user, item, user * item], dim=-1)).squeeze(-1)

    def loss(self, user: torch.Tensor, item: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(ratings)
        logits = self(user, item).float()
        labels = (ratings >= self.threshold).float()  # NaN >= t is False: a label, weighted 0 below
        total = F.binary_cross_entropy_with_logits(logits, labels, weight=known.float(), reduction="sum")
        return _mean(total, known.sum())


RatingHeadFactory = Callable[[int], RatingHead]
