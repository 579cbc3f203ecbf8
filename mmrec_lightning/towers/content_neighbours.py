"""Collaborative signal for items by their content: the ID embeddings of each item's nearest trained items."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmrec_lightning.errors import ConfigurationError

SIMILARITY_BLOCK = 1 << 25  # similarities held at once while a kNN graph is built (128 MB of float32)


class ContentNeighbours(nn.Module):
    """The ``k`` items most similar to an item by content, among the items that occur in training. With item
    IDs they are the "neighbours" modality of the item tower: their mean ID embedding. Without (the ID-free
    model), an item that never occurred in training is placed at their mean item vector.

    Graph propagation over a frozen content kNN graph is what makes FREEDOM (Zhou & Shen, MM 2023) and LATTICE
    strong; as a modality it also reaches items whose own ID embedding never trained: a cold item gets the
    collaborative vectors of the trained items its image and text resemble, which its content projection
    alone has to learn from far fewer examples. The graph is fixed once per run from the precomputed
    features and the training split (:meth:`build`); the item itself is never its own neighbour.

    Args:
        k: neighbours per item.
        image_weight: weight of the image similarity in the combined similarity (the text one gets 1 -
            ``image_weight``), as FREEDOM weighs its two graphs; ignored with one modality.
    """

    def __init__(self, k: int = 10, image_weight: float = 0.1) -> None:
        super().__init__()
        if k < 1 or not 0 <= image_weight <= 1:
            raise ConfigurationError(
                f"content neighbours: k must be >= 1 and image_weight in [0, 1], got {k}, {image_weight}"
            )
        self.k, self.image_weight = k, image_weight
        self.register_buffer("index", None, persistent=False)
        self.register_buffer("available", None, persistent=False)
        self.register_buffer("candidates", None, persistent=False)

    def _weights(self, modalities: list[str]) -> dict[str, float]:
        if len(modalities) == 1:
            return {modalities[0]: 1.0}
        return {"image": self.image_weight, "text": 1.0 - self.image_weight}

    @torch.no_grad()
    def build(self, features: Mapping[str, torch.Tensor], trained: torch.Tensor) -> None:
        """Find every item's neighbours: ``features`` ``{modality: [items, dim]}`` (zero rows: no content),
        ``trained`` ``[items]`` marks the items whose ID embedding is trained — the only candidates."""
        has_content = torch.stack([matrix.abs().sum(1) > 0 for matrix in features.values()]).any(0)
        candidates = trained & has_content
        if int(candidates.sum()) < 2:
            raise ConfigurationError(
                "content neighbours: fewer than two items with content occur in the training split"
            )
        weights = self._weights(sorted(features))
        units = {name: F.normalize(matrix.float(), dim=1) for name, matrix in features.items()}
        num_items = len(trained)
        k = min(self.k, int(candidates.sum()) - 1)
        index = torch.zeros(num_items, k, dtype=torch.long)
        for rows in torch.arange(num_items).split(max(1, SIMILARITY_BLOCK // num_items)):
            similarity = sum(weight * (units[name][rows] @ units[name].T) for name, weight in weights.items())
            similarity = similarity.masked_fill(~candidates, float("-inf"))
            similarity[torch.arange(len(rows)), rows] = float("-inf")  # never the item itself
            index[rows] = similarity.topk(k, dim=1).indices
        self.index = index.to(trained.device)
        self.available = has_content.to(trained.device)
        self.candidates = candidates.to(trained.device)

    def _built(self) -> None:
        if self.index is None:
            raise RuntimeError("ContentNeighbours.build must run before the item tower is used (the model's setup)")

    def untrained(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Which of ``item_ids`` ``[B]`` have content but never occurred in training (a new item, id -1: none
        of the catalogue's neighbours were found for it)."""
        self._built()
        ids = item_ids.clamp(min=0)
        return (item_ids >= 0) & self.available[ids] & ~self.candidates[ids]

    def forward(self, item_ids: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of the neighbours' rows of ``embedding`` ``[B, D]`` and which items have neighbours ``[B]``;
        an item outside the catalogue (id -1) has none."""
        self._built()
        known = item_ids >= 0
        ids = item_ids.clamp(min=0)
        neighbours = self.index.index_select(0, ids)
        vectors = embedding.index_select(0, neighbours.flatten()).view(*neighbours.shape, -1).mean(1)
        return vectors, self.available[ids] & known
