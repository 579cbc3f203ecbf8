"""The LightningDataModule: streams training examples, evaluation users and the item catalogue from a
prepared dataset, with item content preprocessed the way the model's encoders want it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from mmrec_lightning.data.datasets import (
    Catalogue,
    CatalogueCollator,
    EvalUsers,
    HistoryMode,
    TrainCollator,
    TrainInteractions,
    collate_eval_users,
)
from mmrec_lightning.data.items import ItemContent, ItemPreprocessing
from mmrec_lightning.data.sampling import EpochSampler, ResumableDataLoader
from mmrec_lightning.data.schema import PreparedDataset, PreparedDatasetError, write_prepared
from mmrec_lightning.data.sources.synthetic import CATEGORIES, SyntheticSpec, generate
from mmrec_lightning.errors import ConfigurationError

log = logging.getLogger(__name__)


class RecDataModule(L.LightningDataModule):
    """Training examples, evaluation users and the item catalogue of one prepared dataset.

    Args:
        path: folder of the prepared dataset (see ``python -m mmrec_lightning prepare``).
        synthetic: when set and ``path`` holds no dataset yet, generate this synthetic dataset there
            (once, on the first process of each node) before training.
        batch_size: training interactions per batch (per device).
        eval_batch_size: users per evaluation batch.
        item_batch_size: items per batch when the catalogue is encoded for evaluation.
        num_negatives: negatives sampled per training interaction, never among the user's training items.
        history_length: most recent training items that describe a user.
        history: which items describe the user of a training example: ``preceding`` (those just before the
            positive in time, for next-item prediction), ``others`` (the user's latest training items other than
            the positive, as evaluation shows them when held-out interactions fall anywhere in time), or
            ``auto``: ``preceding`` for leave-one-out and temporal splits, ``others`` for the rest.
        num_workers: data-loader worker processes (image decoding and tokenisation run there).
        pin_memory: pin host memory for faster copies to the GPU.
        mask_valid_at_test: at test, also remove validation items from the ranking (RecBole's protocol);
            off by default, as in MMRec, where they stay in the ranking as non-relevant.
        seed: seed of the shuffling, negative sampling and augmentation.
    """

    def __init__(
        self,
        path: str = "data/synthetic",
        synthetic: SyntheticSpec | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        item_batch_size: int = 256,
        num_negatives: int = 1,
        history_length: int = 20,
        history: Literal["auto", "preceding", "others"] = "auto",
        num_workers: int = 0,
        pin_memory: bool = False,
        mask_valid_at_test: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_negatives < 1 or batch_size < 1 or history_length < 0:
            raise ConfigurationError(
                "data: num_negatives and batch_size must be >= 1 and history_length >= 0, got "
                f"{num_negatives}, {batch_size}, {history_length}"
            )
        self.path = str(path)
        self.synthetic = synthetic
        self.preprocessing: ItemPreprocessing | None = None
        self.dataset: PreparedDataset | None = None
        if (Path(self.path) / "metadata.json").is_file():
            counts = PreparedDataset(self.path)
            self.num_users, self.num_items, self.num_categories = (
                counts.num_users,
                counts.num_items,
                counts.num_categories,
            )
        elif synthetic is not None:
            self.num_users, self.num_items, self.num_categories = synthetic.users, synthetic.items, len(CATEGORIES)
        else:
            raise PreparedDatasetError(
                f"data.path {self.path!r} holds no prepared dataset; build one with `python -m mmrec_lightning "
                f"prepare --source ... --output {self.path}`, or set data.synthetic to generate one"
            )

    def prepare_data(self) -> None:
        if self.synthetic is not None and not (Path(self.path) / "metadata.json").is_file():
            log.info("generating the synthetic dataset in %s", self.path)
            data = generate(self.synthetic)
            write_prepared(
                self.path,
                interactions=data.interactions,
                items=data.items,
                users=data.users,
                metadata=data.metadata,
                overwrite=True,
            )

    def setup(self, stage: str | None = None) -> None:
        dataset = PreparedDataset(self.path)
        if (dataset.num_users, dataset.num_items, dataset.num_categories) != (
            self.num_users,
            self.num_items,
            self.num_categories,
        ):
            raise PreparedDatasetError(
                f"{self.path} has {dataset.num_users} users, {dataset.num_items} items and "
                f"{dataset.num_categories} categories, but this run was configured for {self.num_users}, "
                f"{self.num_items} and {self.num_categories}; point data.path at the right dataset"
            )
        self.dataset = dataset
        self.train_split = dataset.split("train")
        self.item_train_counts = np.bincount(self.train_split.items, minlength=dataset.num_items)
        designated = dataset.metadata.get("split", {}).get("designated_cold_items")
        # the items evaluated as "cold": the split's designated cold items, else those without training interactions
        self.cold_item_group = (
            self.item_train_counts == 0 if designated is None else np.isin(np.arange(dataset.num_items), designated)
        )
        if self.trainer is not None and hasattr(self.trainer.lightning_module, "item_preprocessing"):
            self.preprocessing = self.trainer.lightning_module.item_preprocessing()
        for name in ("train", "valid", "test"):
            if len(dataset.split(name).items) == 0 and (name != "test" or stage == "test"):
                raise PreparedDatasetError(f"{self.path}: the {name} split is empty; prepare the dataset again")

    @property
    def history_mode(self) -> HistoryMode:
        """The training history, ``data.history`` with ``auto`` resolved by how the dataset was split."""
        if self.hparams.history != "auto":
            return self.hparams.history
        assert self.dataset is not None, "call setup() first"
        method = self.dataset.metadata.get("split", {}).get("method")
        return "preceding" if method in ("loo", "temporal") else "others"

    # --- loaders ---------------------------------------------------------------------------------------

    @property
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _content(self) -> ItemContent:
        return ItemContent(self.path, self.preprocessing or ItemPreprocessing(), self.item_train_counts)

    def _loader(self, dataset: Dataset, batch_size: int, collate, sampler=None, loader=DataLoader, **kwargs):
        workers = self.hparams.num_workers
        return loader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.hparams.pin_memory,
            **kwargs,
        )

    def _batches_trained(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

    def _eval_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """Under DDP every user and item is evaluated exactly once: shards without padding duplicates."""
        world_size, rank = self._world
        if world_size == 1:
            return None
        return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = TrainInteractions(
            self.train_split, self.num_items, hp.num_negatives, hp.history_length, hp.seed, self.history_mode
        )
        world_size, rank = self._world
        sampler = EpochSampler(len(dataset), hp.batch_size, num_replicas=world_size, rank=rank, seed=hp.seed)
        collate = TrainCollator(self._content(), hp.seed)
        return self._loader(  # the sampler yields whole batches
            dataset, None, collate, sampler, loader=ResumableDataLoader, progress=self._batches_trained
        )

    def catalogue_dataloader(self) -> DataLoader:
        dataset = Catalogue(self.num_items)
        collate = CatalogueCollator(self._content())
        return self._loader(dataset, self.hparams.item_batch_size, collate, self._eval_sampler(dataset))

    def users_dataloader(self, split: str | None) -> DataLoader:
        """Users to rank for: those with interactions in ``split``, or every user when it is None."""
        assert self.dataset is not None, "call setup() first"
        also_exclude = self.dataset.split("valid") if split == "test" and self.hparams.mask_valid_at_test else None
        target = self.dataset.split(split) if split is not None else None
        dataset = EvalUsers(self.train_split, target, self.hparams.history_length, also_exclude)
        return self._loader(dataset, self.hparams.eval_batch_size, collate_eval_users, self._eval_sampler(dataset))

    def val_dataloader(self) -> list[DataLoader]:
        return [self.catalogue_dataloader(), self.users_dataloader("valid")]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.catalogue_dataloader(), self.users_dataloader("test")]

    def predict_dataloader(self) -> list[DataLoader]:
        return [self.catalogue_dataloader(), self.users_dataloader(None)]
