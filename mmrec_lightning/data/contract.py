"""The contract between a prepared dataset and a model: what each tells the other.

The model tells the data how to prepare item content (:class:`ItemPreprocessing`, from its encoders); the data
tells the model the facts it trains and evaluates with (:class:`DataFacts`). ``mmrec_lightning.connect.connect``
hands both over, once, before training; nothing else passes between a model and its DataModule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrec_lightning.data.schema import PreparedDataset, SplitIndex

if TYPE_CHECKING:  # annotations only: `prepare`, which imports this package, must start without torch
    import torch
    from PIL import Image


class DataFacts:
    """What a model may know about its data: the sizes, the training split, the training count of each item and
    which items test metrics count as cold; and the dataset itself, for what reports and exports display.

    Read from disk on first use (a synthetic dataset is generated only when training starts) and then kept.

    Args:
        path: the prepared dataset's folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @cached_property
    def dataset(self) -> PreparedDataset:
        return PreparedDataset(self.path)

    @property
    def num_users(self) -> int:
        return self.dataset.num_users

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    @cached_property
    def train(self) -> SplitIndex:
        """The training interactions, by user."""
        return self.dataset.split("train")

    @cached_property
    def item_train_counts(self) -> np.ndarray:
        """``[items]`` training interactions of each item."""
        return np.bincount(self.train.items, minlength=self.num_items)

    @property
    def time_ordered(self) -> bool:
        """Whether what is held out follows the training data in time (leave-one-out and temporal splits), rather
        than falling anywhere in a user's time line (random splits)."""
        return self.dataset.metadata.get("split", {}).get("method") in ("loo", "temporal")

    @cached_property
    def cold_items(self) -> np.ndarray:
        """``[items]`` bool: the items test metrics count as cold — the split's designated cold items where it
        names them (``prepare --cold_items``), else those without a training interaction."""
        designated = self.dataset.metadata.get("split", {}).get("designated_cold_items")
        if designated is None:
            return self.item_train_counts == 0
        return np.isin(np.arange(self.num_items), designated)


@dataclass(frozen=True)
class ImageTransform:
    """An image transform that hands the loader uint8 pixels, with what the loader needs besides calling it.

    Normalising is left to the model, on its device: a uint8 batch is a quarter of a float one to build,
    pass between processes and copy to the accelerator.

    Args:
        transform: PIL image -> uint8 tensor ``[3, H, W]`` (resizing and augmentation included).
        min_side: the smallest image side the transform needs to lose no detail: a JPEG at least twice as
            large on both sides is decoded at reduced scale (``Image.draft``), never below this.
        fill: the colour of the placeholder for an item without an image.
    """

    transform: Callable[[Image.Image], torch.Tensor]
    min_side: int
    fill: tuple[int, int, int] = (0, 0, 0)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)


@dataclass
class ItemPreprocessing:
    """How a model wants its item content prepared; the model's encoders provide it (see
    ``RecommenderModule.item_preprocessing``), the DataModule applies it in its workers.

    Args:
        image_train: PIL image -> tensor, with train-time augmentation; ``None`` when images are not used.
            An :class:`ImageTransform` also lets large JPEGs be decoded at reduced scale.
        image_eval: PIL image -> tensor, deterministic.
        tokenizer: a Hugging Face tokenizer; ``None`` when text is not used.
        max_text_length: tokens kept per text.
    """

    image_train: Callable[[Image.Image], torch.Tensor] | None = None
    image_eval: Callable[[Image.Image], torch.Tensor] | None = None
    tokenizer: Any = None
    max_text_length: int = 64

    @classmethod
    def of(cls, image_encoder: Any = None, text_encoder: Any = None, augment_images: bool = True) -> ItemPreprocessing:
        """What an ``ImageEncoder`` and a ``TextEncoder`` expect (nothing for one that is None); training images
        augmented only when ``augment_images``."""
        image, text = image_encoder, text_encoder
        return cls(
            image_train=image.transform(train=augment_images) if image is not None else None,
            image_eval=image.transform(train=False) if image is not None else None,
            tokenizer=text.tokenizer() if text is not None else None,
            max_text_length=text.max_length if text is not None else 0,
        )
