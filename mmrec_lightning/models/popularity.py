"""The popularity baseline: every user gets the items most often interacted with in training."""

from __future__ import annotations

import torch

from mmrec_lightning.models.base import RecommenderModule


class Popularity(RecommenderModule):
    """Scores each item by its number of training interactions; nothing to train.

    Same arguments as :class:`~mmrec_lightning.models.base.RecommenderModule` (its loss and optimizer unused).
    """

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.item_counts = torch.as_tensor(self.data_facts.item_train_counts, dtype=torch.float32)

    def encode_items(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item_counts.to(self.device)[items["item_ids"]].unsqueeze(1)

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        return item_table.new_ones(len(batch["users"]), 1)
