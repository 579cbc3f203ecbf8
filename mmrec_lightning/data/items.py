"""Item content: decoding and preprocessing the images and text of a set of items, in data-loader workers."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from mmrec_lightning.data.contract import ImageTransform, ItemPreprocessing
from mmrec_lightning.data.packed import PackedItems
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.data.sources.text import clean_text
from mmrec_lightning.errors import reason

log = logging.getLogger(__name__)


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
    return image if image.mode == "RGB" else image.convert("RGB")  # convert would copy an RGB image


def decode_image(data: bytes, min_side: int | None = None) -> Image.Image:
    """8-bit RGB of an encoded image; a JPEG at least twice ``min_side`` on both sides is decoded at a reduced
    scale that keeps both sides at least ``min_side``. Raises what PIL raises for bad data, and for a
    decompression bomb."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, do not just warn
        image = Image.open(io.BytesIO(data))
        if min_side is not None:
            image.draft(None, (min_side, min_side))  # a no-op for formats other than JPEG
        image.load()
    return to_rgb(image)


def _placeholder(example: torch.Tensor, fill: tuple[int, int, int] | None) -> torch.Tensor:
    """The image of an item without one, shaped like ``example``: ``fill`` for an :class:`ImageTransform`
    (its model's mean colour, which normalises to about zero as the float placeholder did), zeros otherwise."""
    if fill is None:
        return torch.zeros_like(example)
    return torch.tensor(fill, dtype=example.dtype).view(-1, 1, 1).expand_as(example)


class ItemContent:
    """Loads and preprocesses the content of items by index from a prepared dataset.

    Holds only the dataset path until first use, so it pickles cheaply into worker processes, each of
    which then opens its own memory map.

    Args:
        path: folder of the prepared dataset.
        preprocessing: the model's image transforms and tokenizer.
        train_counts: each item's number of training interactions.
        packed: where to read the stored images and text instead of the dataset's ``items.arrow`` (the same
            bytes, so the same batches); categories are still read from the dataset.
    """

    def __init__(
        self,
        path: str,
        preprocessing: ItemPreprocessing,
        train_counts: np.ndarray,
        packed: PackedItems | None = None,
    ) -> None:
        self.path = path
        self.preprocessing = preprocessing
        self.train_counts = train_counts
        self.packed = packed
        self._dataset: PreparedDataset | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None}

    @property
    def dataset(self) -> PreparedDataset:
        if self._dataset is None:
            self._dataset = PreparedDataset(self.path)
        return self._dataset

    def _decode(self, item: int, data: bytes, min_side: int | None = None) -> Image.Image | None:
        """The item's image as 8-bit RGB (see :func:`decode_image`; the transform would throw away the pixels
        below ``min_side``, and decoding them costs most), or None if it cannot be used (the item then goes
        without image)."""
        try:
            return decode_image(data, min_side)
        except Exception as error:  # any decoder failure (truncated, corrupt, bomb): use no image
            source = self.packed.location if self.packed is not None else f"{self.path}/items.arrow"
            log.warning("item %d in %s: image unusable (%s); using no image", item, source, reason(error))
            return None

    def _stored(self, items: list[int], fields: list[str]) -> dict[str, list]:
        """The stored ``fields`` of ``items`` (``image``: the encoded file, ``text``), None where an item has none:
        from the packed shards when there are any (each item read once for all fields), else from items.arrow."""
        if self.packed is not None and fields:
            return self.packed.read(items, self.dataset)
        columns = {name: self.dataset.items.column(name) for name in fields}
        return {name: [column[item].as_py() for item in items] for name, column in columns.items()}

    def _load_images(
        self, items: list[int], stored: list[bytes | None], transform: Callable[[Image.Image], torch.Tensor]
    ) -> dict:
        """``image`` ``[B, 3, H, W]`` (a placeholder where an item has no usable image), ``image_mask`` and
        ``image_failed`` for ``items``, whose encoded images are ``stored``."""
        min_side = transform.min_side if isinstance(transform, ImageTransform) else None
        images, failed = [], []
        for item, data in zip(items, stored, strict=True):
            image = self._decode(item, data, min_side) if data else None
            images.append(image)
            failed.append(bool(data) and image is None)
        return {**image_batch(images, transform), "image_failed": torch.tensor(failed)}

    def load(self, items: np.ndarray, train: bool) -> dict[str, torch.Tensor]:
        """Content of ``items`` as a batch: images (a placeholder where missing), token ids, availability masks,
        categories (-1 unknown), whether each item has a trained ID embedding, and ``image_failed``: the
        items whose stored image could not be used (see ``callbacks.ImageFaultMonitor``)."""
        batch: dict[str, torch.Tensor] = {
            "item_ids": torch.as_tensor(items, dtype=torch.long),
            "category": torch.as_tensor(self.dataset.item_categories()[items], dtype=torch.long),
            "id_mask": torch.as_tensor(self.train_counts[items] > 0),
        }
        prep = self.preprocessing
        transform = prep.image_train if train else prep.image_eval
        ids = items.tolist()
        fields = [name for name, used in (("image", transform), ("text", prep.tokenizer)) if used is not None]
        stored = self._stored(ids, fields)
        if transform is not None:
            batch.update(self._load_images(ids, stored["image"], transform))
        if prep.tokenizer is not None:
            batch.update(text_batch(stored["text"], prep))
        return batch


