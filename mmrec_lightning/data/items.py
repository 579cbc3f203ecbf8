"""Item content: decoding and preprocessing the images and text of a set of items, in data-loader workers."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.data.sources.text import clean_text

log = logging.getLogger(__name__)


@dataclass
class ItemPreprocessing:
    """How a model wants its item content prepared; the model's encoders provide it (see
    ``RecommenderModule.item_preprocessing``), the DataModule applies it in its workers.

    Args:
        image_train: PIL image -> tensor, with train-time augmentation; ``None`` when images are not used.
        image_eval: PIL image -> tensor, deterministic.
        tokenizer: a Hugging Face tokenizer; ``None`` when text is not used.
        max_text_length: tokens kept per text.
    """

    image_train: Callable[[Image.Image], torch.Tensor] | None = None
    image_eval: Callable[[Image.Image], torch.Tensor] | None = None
    tokenizer: Any = None
    max_text_length: int = 64


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: transparency is composited on white (not on black, which would change the
    item's look), 16-bit and float images are rescaled from their own range instead of clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


class ItemContent:
    """Loads and preprocesses the content of items by index from a prepared dataset.

    Holds only the dataset path until first use, so it pickles cheaply into worker processes, each of
    which then opens its own memory map.
    """

    def __init__(self, path: str, preprocessing: ItemPreprocessing, train_counts: np.ndarray) -> None:
        self.path = path
        self.preprocessing = preprocessing
        self.train_counts = train_counts
        self._dataset: PreparedDataset | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    @property
    def dataset(self) -> PreparedDataset:
        if self._dataset is None:
            self._dataset = PreparedDataset(self.path)
        return self._dataset

    def _decode(self, item: int, data: bytes) -> Image.Image | None:
        """The item's image as 8-bit RGB, or None if it cannot be used (the item then goes without image)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, do not just warn
                image = Image.open(io.BytesIO(data))
                image.load()
            return to_rgb(image)
        except Exception as error:  # any decoder failure (truncated, corrupt, bomb): use no image
            log.warning("item %d in %s/items.arrow: image unusable (%s); using no image", item, self.path, error)
            return None

    def load(self, items: np.ndarray, train: bool) -> dict[str, torch.Tensor]:
        """Content of ``items`` as a batch: images (zeros where missing), token ids, availability masks,
        categories (-1 unknown), whether each item has a trained ID embedding, and ``image_failed``: the
        items whose stored image could not be used (see ``callbacks.ImageFaultMonitor``)."""
        table = self.dataset.items
        batch: dict[str, torch.Tensor] = {
            "item_ids": torch.as_tensor(items, dtype=torch.long),
            "category": torch.as_tensor(self.dataset.item_categories()[items], dtype=torch.long),
            "id_mask": torch.as_tensor(self.train_counts[items] > 0),
        }
        prep = self.preprocessing
        transform = prep.image_train if train else prep.image_eval
        if transform is not None:
            column = table.column("image")
            images, mask, failed = [], [], []
            for item in items.tolist():
                data = column[item].as_py()
                image = self._decode(item, data) if data else None
                images.append(transform(image) if image is not None else None)
                mask.append(image is not None)
                failed.append(bool(data) and image is None)
            shape = next((x.shape for x in images if x is not None), None)
            if shape is None:
                shape = transform(Image.new("RGB", (8, 8))).shape
            batch["image"] = torch.stack([x if x is not None else torch.zeros(shape) for x in images])
            batch["image_mask"] = torch.tensor(mask)
            batch["image_failed"] = torch.tensor(failed)
        if prep.tokenizer is not None:
            column = table.column("text")
            texts = [clean_text(column[item].as_py()) or "" for item in items.tolist()]
            batch["text_mask"] = torch.tensor([bool(t) for t in texts])
            tokens = prep.tokenizer(
                [t or "" for t in texts],
                padding=True,
                truncation=True,
                max_length=prep.max_text_length,
                return_tensors="pt",
            )
            batch["input_ids"] = tokens["input_ids"]
            batch["attention_mask"] = tokens["attention_mask"]
        return batch
