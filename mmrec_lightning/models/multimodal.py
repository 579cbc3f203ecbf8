"""The multimodal recommender: an item tower over image, text and ID, a user tower, and multi-task training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from PIL import Image
from torch import nn

from mmrec_lightning.data.contract import ItemPreprocessing
from mmrec_lightning.data.items import content_batch
from mmrec_lightning.encoders.base import ImageEncoder, TextEncoder
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.evaluation import CATALOGUE, hits_of
from mmrec_lightning.features.encoder import ItemFeatures
from mmrec_lightning.fusion import AttentionFusion, FusionFactory
from mmrec_lightning.heads import (
    CategoryHeadFactory,
    ContentAlignmentHead,
    ImageTextContrastiveHead,
    RatingHeadFactory,
)
from mmrec_lightning.losses import RecommendationLoss, SampledSoftmaxLoss, TaskWeighting
from mmrec_lightning.metrics import RankingMetrics
from mmrec_lightning.models.base import RecommenderModule, rows
from mmrec_lightning.towers.content_neighbours import ContentNeighbours
from mmrec_lightning.towers.ease import EASE
from mmrec_lightning.towers.item import ItemEncoding, ItemTower
from mmrec_lightning.towers.sequence import SequenceEncoderFactory, next_item_rows
from mmrec_lightning.towers.user import UserTower

# the mean training interactions per user from which a user-ID embedding helps (MovieLens: 85; Amazon Baby: 6)
USER_ID_MIN_INTERACTIONS = 20


class MultimodalRecommender(RecommenderModule):
    """Two towers scored by dot product, trained with L = L_rec + Σ_k λ_k·L_k over the enabled auxiliary
    tasks k (category prediction, image-text contrast, rating prediction); a task is enabled when its head
    is configured and its weight λ_k is positive.

    The defaults are the settings chosen on validation on MovieLens-100K with posters and plot overviews and
    checked on Amazon Baby (docs/ml100k.md): cosine scores under a sampled softmax with logQ correction, and
    heavy modality, user and history dropout, so the content path and the user's history carry weight of
    their own; a user-ID embedding only where users have many interactions (``use_user_id``).

    Args:
        image_encoder: image encoder (``class_path`` of an ``ImageEncoder``), the catalogue's precomputed
            image features (``ItemFeatures``, see ``extract-features``), or none.
        text_encoder: text encoder (``class_path`` of a ``TextEncoder``), precomputed text features
            (``ItemFeatures``), or none.
        use_item_id: whether the item-ID embedding is one of the fused modalities.
        embed_dim: size D of the modality, user and item vectors (M·D for user and item with ``ScoreFusion``).
        fusion: how modality vectors are fused (``class_path`` of a ``Fusion``; the model supplies the sizes).
        category_head: the auxiliary head predicting an item's category from its vector
            (``class_path`` of a ``CategoryHead``; the model supplies the sizes), or none; off where the data
            has no categories.
        aux_weight: λ of the category-prediction loss.
        contrastive_head: InfoNCE between each item's image and text vectors (``class_path`` of an
            ``ImageTextContrastiveHead``; needs both encoders), or none.
        contrastive_weight: λ of the contrastive loss.
        alignment_head: InfoNCE between each trained item's content vector (its other modalities fused
            without the ID) and its ID vector (``ContentAlignmentHead``; needs ``use_item_id`` and a content
            modality), or none.
        alignment_weight: λ of the alignment loss.
        rating_head: predicts rating >= threshold from the user and item vectors (``class_path`` of a
            ``RatingHead``; the model supplies the size; needs a dataset with ratings), or none.
        rating_weight: λ of the rating-prediction loss.
        loss_weighting: ``fixed`` keeps the λ; ``uncertainty`` learns them (Kendall et al. 2018), starting
            from the λ.
        content_neighbours: each item's nearest trained items by content (``ContentNeighbours``; needs
            precomputed features), which give cold items a collaborative vector: with ``use_item_id`` the
            "neighbours" modality, their mean ID embedding; without (the ID-free model), an item that never
            occurred in training is placed at their mean item vector. Or none.
        item_item: a closed-form item–item term added to the towers' score (``EASE``: each of the user's known
            items votes for the items that co-occur with it; its weight, and the length of cold items' borrowed
            columns, chosen on validation), or none.
            Catalogues up to ``EASE.max_items``; not with a ``sequence_encoder``.
        modality_dropout: training-time probability of hiding each available modality of an item.
        cache_frozen_features: keep each frozen encoder's output per item in memory after first use.
        sequence_encoder: a sequential user encoder (``class_path`` of a ``SequenceEncoder``; the model supplies
            the size): a user is then the state after their latest item in a causal transformer over their
            history's item vectors, and training predicts every next item of users' sequences (by default against
            its sampled negatives alone, ``SampledSoftmaxLoss(in_batch=False)``; the user tower's
            ``use_user_id``, ``dropout`` and ``history_dropout`` then take no part); or none, for the user tower
            (ID, mean of the history, behaviour statistics) and one example per interaction.
        use_user_id: whether the user tower has a user-ID embedding (without it, a user is their history and
            behaviour statistics). By default (none) it is decided from the training split: on where users have
            at least ``USER_ID_MIN_INTERACTIONS`` (20) training interactions on average. The ID memorises a
            user's training items, which evaluation masks, and where users have few interactions that is all it
            learns (Amazon Baby, 6 per user: Recall@20 falls below BPR-MF's); where they have many it captures
            a taste their mean history misses (MovieLens, 85 per user: +15%). The checkpoint keeps the decision.
        dropout: dropout on the user vector.
        history_dropout: training-time probability of hiding each item of a user's history (denoising, as
            Mult-DAE does with its input), so a user vector does not hinge on a few items.
        cosine: score by cosine similarity: user and item vectors are L2-normalised, so the loss's temperature
            alone sets how sharp the scores are, and no vector can grow its way to the top (unnormalised
            vectors under a sampled softmax with a low temperature let a few norms run away and training
            diverge).
        optimizer: optimizer over the trainable parameters.
        encoder_lr: learning rate of the image and text encoders' trainable parameters (typically lower than
            the optimizer's, for pretrained encoders); default the optimizer's.
        **kwargs: as for :class:`~mmrec_lightning.models.base.RecommenderModule` (sizes, scheduler, evaluation;
            ``loss``, the recommendation loss L_rec, is by default an in-batch sampled softmax with temperature
            0.1 and logQ correction).
    """

    def __init__(
        self,
        image_encoder: ImageEncoder | ItemFeatures | None = None,
        text_encoder: TextEncoder | ItemFeatures | None = None,
        use_item_id: bool = True,
        embed_dim: int = 64,
        fusion: FusionFactory = AttentionFusion,
        category_head: CategoryHeadFactory | None = None,
        aux_weight: float = 0.1,
        contrastive_head: ImageTextContrastiveHead | None = None,
        contrastive_weight: float = 0.1,
        alignment_head: ContentAlignmentHead | None = None,
        alignment_weight: float = 0.1,
        rating_head: RatingHeadFactory | None = None,
        rating_weight: float = 0.1,
        loss_weighting: Literal["fixed", "uncertainty"] = "fixed",
        content_neighbours: ContentNeighbours | None = None,
        item_item: EASE | None = None,
        modality_dropout: float = 0.5,
        cache_frozen_features: bool = True,
        sequence_encoder: SequenceEncoderFactory | None = None,
        use_user_id: bool | None = None,
        dropout: float = 0.5,
        history_dropout: float = 0.3,
        cosine: bool = True,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        encoder_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        self.item_tower = ItemTower(
            self.num_items,
            embed_dim,
            fusion,
            image_encoder,
            text_encoder,
            use_item_id,
            modality_dropout,
            cache_frozen_features,
            content_neighbours,
        )
        vector_dim = self.item_tower.fusion.output_dim  # embed_dim, or one block per modality (ScoreFusion)
        self.sequence_encoder = sequence_encoder(vector_dim) if sequence_encoder is not None else None
        if self.sequence_encoder is not None and kwargs.get("loss") is None:
            # a row per position of each history: in-batch candidates would be (B·L)², so sampled negatives only
            self.loss = SampledSoftmaxLoss(temperature=0.1, in_batch=False)
        if item_item is not None and self.sequence_encoder is not None:
            raise ConfigurationError(
                "model.item_item scores a user's whole history: it cannot go with a sequence_encoder"
            )
        self.item_item = item_item
        if item_item is not None:
            if item_item.select_by not in self.val_metrics.names:
                raise ConfigurationError(
                    f"model.item_item.select_by: {item_item.select_by!r} is not a validation metric; one of "
                    f"{self.val_metrics.names}"
                )
            self.item_item_metrics = nn.ModuleList(RankingMetrics(self.hparams.top_k) for _ in item_item.candidates)
        self.user_tower = (
            UserTower(self.num_users, vector_dim, dropout=dropout, use_id=bool(use_user_id))
            if self.sequence_encoder is None
            else None
        )
        self.cosine = cosine
        self.history_dropout = history_dropout
        use_category = category_head is not None and self.num_categories > 0 and aux_weight > 0
        self.category_head = category_head(vector_dim, self.num_categories) if use_category else None
        use_contrastive = contrastive_head is not None and contrastive_weight > 0
        if use_contrastive and not {"image", "text"} <= set(self.modalities):
            raise ConfigurationError("model.contrastive_head needs both an image_encoder and a text_encoder")
        self.contrastive_head = contrastive_head if use_contrastive else None
        use_alignment = alignment_head is not None and alignment_weight > 0
        if use_alignment and ("id" not in self.modalities or len(self.modalities) < 2 or vector_dim != embed_dim):
            raise ConfigurationError(
                "model.alignment_head needs use_item_id, at least one other modality, and a fusion whose item "
                "vector has the modality vectors' size (not ScoreFusion)"
            )
        self.alignment_head = alignment_head if use_alignment else None
        self.rating_head = rating_head(vector_dim) if rating_head is not None and rating_weight > 0 else None
        if self.rating_head is not None and self.sequence_encoder is not None:
            raise ConfigurationError(
                "model.rating_head rates single interactions: it cannot go with a sequence_encoder"
            )
        weights = {
            name: weight
            for name, head, weight in (
                ("category", self.category_head, aux_weight),
                ("contrastive", self.contrastive_head, contrastive_weight),
                ("alignment", self.alignment_head, alignment_weight),
                ("rating", self.rating_head, rating_weight),
            )
            if head is not None
        }
        self.task_weighting = TaskWeighting(weights, learned=loss_weighting == "uncertainty") if weights else None
        self.encoder_lr = encoder_lr

    def default_loss(self) -> RecommendationLoss:
        return SampledSoftmaxLoss(temperature=0.1, logq_correction=True)

    @property
    def modalities(self) -> list[str]:
        return self.item_tower.modalities

    @property
    def sequence_length(self) -> int | None:
        return self.sequence_encoder.max_length if self.sequence_encoder is not None else None

    @property
    def item_output_columns(self) -> dict[str, list[str]]:
        """Each item's fusion weights, ``modality_weights``, one column per modality: which modality placed it."""
        return {"modality_weights": self.modalities}

    def item_preprocessing(self) -> ItemPreprocessing:
        image, text = self.item_tower.image_encoder, self.item_tower.text_encoder
        image = image if isinstance(image, ImageEncoder) else None  # precomputed features need no content
        text = text if isinstance(text, TextEncoder) else None
        return ItemPreprocessing.of(image, text, augment_images=self.item_tower.augment_images)

    # --- training ------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.use_user_id is None and self.user_tower is not None:
            train = self.data_facts.train
            per_user = len(train.items) / max(1, len(train.indptr) - 1)
            self.hparams.use_user_id = per_user >= USER_ID_MIN_INTERACTIONS  # saved with the checkpoint's hparams
            if self.hparams.use_user_id:
                self.user_tower.add_id()
        if self.sequence_encoder is not None:
            self.sequence_encoder.use_split(self.data_facts.time_ordered)
        self.item_tower.build_neighbours(torch.as_tensor(self.data_facts.item_train_counts > 0, device=self.device))
        if self.item_item is not None:
            self.item_item.build(self.data_facts.train, self.num_items, self.item_tower.neighbours)
        if stage == "fit" and self.rating_head is not None and self.data_facts.train.ratings is None:
            raise ConfigurationError("model.rating_head: the training interactions of this dataset have no ratings")

    def _scored(self, vectors: torch.Tensor) -> torch.Tensor:
        """User or item vectors as they are scored: unit length with ``cosine``."""
        return F.normalize(vectors, dim=-1) if self.cosine else vectors

    def _encode(self, items: dict[str, torch.Tensor]) -> ItemEncoding:
        encoded = self.item_tower(items)
        return encoded._replace(vectors=self._scored(encoded.vectors))

    def _user(self, batch: dict[str, torch.Tensor], history: torch.Tensor) -> torch.Tensor:
        mask = batch["history_mask"]
        if self.training and self.history_dropout > 0:
            mask = mask & (torch.rand(mask.shape, device=mask.device) >= self.history_dropout)
        return self._scored(self.user_tower(batch["users"], history, mask, batch["stats"]))

    def _training_rows(self, batch: dict, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The user vectors a training batch scores, each with its positive and negatives (indices into the
        batch's items): one row per interaction, or one per position of each user's sequence."""
        if self.sequence_encoder is None:
            return self._user(batch, rows(vectors, batch["history"])), batch["positives"], batch["negatives"]
        states, positives, negatives = next_item_rows(self.sequence_encoder, vectors, batch)
        return self._scored(states), positives, negatives

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        items = batch["items"]
        encoded = self._encode(items)
        vectors, ids = encoded.vectors, items["item_ids"]
        user, positives, negatives = self._training_rows(batch, vectors)
        rec_loss = self.loss(user, rows(vectors, positives), rows(vectors, negatives), ids[positives], ids[negatives])
        size = len(user)
        self.log("train/rec_loss", rec_loss, prog_bar=True, batch_size=size)
        loss = rec_loss
        if self.task_weighting is not None:
            task_losses = self._task_losses(batch, encoded, user)
            for name, value in task_losses.items():
                self.log(f"train/{name}_loss", value, batch_size=size)
            if self.task_weighting.learned:
                for name, weight in zip(self.task_weighting.names, self.task_weighting.weights(), strict=True):
                    self.log(f"train/{name}_weight", weight, batch_size=size)
            loss = rec_loss + self.task_weighting(task_losses)
        self.log("train/loss", loss, batch_size=size)
        mean_weights = encoded.weights.float().mean(0)
        for name, value in zip(self.modalities, mean_weights, strict=True):
            self.log(f"train/modality_weights/{name}", value, batch_size=len(encoded.weights))
        return loss

    def _task_losses(self, batch: dict, encoded: ItemEncoding, user: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of each enabled auxiliary task on this batch."""
        losses = {}
        if self.category_head is not None:
            losses["category"] = self.category_head.loss(encoded.vectors, batch["items"]["category"])
        if self.contrastive_head is not None:
            image, text = self.modalities.index("image"), self.modalities.index("text")
            both = encoded.available[:, image] & encoded.available[:, text]
            h = encoded.modality_vectors
            losses["contrastive"] = self.contrastive_head.loss(h[:, image], h[:, text], both)
        if self.alignment_head is not None:
            losses["alignment"] = self._alignment_loss(encoded)
        if self.rating_head is not None:
            losses["rating"] = self.rating_head.loss(user, rows(encoded.vectors, batch["positives"]), batch["ratings"])
        return losses

    def _alignment_loss(self, encoded: ItemEncoding) -> torch.Tensor:
        """InfoNCE between the batch's content vectors and ID vectors, over the items that have both."""
        is_id = torch.tensor([name == "id" for name in self.modalities], device=encoded.available.device)
        content = encoded.available & ~is_id
        both = encoded.available[:, is_id].squeeze(1) & content.any(1)
        content_vectors, _ = self.item_tower.fusion(encoded.modality_vectors, content)
        return self.alignment_head.loss(content_vectors, encoded.modality_vectors[:, is_id].squeeze(1), both)

    def parameter_groups(self) -> list[dict]:
        """One group, or the encoders' trainable parameters in a second one at ``encoder_lr``."""
        if self.encoder_lr is None:
            return super().parameter_groups()
        trainable = [p for p in self.parameters() if p.requires_grad]
        encoders = [self.item_tower.image_encoder, self.item_tower.text_encoder]
        in_encoders = {id(p) for encoder in encoders if encoder is not None for p in encoder.parameters()}
        return [
            {"params": [p for p in trainable if id(p) not in in_encoders]},
            {"params": [p for p in trainable if id(p) in in_encoders], "lr": self.encoder_lr},
        ]

    # --- evaluation ----------------------------------------------------------------------------------

    def _scoring_vectors(self, encoded: ItemEncoding, item_ids: torch.Tensor) -> torch.Tensor:
        """The item vectors users are scored against: the tower's, and the ``item_item`` block after it (zero
        for a new item, id -1: no user's history votes for it)."""
        if self.item_item is None:
            return encoded.vectors
        known = item_ids >= 0
        block = encoded.vectors.new_zeros(len(item_ids), self.num_items, dtype=torch.float32)
        if bool(known.any()):
            block[known] = self.item_item.item_block(item_ids[known])
        return torch.cat([encoded.vectors.float(), block], dim=1)

    def encode_items(self, items: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        encoded = self._encode(items)
        return {"vectors": self._scoring_vectors(encoded, items["item_ids"]), "modality_weights": encoded.weights}

    @torch.no_grad()
    def encode_new_items(self, images: Sequence[Image.Image | None], texts: Sequence[str | None]) -> torch.Tensor:
        """Vectors ``[N, D]`` of items the model never saw, from their images and texts alone (either may be
        None): cold-start inference, no retraining. The content is preprocessed as the catalogue is for
        evaluation, and, as for any cold item, the untrained ID embedding takes no part."""
        training = self.training
        self.eval()
        try:
            batch = content_batch(images, texts, self.item_preprocessing())
            batch = {name: value.to(self.device) for name, value in batch.items()}
            return self._scoring_vectors(self._encode(batch), batch["item_ids"])
        finally:
            self.train(training)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """With ``item_item``, the users are ranked under each of its candidate pairs, one metric each: the
        towers' scores and the history's votes are computed once a batch, each pair adds them at its weight and
        length (the ranking is that of the served vectors, ``[user, w·x_u] · [item, B_i]``)."""
        if self.item_item is None or dataloader_idx == CATALOGUE:
            return super().validation_step(batch, batch_idx, dataloader_idx)
        tower = self._catalogue()[:, : -self.num_items]
        users = self._user(batch, tower[batch["history"]]).float()
        towers = users @ tower.T
        seen_rows, seen_items = batch["exclude_rows"], batch["exclude_items"]
        votes = self.item_item.votes(seen_rows, seen_items, len(users))
        at_length = {length: votes * self.item_item.column_factors(length) for length in self.item_item.cold_lengths}
        rows, items = batch["target_rows"], batch["target_items"]
        per_user = torch.bincount(rows, minlength=len(users))
        for (length, weight), metrics in zip(self.item_item.candidates, self.item_item_metrics, strict=True):
            scores = towers + weight * at_length[length] if weight else towers.clone()
            scores[seen_rows, seen_items] = float("-inf")
            top = scores.topk(min(metrics.max_k, scores.shape[1]), dim=1).indices
            metrics.update(hits_of(top, rows, items), per_user)

    def on_validation_epoch_end(self) -> None:
        """With ``item_item``, keep the pair whose ranking is best by its ``select_by`` (reduced over ranks, so
        every rank keeps the same) and log that ranking's metrics as the validation metrics, and the towers'
        own (weight 0) as ``val/towers/*``."""
        if self.item_item is None:
            return super().on_validation_epoch_end()
        computed = [metrics.compute() for metrics in self.item_item_metrics]
        if computed[0]["users"] > 0:
            best = int(torch.stack([values[self.item_item.select_by] for values in computed]).argmax())
            self.item_item.choose(*self.item_item.candidates[best])
            self.log("val/item_item_weight", self.item_item.weight)
            self.log("val/item_item_cold_length", self.item_item.cold_length)
            self._log_values(computed[0], "val/towers")
            self._log_values(computed[best], "val")
        for metrics in self.item_item_metrics:
            metrics.reset()
        self._log_item_outputs("val")
        self._reset_catalogue()

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        if self.sequence_encoder is not None:
            return self._scored(self.sequence_encoder.last(item_table[batch["history"]], batch["history_mask"]))
        if self.item_item is None:
            return self._user(batch, item_table[batch["history"]])
        tower = item_table[:, : -self.num_items]
        user = self._user(batch, tower[batch["history"]]).float()
        known = self.item_item.user_block(batch["exclude_rows"], batch["exclude_items"], len(user))
        return torch.cat([user, known], dim=1)
