"""The LightningDataModule: streams training examples, evaluation users and the item catalogue from a
prepared dataset, with item content preprocessed the way the model's encoders want it (handed over by
:func:`mmrec_lightning.connect.connect`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from mmrec_lightning.data.contract import DataFacts, ItemPreprocessing
from mmrec_lightning.data.datasets import (
    HistoryMode,
    SequenceCollator,
    TrainCollator,
    TrainInteractions,
    TrainSequences,
)
from mmrec_lightning.data.items import ItemContent
from mmrec_lightning.data.packed import PackedItems
from mmrec_lightning.data.samplers import EpochSampler, ResumableDataLoader
from mmrec_lightning.data.schema import PreparedDatasetError, write_prepared
from mmrec_lightning.data.sources.synthetic import CATEGORIES, SyntheticSpec, generate
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.evaluation import Catalogue, CatalogueCollator, EvalUsers, collate_eval_users

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
        history_length: most recent training items that describe a user (a sequential model reads its own
            number, see ``connect``).
        history: which items describe the user of a training example: ``preceding`` (those just before the
            positive in time, for next-item prediction), ``others`` (the user's latest training items other than
            the positive, as evaluation shows them when held-out interactions fall anywhere in time), or
            ``auto``: ``preceding`` for leave-one-out and temporal splits, ``others`` for the rest. For a
            sequential model, what each position of a user's sequence predicts: the next item (``preceding``)
            or another of the user's training items not yet in the sequence (``others``).
        num_workers: data-loader worker processes (image decoding and tokenisation run there).
        pin_memory: pin host memory for faster copies to the GPU.
        mask_valid_at_test: at test, also remove validation items from the ranking (RecBole's protocol);
            off by default, as in MMRec, where they stay in the ranking as non-relevant.
        test_history: what describes a user at test and prediction: the ``train`` interactions, or
            ``train_and_valid`` (then the validation items are masked as seen); ``auto``: ``train_and_valid``
            for leave-one-out and temporal splits, whose validation interactions precede the test ones in time
            (a sequential model would otherwise predict the test item from a history that skips the one just
            before it), ``train`` for the others. Validation always reads the training interactions alone.
        seed: seed of the shuffling, negative sampling and augmentation.
        packed_items: local folder or object-store URL (``s3://…``) of the item shards written by
            ``python -m mmrec_lightning pack``, to read the items' images and text from instead of the dataset's
            ``items.arrow`` (the same bytes: the same batches); None: from ``items.arrow``.
        packed_items_cache: local folder for the shards fetched from a URL (default: litData's,
            ``~/.lightning/chunks`` or ``$LITDATA_CACHE_DIR``); node-local disk on a cluster.
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
        test_history: Literal["auto", "train", "train_and_valid"] = "auto",
        seed: int = 0,
        packed_items: str | None = None,
        packed_items_cache: str | None = None,
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
        self.facts = DataFacts(self.path)
        self.preprocessing = ItemPreprocessing()
        self.sequence_length: int | None = None
        if (Path(self.path) / "metadata.json").is_file():
            dataset = self.facts.dataset
            self.num_users, self.num_items, self.num_categories = (
                dataset.num_users,
                dataset.num_items,
                dataset.num_categories,
            )
        elif synthetic is not None:
            self.num_users, self.num_items, self.num_categories = synthetic.users, synthetic.items, len(CATEGORIES)
        else:
            raise PreparedDatasetError(
                f"data.path {self.path!r} holds no prepared dataset; build one with `python -m mmrec_lightning "
                f"prepare --source ... --output {self.path}`, or set data.synthetic to generate one"
            )

    def connect(self, preprocessing: ItemPreprocessing, sequence_length: int | None = None) -> None:
        """What the model needs of the data: how item content is prepared (its encoders' transforms and
        tokenizer; nothing by default, for models that read no content), and, for a sequential model, the
        length of its histories: it then trains on users' item sequences (a target at every position, see
        ``history``) and is evaluated on the latest ``sequence_length`` training items of each user."""
        self.preprocessing = preprocessing
        self.sequence_length = sequence_length

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
        dataset = self.facts.dataset
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
        for name in ("train", "valid", "test"):
            if len(dataset.split(name).items) == 0 and (name != "test" or stage == "test"):
                raise PreparedDatasetError(f"{self.path}: the {name} split is empty; prepare the dataset again")
        packed = self._packed()
        if packed is not None:  # here, once, rather than in every loader worker
            packed.check(dataset)

    @property
    def history_mode(self) -> HistoryMode:
        """The training history, ``data.history`` with ``auto`` resolved by how the dataset was split."""
        if self.hparams.history != "auto":
            return self.hparams.history
        return "preceding" if self.facts.time_ordered else "others"

    # --- loaders ---------------------------------------------------------------------------------------

    @property
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _packed(self) -> PackedItems | None:
        location = self.hparams.packed_items
        return PackedItems(location, self.hparams.packed_items_cache) if location is not None else None

    def _content(self) -> ItemContent:
        # content is fetched by item id for the items the sampler chose, so which store the bytes come from
        # changes neither the batches nor their sharding over ranks nor a mid-epoch resume (all the sampler's)
        return ItemContent(self.path, self.preprocessing, self.facts.item_train_counts, self._packed())

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
        if self.sequence_length is not None:
            dataset = TrainSequences(
                self.facts.train, self.num_items, hp.num_negatives, self.sequence_length, hp.seed, self.history_mode
            )
            collate = SequenceCollator(self._content(), hp.seed)
        else:
            dataset = TrainInteractions(
                self.facts.train, self.num_items, hp.num_negatives, hp.history_length, hp.seed, self.history_mode
            )
            collate = TrainCollator(self._content(), hp.seed)
        world_size, rank = self._world
        sampler = EpochSampler(len(dataset), hp.batch_size, num_replicas=world_size, rank=rank, seed=hp.seed)
        return self._loader(  # the sampler yields whole batches
            dataset, None, collate, sampler, loader=ResumableDataLoader, progress=self._batches_trained
        )

    def catalogue_dataloader(self) -> DataLoader:
        dataset = Catalogue(self.num_items)
        collate = CatalogueCollator(self._content())
        return self._loader(dataset, self.hparams.item_batch_size, collate, self._eval_sampler(dataset))

    def users_dataloader(self, split: str | None) -> DataLoader:
        """Users to rank for: those with interactions in ``split``, or every user when it is None (prediction,
        which sees what test sees)."""
        data = self.facts.dataset
        known, also_exclude = self.facts.train, None
        if split != "valid":
            test_history = self.hparams.test_history
            if test_history == "train_and_valid" or (test_history == "auto" and self.facts.time_ordered):
                known = known.merged(data.split("valid"))
            elif self.hparams.mask_valid_at_test:
                also_exclude = data.split("valid")
        target = data.split(split) if split is not None else None
        history = self.sequence_length or self.hparams.history_length
        dataset = EvalUsers(known, target, history, also_exclude)
        return self._loader(dataset, self.hparams.eval_batch_size, collate_eval_users, self._eval_sampler(dataset))

    def val_dataloader(self) -> list[DataLoader]:
        return [self.catalogue_dataloader(), self.users_dataloader("valid")]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.catalogue_dataloader(), self.users_dataloader("test")]

    def predict_dataloader(self) -> list[DataLoader]:
        return [self.catalogue_dataloader(), self.users_dataloader(None)]
