"""``POST /items``: a new item's vector from the exported checkpoint's item tower, its nearest items and
users, and, with ``add: true``, the item added to the live catalogue. Images are decoded with PIL's
decompression-bomb protection and a pixel limit; the item tower encodes a whole batch of requests at once."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmrec_lightning.data.items import content_batch, decode_image
from mmrec_lightning.errors import reason
from mmrec_lightning.export.recommend import load_exported_model
from mmrec_lightning.serve.additions import NewItem
from mmrec_lightning.serve.catalogue import named
from mmrec_lightning.serve.requests import NewItemQuery, Rejected, parse_new_item
from mmrec_lightning.serve.search import ExportAPI

MAX_IMAGE_PIXELS = 16_000_000  # 4000 x 4000; PIL itself refuses from about 89 million


def read_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image | Rejected:
    """An uploaded image as 8-bit RGB, or why not: its size is read from the header before any pixel is
    decoded, so a decompression bomb (a small file of huge dimensions) is refused without being expanded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Rejected(413, f"image: more pixels than PIL decodes (a decompression bomb?); at most {max_pixels:,}")
    except Exception as error:
        return Rejected(422, f"image: not a readable image ({reason(error)})")
    if width * height > max_pixels:
        return Rejected(413, f"image: {width}x{height} pixels, more than the {max_pixels:,} this server decodes")
    try:
        return decode_image(data)
    except Exception as error:  # truncated or corrupt pixel data
        return Rejected(422, f"image: not a readable image ({reason(error)})")


class NewItemsAPI(ExportAPI):
    """``POST /items``, JSON ``{"image": "<base64>", "text": "...", "id": "...", "add": false, "k": 10}`` or
    the same fields as a multipart form with the image as a file. Answers the item's ``vector``, its
    per-item outputs (``modality_weights``), its ``k`` nearest ``items`` (cosine) and the ``k`` ``users`` who
    score it highest; with ``add: true``, the item (under ``id``, made up if not given) is added to the live
    catalogue, persisted beside the export, so that later ``/similar`` and ``/recommend`` return it.

    Args:
        max_image_pixels: the largest image (width x height) decoded.
        batching: ``max_batch_size``, ``batch_timeout`` (see :class:`ExportAPI`).
    """

    def __init__(
        self, export: str, additions: str | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS, **batching: Any
    ) -> None:
        super().__init__(export, additions, api_path="/items", **batching)
        self.max_image_pixels = max_image_pixels

    def setup(self, device: str) -> None:
        super().setup(device)
        torch.set_num_threads(self.threads)
        self.model = load_exported_model(self.catalogue.path, self.catalogue.manifest)
        self.sees_content = hasattr(self.model, "encode_new_items")

    def decode_request(self, request) -> tuple[NewItemQuery, Image.Image | None] | Rejected:
        if not self.sees_content:
            return Rejected(501, f"{self.catalogue.manifest['model']} sees only IDs: it cannot place a new item")
        query = parse_new_item(request)
        if isinstance(query, Rejected):
            return query
        if query.add:
            self.catalogue.refresh()  # added a moment ago, through another worker?
            if self.catalogue.item_row(query.id) is not None:
                return Rejected(409, f"item {query.id!r} already exists; give the new item another id")
        image = None if query.image is None else read_image(query.image, self.max_image_pixels)
        return image if isinstance(image, Rejected) else (query, image)

    @torch.no_grad()
    def encode(self, images: list[Image.Image | None], texts: list[str | None]) -> dict[str, np.ndarray]:
        """Vectors and per-item outputs of new items, in one pass of the item tower: the content prepared
        as for evaluation, without an ID, as ``MultimodalRecommender.encode_new_items`` does."""
        encoded = self.model.encode_items(content_batch(images, texts, self.model.item_preprocessing()))
        encoded = encoded if isinstance(encoded, dict) else {"vectors": encoded}
        return {name: value.float().cpu().numpy() for name, value in encoded.items()}

    def answer(self, queries: list[tuple[NewItemQuery, Image.Image | None]]) -> list[dict | Rejected]:
        encoded = self.encode([image for _, image in queries], [q.text for q, _ in queries])
        vectors, ks = encoded["vectors"], [q.k for q, _ in queries]
        items = self.catalogue.similar(vectors, ks, [None] * len(queries))
        users = self.catalogue.top_users(vectors, ks)
        columns = self.catalogue.output_columns
        outputs = [
            {name: encoded.get(name, np.full((len(queries), len(c)), np.nan))[i] for name, c in columns.items()}
            for i in range(len(queries))
        ]
        adding = [i for i, (q, _) in enumerate(queries) if q.add]
        new = [NewItem(queries[i][0].id, queries[i][0].text, vectors[i], outputs[i]) for i in adding]
        added = dict(zip(adding, self.catalogue.add(new) if new else [], strict=True))
        answers: list[dict | Rejected] = []
        for i, (query, _) in enumerate(queries):
            if added.get(i) is False:  # taken since it was checked, by a request of this batch or another worker
                answers.append(Rejected(409, f"item {query.id!r} already exists; give the new item another id"))
                continue
            answers.append(
                {
                    "item": query.id,
                    "added": bool(added.get(i)),
                    "vector": vectors[i].tolist(),
                    **{name: named(c, outputs[i][name]) for name, c in columns.items()},
                    "items": self.items(items[i]),
                    "users": [
                        {"rank": rank, "user": self.catalogue.user_ids[row], "score": score}
                        for rank, (row, score) in enumerate(users[i], start=1)
                    ],
                }
            )
        return answers
