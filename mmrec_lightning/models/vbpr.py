"""VBPR: matrix factorisation with a second, content-based factor per item."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrec_lightning.features.encoder import ItemFeatures
from mmrec_lightning.models.base import rows
from mmrec_lightning.models.content import checked_features, project
from mmrec_lightning.models.id_based import MatrixFactorization


class VBPR(MatrixFactorization):
    """VBPR (He & McAuley, "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback", AAAI 2016),
    as MMRec implements it (``models/vbpr.py``): a user vector [γ_u; θ_u] of size 2·D, an item vector
    [γ_i; E·f_i] of the item's ID embedding and a linear projection E of its features f_i = [text; image]
    (whichever are given, concatenated in that order), scored by dot product and trained with the
    recommendation loss + ``reg_weight`` x the squared norms of the batch's user and item vectors.

    Training projects only the features of the batch's items; evaluation projects the catalogue once.

    Args:
        image_features: the catalogue's image features (row i = item i), or none.
        text_features: the catalogue's text features, or none; at least one of the two must be set.
        embed_dim: size D of the ID embedding and of the projected features.
        reg_weight: weight of the L2 penalty on the batch's user and item vectors (squared norms / batch size).
        dropout: dropout on the user and item vectors in training.
        **kwargs: as for :class:`~mmrec_lightning.models.base.RecommenderModule`.
    """

    def __init__(
        self,
        image_features: ItemFeatures | None = None,
        text_features: ItemFeatures | None = None,
        embed_dim: int = 64,
        reg_weight: float = 1e-4,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(embed_dim=embed_dim, reg_weight=reg_weight, **kwargs)
        features = checked_features(self.num_items, text=text_features, image=image_features)
        self.features = nn.ModuleDict(features)
        self.user_content_embedding = nn.Embedding(self.num_users, embed_dim)
        self.projection = nn.Linear(sum(f.output_dim for f in features.values()), embed_dim)
        nn.init.xavier_normal_(self.user_content_embedding.weight)
        nn.init.xavier_normal_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.dropout = nn.Dropout(dropout)

    def project(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """E·f_i of ``items`` (of every item when None). Each modality is multiplied by its own block of E,
        which is E·[f_text; f_image] without copying the features into one matrix."""
        blocks = self.projection.weight.split([f.output_dim for f in self.features.values()], dim=1)
        projected = self.projection.bias
        for features, block in zip(self.features.values(), blocks, strict=True):
            projected = projected + project(features, items, block)
        return projected

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users = torch.cat([self.user_embedding.weight, self.user_content_embedding.weight], dim=1)
        return users, torch.cat([self.item_embedding.weight, self.project()], dim=1)

    def batch_vectors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        user_vectors = torch.cat(
            [rows(self.user_embedding.weight, users), rows(self.user_content_embedding.weight, users)], dim=1
        )
        item_vectors = torch.cat([rows(self.item_embedding.weight, items), self.project(items)], dim=1)
        return self.dropout(user_vectors), self.dropout(item_vectors)
