"""SASRec: the ID-only sequential baseline."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmrec_lightning.losses import BCELoss, RecommendationLoss
from mmrec_lightning.models.base import RecommenderModule, rows
from mmrec_lightning.towers.sequence import SequenceEncoder, SequenceEncoderFactory, next_item_rows


class SASRec(RecommenderModule):
    """SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): item-ID embeddings read
    by a causal transformer; a user is the state after their latest item, scored against the same item
    embeddings by dot product; trained to predict every next item of users' sequences, each against sampled
    negatives (the paper: one) under binary cross-entropy. The paper's settings are the defaults: 50-d
    embeddings, two blocks of one head, dropout 0.2, Adam with learning rate 1e-3.

    Args:
        embed_dim: item embedding size D.
        sequence_encoder: the transformer over the history (``class_path`` of a ``SequenceEncoder``; the model
            supplies the size), which also sets how many latest items describe a user (``max_length``).
        **kwargs: as for :class:`~mmrec_lightning.models.base.RecommenderModule` (loss: BCE by default).
    """

    def __init__(
        self, embed_dim: int = 50, sequence_encoder: SequenceEncoderFactory = SequenceEncoder, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.item_embedding = nn.Embedding(self.num_items, embed_dim)
        nn.init.xavier_normal_(self.item_embedding.weight)
        self.sequence_encoder = sequence_encoder(embed_dim)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.sequence_encoder.use_split(self.data_facts.time_ordered)

    def default_loss(self) -> RecommendationLoss:
        return BCELoss()

    @property
    def sequence_length(self) -> int:
        return self.sequence_encoder.max_length

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ids = batch["items"]["item_ids"]
        vectors = rows(self.item_embedding.weight, ids)
        states, positives, negatives = next_item_rows(self.sequence_encoder, vectors, batch)
        loss = self.loss(states, rows(vectors, positives), rows(vectors, negatives), ids[positives], ids[negatives])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(states))
        return loss

    def encode_items(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.item_embedding(items["item_ids"])

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        return self.sequence_encoder.last(item_table[batch["history"]], batch["history_mask"])
