"""The multimodal recommender: an item tower over image, text and ID, a user tower, and multi-task training."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from mmrec_lightning.data.items import ItemPreprocessing
from mmrec_lightning.encoders.base import ImageEncoder, TextEncoder
from mmrec_lightning.encoders.user import UserTower
from mmrec_lightning.fusion import AttentionFusion, FusionFactory
from mmrec_lightning.heads import CategoryHead, CategoryHeadFactory
from mmrec_lightning.losses import BPRLoss, RecommendationLoss
from mmrec_lightning.models.base import RecommenderModule
from mmrec_lightning.models.item_tower import ItemTower


class MultimodalRecommender(RecommenderModule):
    """Two towers scored by dot product, trained with L = L_rec + λ·L_category.

    Args:
        num_users: number of users (linked from the data).
        num_items: number of items (linked from the data).
        num_categories: number of item categories (linked from the data); 0 disables the category head.
        image_encoder: image encoder (``class_path`` of an ``ImageEncoder``), or none.
        text_encoder: text encoder (``class_path`` of a ``TextEncoder``), or none.
        use_item_id: whether the item-ID embedding is one of the fused modalities.
        embed_dim: size D of the user and item vectors.
        fusion: how modality vectors are fused (``class_path`` of a ``Fusion``; the model supplies the sizes).
        loss: the recommendation loss L_rec.
        category_head: the auxiliary head predicting an item's category from its vector
            (``class_path`` of a ``CategoryHead``; the model supplies the sizes), or none.
        aux_weight: λ, the weight of the category-prediction loss.
        modality_dropout: training-time probability of hiding each available modality of an item.
        cache_frozen_features: keep each frozen encoder's output per item in memory after first use.
        dropout: dropout on the user vector.
        optimizer: optimizer over the trainable parameters.
        scheduler: optional learning-rate scheduler (stepped every epoch).
        top_k: the cut-offs K of the evaluation metrics.
        eval_chunk_size: items scored at once in evaluation.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_categories: int = 0,
        image_encoder: ImageEncoder | None = None,
        text_encoder: TextEncoder | None = None,
        use_item_id: bool = True,
        embed_dim: int = 64,
        fusion: FusionFactory = AttentionFusion,
        loss: RecommendationLoss | None = None,
        category_head: CategoryHeadFactory | None = CategoryHead,
        aux_weight: float = 0.1,
        modality_dropout: float = 0.1,
        cache_frozen_features: bool = True,
        dropout: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        top_k: list[int] = [10, 20, 50],  # noqa: B006 (a list renders in --help and YAML; never mutated)
        eval_chunk_size: int = 1 << 16,
    ) -> None:
        super().__init__(num_users, num_items, num_categories, top_k, eval_chunk_size)
        self.item_tower = ItemTower(
            num_items,
            embed_dim,
            fusion,
            image_encoder,
            text_encoder,
            use_item_id,
            modality_dropout,
            cache_frozen_features,
        )
        self.user_tower = UserTower(num_users, embed_dim, dropout=dropout)
        self.loss = loss if loss is not None else BPRLoss()
        use_head = category_head is not None and num_categories > 0 and aux_weight > 0
        self.category_head = category_head(embed_dim, num_categories) if use_head else None
        self.aux_weight = aux_weight
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._weight_sum: torch.Tensor | None = None
        self._weight_count = 0

    @property
    def modalities(self) -> list[str]:
        return self.item_tower.modalities

    def item_preprocessing(self) -> ItemPreprocessing:
        image, text = self.item_tower.image_encoder, self.item_tower.text_encoder
        return ItemPreprocessing(
            image_train=image.transform(train=self.item_tower.augment_images) if image is not None else None,
            image_eval=image.transform(train=False) if image is not None else None,
            tokenizer=text.tokenizer() if text is not None else None,
            max_text_length=text.max_length if text is not None else 0,
        )

    # --- training ------------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        items = batch["items"]
        vectors, weights = self.item_tower(items)
        user = self.user_tower(batch["users"], vectors[batch["history"]], batch["history_mask"], batch["stats"])
        rec_loss = self.loss(
            user, vectors[batch["positives"]], vectors[batch["negatives"]], items["item_ids"][batch["positives"]]
        )
        size = len(batch["users"])
        self.log("train/rec_loss", rec_loss, prog_bar=True, batch_size=size)
        loss = rec_loss
        if self.category_head is not None:
            aux_loss = self.category_head.loss(vectors, items["category"])
            self.log("train/aux_loss", aux_loss, batch_size=size)
            loss = rec_loss + self.aux_weight * aux_loss
        self.log("train/loss", loss, batch_size=size)
        mean_weights = weights.float().mean(0)
        for name, value in zip(self.modalities, mean_weights, strict=True):
            self.log(f"train/alpha_{name}", value, batch_size=len(weights))
        return loss

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    # --- evaluation ----------------------------------------------------------------------------------

    def encode_items(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        vectors, weights = self.item_tower(items)
        weights = weights.detach().float().sum(0)
        self._weight_sum = weights if self._weight_sum is None else self._weight_sum + weights
        self._weight_count += len(items["item_ids"])
        return vectors

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        history = item_table[batch["history"]]
        return self.user_tower(batch["users"], history, batch["history_mask"], batch["stats"])

    def _log_metrics(self, metrics, stage: str) -> None:
        if self._weight_sum is not None:
            mean = self._weight_sum / max(self._weight_count, 1)
            for name, value in zip(self.modalities, mean, strict=True):
                self.log(f"{stage}/alpha_{name}", value, sync_dist=True)
            self._weight_sum, self._weight_count = None, 0
        super()._log_metrics(metrics, stage)
