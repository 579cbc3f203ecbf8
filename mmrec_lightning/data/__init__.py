"""Data: the prepared on-disk format (:mod:`.schema`) and the ``prepare`` command that builds it from raw
sources (:mod:`.prepare`, :mod:`.sources`); the contract between data and model (:mod:`.contract`); item
content decoding (:mod:`.items`); the training stream with its negatives and samplers (:mod:`.datasets`,
:mod:`.negatives`, :mod:`.samplers`). Nothing here imports Lightning (the DataModule is
:mod:`mmrec_lightning.datamodule`)."""

from mmrec_lightning.data.contract import DataFacts, ImageTransform, ItemPreprocessing
from mmrec_lightning.data.schema import PreparedDataset, PreparedDatasetError, SplitIndex, write_prepared

__all__ = [
    "DataFacts",
    "ImageTransform",
    "ItemPreprocessing",
    "PreparedDataset",
    "PreparedDatasetError",
    "SplitIndex",
    "write_prepared",
]
