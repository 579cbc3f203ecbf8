"""What every recommender in the harness shares: its training set-up (loss, optimizer, scheduler) and the
full-ranking evaluation protocol of :mod:`mmrec_lightning.evaluation`, run over Lightning's hooks."""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from mmrec_lightning.data.contract import DataFacts, ItemPreprocessing
from mmrec_lightning.encoders.weights import restoring_checkpoint
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.evaluation import CATALOGUE, hits_of, rank_items, target_groups
from mmrec_lightning.losses import BPRLoss, RecommendationLoss
from mmrec_lightning.metrics import RankingMetrics


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an integer ``index`` of any shape, by ``index_select``: its backward (``index_add_``)
    is several times cheaper on CPU than that of advanced indexing (``index_put_`` with accumulation)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])


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
    """Base of every model: its loss, optimizer and scheduler, and full-ranking validation, test and prediction
    over the whole catalogue.

    Subclasses implement ``encode_items`` (a batch of item content -> vectors) and ``encode_users`` (a batch
    of users, given the table of all item vectors -> vectors); scores are their dot products. Before training
    or evaluation the model is connected to its data (:func:`mmrec_lightning.connect.connect`), which hands it the
    :class:`~mmrec_lightning.data.contract.DataFacts` it needs.

    Args:
        num_users: number of users (linked from the data).
        num_items: number of items (linked from the data).
        num_categories: number of item categories (linked from the data).
        loss: the recommendation loss; default the model's (:meth:`default_loss`: BPR unless it says otherwise).
        optimizer: optimizer over the trainable parameters (unused by models with none, such as popularity).
        scheduler: optional learning-rate scheduler (stepped every epoch).
        top_k: the cut-offs K of the evaluation metrics.
        eval_chunk_size: items scored at once in evaluation (bounds memory for large catalogues).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_categories: int = 0,
        loss: RecommendationLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        top_k: list[int] = [10, 20, 50],  # noqa: B006 (a list renders in --help and YAML; never mutated)
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
        self.loss = loss if loss is not None else self.default_loss()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.eval_chunk_size = eval_chunk_size
        self.val_metrics = RankingMetrics(top_k)
        self.test_metrics = RankingMetrics(top_k)
        self.test_group_metrics = nn.ModuleDict({group: RankingMetrics(top_k) for group in ("warm", "cold")})
        self.data_facts: DataFacts | None = None
        self._cold_group: torch.Tensor | None = None
        self._item_chunks: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self._item_table: dict[str, torch.Tensor] | None = None

    def default_loss(self) -> RecommendationLoss:
        """The recommendation loss when ``loss`` is not set."""
        return BPRLoss()

    def connect(self, data: DataFacts) -> None:
        """The facts of the data this model trains and evaluates on (sizes, training split and counts, cold
        items); :func:`mmrec_lightning.connect.connect` calls it."""
        self.data_facts = data

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
        """``optimizer`` over :meth:`parameter_groups`, with ``scheduler`` if set; nothing for a model with
        nothing to train (the popularity baseline)."""
        groups = [group for group in self.parameter_groups() if group["params"]]
        if not groups:
            return None
        optimizer = self.optimizer_factory(groups)
        scheduler = self.scheduler_factory
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler(optimizer)}

    # --- what subclasses provide ---------------------------------------------------------------------

    def item_preprocessing(self) -> ItemPreprocessing:
        """How the data module should prepare item content for this model (nothing by default)."""
        return ItemPreprocessing()

    @property
    def sequence_length(self) -> int | None:
        """For a sequential model, the histories it reads (the data then trains it on users' item sequences,
        next-item prediction at every position); None for the others."""
        return None

    @property
    def item_output_columns(self) -> dict[str, list[str]]:
        """For each per-item output ``encode_items`` returns besides the vectors, the names of its columns (e.g.
        ``{"modality_weights": ["image", "text", "id"]}``); none by default."""
        return {}

    def encode_items(self, items: dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        """A batch of item content -> its vectors ``[B, D]``, or a dict of them (``vectors``) and the per-item
        outputs named by :attr:`item_output_columns`, which evaluation logs (their mean over the catalogue)
        and prediction returns with each item."""
        raise NotImplementedError

    def encode_users(self, batch: dict[str, torch.Tensor], item_table: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- the catalogue table -------------------------------------------------------------------------

    def _reset_catalogue(self) -> None:
        self._item_chunks, self._item_table = [], None

    def _add_items(self, items: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        encoded = self.encode_items(items)
        outputs = encoded if isinstance(encoded, dict) else {"vectors": encoded}
        outputs = {name: value.float() for name, value in outputs.items()}
        self._item_chunks.append((items["item_ids"], outputs))
        return outputs

    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _per_item(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Rows computed for parts of the catalogue, as one table in item order, gathered from every rank."""
        if self._world_size() > 1:
            ids, values = self._gather_uneven(ids), self._gather_uneven(values)
        table = values.new_zeros(self.num_items, *values.shape[1:])
        table[ids] = values
        return table

    def _items(self) -> dict[str, torch.Tensor]:
        """Everything encoded for the catalogue (``vectors`` and per-item outputs), in item order, gathered
        from every rank the first time it is needed."""
        if self._item_table is None:
            ids = torch.cat([chunk[0] for chunk in self._item_chunks])
            names = self._item_chunks[0][1].keys()
            self._item_table = {
                name: self._per_item(ids, torch.cat([chunk[1][name] for chunk in self._item_chunks])) for name in names
            }
            self._item_chunks = []
        return self._item_table

    def _catalogue(self) -> torch.Tensor:
        """All item vectors, in item order."""
        return self._items()["vectors"]

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
        if self.data_facts is None:
            raise RuntimeError(
                f"{type(self).__name__} is not connected to its data: call mmrec_lightning.connect.connect(model, "
                "datamodule) before training or evaluating it"
            )
        self._cold_group = torch.as_tensor(self.data_facts.cold_items)
        self.loss.set_item_counts(
            torch.as_tensor(self.data_facts.item_train_counts, device=self.device)
        )  # for popularity-corrected losses

    def _evaluation_step(
        self, batch: dict, dataloader_idx: int, metrics: RankingMetrics, groups: nn.ModuleDict | None = None
    ) -> None:
        if dataloader_idx == CATALOGUE:
            self._add_items(batch)
            return
        _, _, top = self._score_users(batch, metrics.max_k)
        cold = self._cold_group if groups is not None else None
        for name, (rows, items) in target_groups(batch["target_rows"], batch["target_items"], cold).items():
            metric = metrics if name == "all" else groups[name]
            metric.update(hits_of(top, rows, items), torch.bincount(rows, minlength=len(batch["users"])))

    def _log_metrics(self, metrics: RankingMetrics, stage: str) -> None:
        values = metrics.compute()  # reduced over ranks by torchmetrics; sync_dist only averages equal values
        metrics.reset()
        self._log_values(values, stage)

    def _log_values(self, values: dict[str, torch.Tensor], stage: str) -> None:
        if values["users"] == 0:
            return
        self.log_dict(
            {f"{stage}/{name}": value for name, value in values.items()}, add_dataloader_idx=False, sync_dist=True
        )

    def _log_item_outputs(self, stage: str) -> None:
        """The catalogue's mean of each per-item output, column by column (``val/modality_weights/image``)."""
        if not self.item_output_columns or (self._item_table is None and not self._item_chunks):
            return
        table = self._items()
        for name, columns in self.item_output_columns.items():
            for column, value in zip(columns, table[name].mean(0), strict=True):
                self.log(f"{stage}/{name}/{column}", value, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._reset_catalogue()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_item_outputs("val")
        self._log_metrics(self.val_metrics, "val")
        self._reset_catalogue()

    def on_test_epoch_start(self) -> None:
        self._reset_catalogue()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, dataloader_idx, self.test_metrics, self.test_group_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_item_outputs("test")
        self._log_metrics(self.test_metrics, "test")
        for group, metrics in self.test_group_metrics.items():
            self._log_metrics(metrics, f"test/{group}")
        self._reset_catalogue()

    def on_predict_epoch_start(self) -> None:
        self._reset_catalogue()

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """For a catalogue batch, its ``item_ids``, ``item_vectors`` and per-item outputs (e.g.
        ``modality_weights`` ``[items, M]``); for a batch of users, their ``users`` ids and ``user_vectors``,
        their top-K (largest K of ``top_k``) ``items`` and ``scores``, training items excluded, and each
        recommended item's per-item outputs (``[users, K, M]``)."""
        if dataloader_idx == CATALOGUE:
            outputs = dict(self._add_items(batch))
            return {"item_ids": batch["item_ids"], "item_vectors": outputs.pop("vectors"), **outputs}
        users, scores, items = self._score_users(batch, self.test_metrics.max_k)
        per_item = {name: self._items()[name][items] for name in self.item_output_columns}
        return {"users": batch["users"], "user_vectors": users, "items": items, "scores": scores, **per_item}
