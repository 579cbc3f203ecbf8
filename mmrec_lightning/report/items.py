"""How the report shows an item: a thumbnail of its stored image and a title from the first words of its text."""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image

from mmrec_lightning.data.items import decode_image
from mmrec_lightning.data.schema import PreparedDataset


class ItemDisplay:
    """Titles and thumbnails of a prepared dataset's items.

    Args:
        dataset: the prepared dataset.
        title_words: words of the item text kept as its title.
        thumbnail_size: longest side of a thumbnail, in pixels.
    """

    def __init__(self, dataset: PreparedDataset, title_words: int = 6, thumbnail_size: int = 96) -> None:
        self.dataset = dataset
        self.title_words = title_words
        self.thumbnail_size = thumbnail_size
        self.thumbnail = lru_cache(maxsize=None)(self._thumbnail)  # an item shown twice is decoded once
        self._categories = dataset.item_categories()

    def raw_id(self, item: int) -> str:
        return str(self.dataset.items.column("raw_id")[item].as_py())

    def user_raw_id(self, user: int) -> str:
        return str(self.dataset.users.column("raw_id")[user].as_py())

    def title(self, item: int) -> str:
        """The first ``title_words`` words of the item's text (the raw id when it has none)."""
        text = self.dataset.items.column("text")[item].as_py()
        if not text:
            return self.raw_id(item)
        words = text.split()
        return " ".join(words[: self.title_words]) + (" …" if len(words) > self.title_words else "")

    def category(self, item: int) -> str | None:
        index = self._categories[item]
        return self.dataset.category_names[index] if index >= 0 else None

    def _thumbnail(self, item: int) -> Image.Image | None:
        """The item's image scaled down to ``thumbnail_size``, in RGB; None without a readable image."""
        data = self.dataset.items.column("image")[item].as_py()
        if data is None:
            return None
        try:
            image = decode_image(data, self.thumbnail_size)  # as the model sees it, decoded at reduced scale
        except Exception:  # PIL raises many types for bad data; the report shows the item without its image
            return None
        image.thumbnail((self.thumbnail_size, self.thumbnail_size))
        return image

    def jpeg(self, item: int) -> bytes | None:
        """The thumbnail as JPEG bytes."""
        image = self.thumbnail(item)
        if image is None:
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()
