"""Connecting a model and its data: the one place where what each needs from the other is handed over."""

from __future__ import annotations

from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.models.base import RecommenderModule


def connect(model: RecommenderModule, datamodule: RecDataModule) -> None:
    """Give the data what the model needs of it (its encoders' item preprocessing; a sequential model's history
    length) and the model the data's facts (sizes, training split and counts, cold items). Call it once, before
    training or evaluating; the CLI does."""
    datamodule.connect(model.item_preprocessing(), model.sequence_length)
    model.connect(datamodule.facts)
