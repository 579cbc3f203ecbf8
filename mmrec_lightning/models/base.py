"""What every recommender in the harness shares: the full-ranking evaluation protocol.

Evaluation runs over two loaders in order (see ``RecDataModule.val_dataloader``): first the item
catalogue, which is encoded once into a table of item vectors; then the users, each scored against the
whole table in chunks, with their training items masked, and the top-K compared with their held-out items.
Test metrics are also reported for warm and cold target items separately (``test/warm/…``,
``test/cold/…``) when some test items never occur in training: the ranking is the same, only the items
that count as relevant differ.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from mmrec_lightning.data.items import ItemPreprocessing
from mmrec_lightning.encoders.weights import restoring_checkpoint
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.losses import RecommendationLoss
from mmrec_lightning.metrics import RankingMetrics

CATALOGUE, USERS = 0, 1


def rank_items(
    users: torch.Tensor,
    items: torch.Tensor,
    exclude_rows: torch.Tensor,
    exclude_items: torch.Tensor,
    k: int,
    chunk_size: int = 1 << 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items ``(scores, indices)`` for each user by dot product, never an excluded (row, item)
    pair. The catalogue is scored ``chunk_size`` items at a time and the per-chunk top-k merged, so memory
    is bounded by ``users x chunk_size`` whatever the catalogue size."""
    best_scores = best_items = None
    for start in range(0, items.shape[0], chunk_size):
        block = items[start : start + chunk_size]
        scores = (users @ block.T).float()
        inside = (exclude_items >= start) & (exclude_items < start + block.shape[0])
        scores[exclude_rows[inside], exclude_items[inside] - start] = float("-inf")
        top_scores, top_items = scores.topk(min(k, block.shape[0]), dim=1)
        del scores  # else the next block's scores are computed while this one is still held
        top_items = top_items + start
        if best_scores is not None:
            top_scores = torch.cat([best_scores, top_scores], dim=1)
            top_items = torch.cat([best_items, top_items], dim=1)
            top_scores, order = top_scores.topk(min(k, top_scores.shape[1]), dim=1)
            top_items = top_items.gather(1, order)
        best_scores, best_items = top_scores, top_items
    return best_scores, best_items


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an integer ``index`` of any shape, by ``index_select``: its backward (``index_add_``)
    is several times cheaper on CPU than that of advanced indexing (``index_put_`` with accumulation)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