def image_batch(images: Sequence[Image.Image | None], transform: Callable[[Image.Image], torch.Tensor]) -> dict:
    """``image`` ``[B, 3, H, W]`` of 8-bit RGB ``images`` (a placeholder for a missing one) and ``image_mask``."""
    tensors = [transform(image) if image is not None else None for image in images]
    mask = [tensor is not None for tensor in tensors]
    if not all(mask):
        example = next((x for x in tensors if x is not None), None)
        if example is None:  # only for the shape and dtype
            example = transform(Image.new("RGB", (8, 8)))
        placeholder = _placeholder(example, transform.fill if isinstance(transform, ImageTransform) else None)
        tensors = [x if x is not None else placeholder for x in tensors]
    # default_collate stacks into shared memory inside a worker: handing the batch over then copies nothing
    return {"image": default_collate(tensors), "image_mask": torch.tensor(mask)}


def text_batch(texts: Sequence[str | None], preprocessing: ItemPreprocessing) -> dict:
    """Token ids, attention mask and ``text_mask`` (whether anything is left after cleaning) of ``texts``."""
    cleaned = [clean_text(text) or "" for text in texts]
    length = preprocessing.max_text_length
    # padded to a multiple of 8 (when that cannot pass max_length): batches then take a few shapes, whose
    # cuDNN attention graphs and convolution plans are built once, not every step (and tensor cores like 8)
    tokens = preprocessing.tokenizer(
        cleaned,
        padding=True,
        truncation=True,
        max_length=length,
        pad_to_multiple_of=8 if length % 8 == 0 else None,
        return_tensors="pt",
    )
    mask = torch.tensor([bool(text) for text in cleaned])
    return {"text_mask": mask, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def content_batch(
    images: Sequence[Image.Image | None], texts: Sequence[str | None], preprocessing: ItemPreprocessing
) -> dict[str, torch.Tensor]:
    """The item-tower batch of items known only by their content — items the model never saw, whose ID is
    unavailable — preprocessed for evaluation exactly as the catalogue is."""
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images but {len(texts)} texts; give one of each per item (or None)")
    batch: dict[str, torch.Tensor] = {
        "item_ids": torch.full((len(images),), -1, dtype=torch.long),
        "category": torch.full((len(images),), -1, dtype=torch.long),
        "id_mask": torch.zeros(len(images), dtype=torch.bool),
    }
    if preprocessing.image_eval is not None:
        batch.update(
            image_batch([to_rgb(image) if image is not None else None for image in images], preprocessing.image_eval)
        )
    if preprocessing.tokenizer is not None:
        batch.update(text_batch(texts, preprocessing))
    return batch
