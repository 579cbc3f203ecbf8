"""EASE alone: the closed-form item–item baseline."""

from __future__ import annotations

from typing import Any

import torch

from mmrec_lightning.models.base import RecommenderModule
from mmrec_lightning.towers.ease import EASE


class EASERecommender(RecommenderModule):
    """EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): a user's score for item i
    is ``Σ_{j ∈ H(u)} B_ji`` over their known items, B solved in closed form from the training interactions
    when the model is set up; nothing to train (``test`` it directly). The same term the multimodal model can
    add to its towers (:class:`~mmrec_lightning.towers.EASE`), here alone: the ID baseline it must beat.

    Args:
        l2: the ridge penalty λ.
        max_items: the largest catalogue accepted (B is ``items x items``).
        **kwargs: as for :class:`~mmrec_lightning.models.base.RecommenderModule` (its loss and optimizer unused).
    """

    def __init__(self, l2: float = 300.0, max_items: int = 20_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item_item = EASE(l2=l2, weights=[1.0], max_items=max_items)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.item_item.build(self.data_facts.train, self.num_items)

    def encode_items(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item_item.item_block(items["item_ids"])

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        return self.item_item.user_block(batch["exclude_rows"], batch["exclude_items"], len(batch["users"]))