def hits_of(top_items: torch.Tensor, target_rows: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
    """``[users, k]`` bool: whether each ranked item is one of the user's (row, item) targets."""
    hits = torch.zeros(top_items.shape, dtype=torch.long, device=top_items.device)
    hits.index_add_(0, target_rows, (top_items[target_rows] == target_items.unsqueeze(1)).long())
    return hits > 0


def _plain(value: Any) -> Any:
    """``value`` with everything but containers and primitives replaced by an import path or a string."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, nn.Module):
        value = type(value)
    if isinstance(value, type) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return f"{value.__module__}.{value.__qualname__}"
    return str(value)


class RecommenderModule(L.LightningModule):
    """Base of every model: full-ranking validation, test and prediction over the whole catalogue.

    Subclasses implement ``encode_items`` (a batch of item content -> vectors) and ``encode_users`` (a batch
    of users, given the table of all item vectors -> vectors); scores are their dot products.

    Args:
        num_users: number of users (linked from the data).
        num_items: number of items (linked from the data).
        num_categories: number of item categories (linked from the data).
        top_k: the cut-offs K of the evaluation metrics.
        eval_chunk_size: items scored at once in evaluation (bounds memory for large catalogues).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_categories: int = 0,
        top_k: Sequence[int] = (10, 20, 50),
        eval_chunk_size: int = 1 << 16,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_users < 1 or num_items < 1:
            raise ConfigurationError(f"model: num_users and num_items must be positive, got {num_users}, {num_items}")
        if max(top_k) > num_items:
            raise ConfigurationError(
                f"model.top_k: K={max(top_k)} is larger than the catalogue ({num_items} items); lower model.top_k"
            )
        self.num_users, self.num_items, self.num_categories = num_users, num_items, num_categories
        self.eval_chunk_size = eval_chunk_size
        self.val_metrics = RankingMetrics(top_k)
        self.test_metrics = RankingMetrics(top_k)
        self.test_group_metrics = nn.ModuleDict({group: RankingMetrics(top_k) for group in ("warm", "cold")})
        self._cold_items: torch.Tensor | None = None
        self._cold_group: torch.Tensor | None = None
        self._item_chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._item_table: torch.Tensor | None = None

    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any):  # type: ignore[override]
        """As Lightning's, but encoders skip their pretrained weights: the checkpoint holds them."""
        with restoring_checkpoint():
            return super().load_from_checkpoint(*args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep torch's random state (dropout, modality dropout), so a resumed run draws what an
        uninterrupted one would (the data pipeline seeds itself from (seed, epoch, batch)), and keep the
        checkpoint loadable with ``weights_only=True``: components given as Python objects rather than by
        config are stored by import path."""
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = _plain(checkpoint["hyper_parameters"])
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_state" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state(checkpoint["cuda_rng_state"])

    def parameter_groups(self) -> list[dict]:
        """What the optimizer trains: every parameter that requires gradients, in one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self):
        """The model's ``optimizer_factory`` over :meth:`parameter_groups`, with its ``scheduler_factory`` if
        set; nothing for models without an optimizer (the popularity baseline)."""
        factory = getattr(self, "optimizer_factory", None)
        if factory is None:
            return None
        optimizer = factory([group for group in self.parameter_groups() if group["params"]])
        scheduler = getattr(self, "scheduler_factory", None)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler(optimizer)}

    # --- what subclasses provide ---------------------------------------------------------------------

    def item_preprocessing(self) -> ItemPreprocessing:
        """How the data module should prepare item content for this model (nothing by default)."""
        return ItemPreprocessing()

    def encode_items(self, items: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- the catalogue table -------------------------------------------------------------------------

    def _reset_catalogue(self) -> None:
        self._item_chunks, self._item_table = [], None

    def _add_items(self, items: dict[str, torch.Tensor]) -> None:
        self._item_chunks.append((items["item_ids"], self.encode_items(items).float()))

    def _per_item(self, chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Rows computed for parts of the catalogue, as one table in item order, gathered from every rank."""
        ids = torch.cat([c[0] for c in chunks])
        values = torch.cat([c[1] for c in chunks])
        if self.trainer.world_size > 1:
            ids, values = self._gather_uneven(ids), self._gather_uneven(values)
        table = values.new_zeros(self.num_items, *values.shape[1:])
        table[ids] = values
        return table

    def _catalogue(self) -> torch.Tensor:
        """All item vectors, in item order, gathered from every rank the first time they are needed."""
        if self._item_table is None:
            self._item_table, self._item_chunks = self._per_item(self._item_chunks), []
        return self._item_table

    def _gather_uneven(self, tensor: torch.Tensor) -> torch.Tensor:
        """all_gather for shards of different lengths (the unpadded evaluation samplers)."""
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = self.all_gather(size).flatten().tolist()
        padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, max(sizes) - tensor.shape[0]))
        gathered = self.all_gather(padded)
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])

    # --- evaluation ----------------------------------------------------------------------------------

    def _score_users(self, batch: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's user vectors and their top-``k`` ``(scores, items)``, training items excluded."""
        table = self._catalogue()
        users = self.encode_users(batch, table).float()
        scores, items = rank_items(users, table, batch["exclude_rows"], batch["exclude_items"], k, self.eval_chunk_size)
        return users, scores, items

    def on_train_start(self) -> None:
        """An epoch with fewer steps than ``log_every_n_steps`` would log no training loss: log once an epoch."""
        batches = self.trainer.num_training_batches
        if batches < self.trainer.log_every_n_steps:
            self.trainer.log_every_n_steps = max(1, int(batches))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        counts = getattr(datamodule, "item_train_counts", None)
        self._cold_items = torch.as_tensor(counts == 0) if counts is not None else None
        group = getattr(datamodule, "cold_item_group", None)  # the split's designated cold items, if it has them
        self._cold_group = torch.as_tensor(group) if group is not None else self._cold_items
        loss = getattr(self, "loss", None)
        if counts is not None and isinstance(loss, RecommendationLoss):  # for popularity-corrected losses
            loss.set_item_counts(torch.as_tensor(counts, device=self.device))

    def _evaluation_step(
        self, batch: dict, dataloader_idx: int, metrics: RankingMetrics, groups: nn.ModuleDict | None = None
    ) -> None:
        if dataloader_idx == CATALOGUE:
            self._add_items(batch)
            return
        _, _, top = self._score_users(batch, metrics.max_k)
        targets = [("all", metrics, batch["target_rows"], batch["target_items"])]
        if groups is not None and self._cold_group is not None:
            cold = self._cold_group.to(top.device)[batch["target_items"]]
            for name, keep in (("warm", ~cold), ("cold", cold)):
                targets.append((name, groups[name], batch["target_rows"][keep], batch["target_items"][keep]))
        for _, metric, rows, items in targets:
            metric.update(hits_of(top, rows, items), torch.bincount(rows, minlength=len(batch["users"])))

    def _log_metrics(self, metrics: RankingMetrics, stage: str) -> None:
        values = metrics.compute()  # reduced over ranks by torchmetrics; sync_dist only averages equal values
        metrics.reset()
        if values["users"] == 0:
            return
        self.log_dict(
            {f"{stage}/{name}": value for name, value in values.items()}, add_dataloader_idx=False, sync_dist=True
        )

    def on_validation_epoch_start(self) -> None:
        self._reset_catalogue()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")
        self._reset_catalogue()

    def on_test_epoch_start(self) -> None:
        self._reset_catalogue()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx, self.test_metrics, self.test_group_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")
        for group, metrics in self.test_group_metrics.items():
            self._log_metrics(metrics, f"test/{group}")
        self._reset_catalogue()

    def on_predict_epoch_start(self) -> None:
        self._reset_catalogue()

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """For a catalogue batch, its ``item_ids`` and ``item_vectors``; for a batch of users, their ``users``
        ids and ``user_vectors`` and their top-K (largest K of ``top_k``) ``items`` and ``scores``, training
        items excluded."""
        if dataloader_idx == CATALOGUE:
            self._add_items(batch)
            item_ids, item_vectors = self._item_chunks[-1]
            return {"item_ids": item_ids, "item_vectors": item_vectors}
        users, scores, items = self._score_users(batch, self.test_metrics.max_k)
        return {"users": batch["users"], "user_vectors": users, "items": items, "scores": scores}
