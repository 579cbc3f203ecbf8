"""The item tower: per-modality vectors h_m(x_m) (encoder + projection), fused into one item vector."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmrec_lightning.encoders.base import ImageEncoder, TextEncoder
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.encoder import ItemFeatures
from mmrec_lightning.fusion import FusionFactory
from mmrec_lightning.towers.content_neighbours import ContentNeighbours

CACHE_FILL_ROWS = 256
"""Items a frozen encoder encodes at once when filling its cache (bounds the activations' memory)."""


class ItemEncoding(NamedTuple):
    """What the item tower computes for a batch of items."""

    vectors: torch.Tensor
    """The fused item vectors ``[B, D]``."""
    weights: torch.Tensor
    """The fusion's modality weights ``[B, M]``."""
    modality_vectors: torch.Tensor
    """The per-modality vectors h ``[B, M, D]`` that were fused, in the order of ``ItemTower.modalities``."""
    available: torch.Tensor
    """Which modalities each item has ``[B, M]``, before any modality dropout."""


class ItemTower(nn.Module):
    """Encodes items from whichever of image, text and item ID are configured. Items outside the catalogue
    (new items, known by their content alone) have item ID -1.

    An item's ID modality counts as available only if the item occurred in training (a cold item's ID
    embedding was never trained); images and texts that are missing are masked too. During training each
    available modality is dropped with probability ``modality_dropout`` (never all of an item's), so the
    fused vector stays useful when a modality is absent — which is what lets cold items be placed.

    Args:
        num_items: size of the item-ID embedding table.
        dim: item vector size D.
        fusion: the fusion factory ``(num_modalities, dim) -> Fusion``.
        image_encoder: optional image encoder, or the catalogue's precomputed image features.
        text_encoder: optional text encoder, or the catalogue's precomputed text features.
        use_item_id: whether the item-ID embedding is a modality.
        modality_dropout: training-time probability of hiding each available modality.
        neighbours: each item's nearest trained items by content (needs precomputed features): with
            ``use_item_id``, the "neighbours" modality, their mean ID embedding; without, an item that never
            occurred in training is their mean vector (then every content encoder must be precomputed
            features); or none.
        cache_frozen: keep the output of each frozen encoder per item in memory after its first encoding, so
            training with frozen encoders runs at embedding speed (frozen image encoders then see the
            deterministic evaluation transform, see ``augment_images``).
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        fusion: FusionFactory,
        image_encoder: ImageEncoder | ItemFeatures | None = None,
        text_encoder: TextEncoder | ItemFeatures | None = None,
        use_item_id: bool = True,
        modality_dropout: float = 0.0,
        cache_frozen: bool = True,
        neighbours: ContentNeighbours | None = None,
    ) -> None:
        super().__init__()
        self.modalities: list[str] = []
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.cache_frozen = cache_frozen
        for name, encoder in (("image", image_encoder), ("text", text_encoder)):
            if encoder is None:
                continue
            if isinstance(encoder, ItemFeatures):
                encoder.check_rows(num_items, f"model.{name}_encoder")
            setattr(self, f"{name}_projection", nn.Linear(encoder.output_dim, dim))
            self.modalities.append(name)
            if cache_frozen and encoder.frozen and not isinstance(encoder, ItemFeatures):
                self.register_buffer(f"_{name}_cache", torch.zeros(num_items, encoder.output_dim), persistent=False)
                self.register_buffer(f"_{name}_cached", torch.zeros(num_items, dtype=torch.bool), persistent=False)
        if use_item_id:
            self.item_embedding = nn.Embedding(num_items, dim)
            nn.init.normal_(self.item_embedding.weight, std=0.1)
            self.modalities.append("id")
        self.neighbours = neighbours
        if neighbours is not None:
            content = [encoder for encoder in (image_encoder, text_encoder) if encoder is not None]
            if not self.features or not (use_item_id or all(isinstance(e, ItemFeatures) for e in content)):
                raise ConfigurationError(
                    "model.content_neighbours needs precomputed features (ItemFeatures) as an encoder, and, without "
                    "use_item_id, as every encoder (an untrained item is placed at its neighbours' mean vector, "
                    "computed from their features)"
                )
            if use_item_id:
                self.modalities.append("neighbours")
        if not self.modalities:
            raise ConfigurationError("model: configure at least one of image_encoder, text_encoder and use_item_id")
        self.fusion = fusion(len(self.modalities), dim)
        self.modality_dropout = modality_dropout

    @property
    def features(self) -> dict[str, torch.Tensor]:
        """The precomputed feature matrices among the encoders, by modality."""
        encoders = {"image": self.image_encoder, "text": self.text_encoder}
        return {name: encoder.matrix for name, encoder in encoders.items() if isinstance(encoder, ItemFeatures)}

    def build_neighbours(self, trained: torch.Tensor) -> None:
        """Find the content neighbours among the ``trained`` items ``[items]`` (bool), if the tower has them."""
        if self.neighbours is not None:
            self.neighbours.build(self.features, trained)

    @property
    def augment_images(self) -> bool:
        """Whether training images should be augmented (not when a frozen encoder's features are cached)."""
        return isinstance(self.image_encoder, ImageEncoder) and not hasattr(self, "_image_cache")

    def _encode(
        self, name: str, encode: Callable[[torch.Tensor], torch.Tensor], item_ids: torch.Tensor
    ) -> torch.Tensor:
        """``encode(rows)`` for the batch, served from the frozen-encoder cache where one is kept."""
        if not hasattr(self, f"_{name}_cache") or bool((item_ids < 0).any()):  # nothing cached for new items
            return encode(torch.arange(len(item_ids), device=item_ids.device))
        cache, cached = getattr(self, f"_{name}_cache"), getattr(self, f"_{name}_cached")
        missing = torch.nonzero(~cached[item_ids]).flatten()
        if len(missing):  # (an empty tensor splits into one empty slice)
            with torch.no_grad():
                # in slices: the activations of a frozen encoder over all of a large batch's new items would
                # set the run's peak memory (it grows with the catalogue, the batches hold more distinct items)
                for rows in missing.split(CACHE_FILL_ROWS):
                    cache[item_ids[rows]] = encode(rows).to(cache.dtype)
            cached[item_ids[missing]] = True
        return cache[item_ids]

    def _modality(self, name: str, items: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder output and availability mask of modality ``name`` for the batch."""
        encoder, ids = getattr(self, f"{name}_encoder"), items["item_ids"]
        if isinstance(encoder, ItemFeatures):
            if bool((ids < 0).any()):
                raise ConfigurationError(
                    f"model.{name}_encoder reads precomputed features ({encoder.path}), which exist only for the "
                    "catalogue; to encode new items, train with the encoder itself"
                )
            return encoder(ids), encoder.available[ids]
        if name == "image":
            features = self._encode(name, lambda rows: encoder(items["image"][rows]), ids)
        else:
            features = self._encode(
                name, lambda rows: encoder(items["input_ids"][rows], items["attention_mask"][rows]), ids
            )
        return features, items[f"{name}_mask"]

    def modality_vectors(self, items: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """h ``[B, M, D]`` and the availability mask ``[B, M]``, in the order of ``self.modalities``."""
        vectors, masks = [], []
        for name in self.modalities:
            if name == "id":
                # a new item's ID (-1) has no embedding; its id_mask is False, so the clamped row is never used
                vectors.append(self.item_embedding(items["item_ids"].clamp(min=0)))
                masks.append(items["id_mask"])
            elif name == "neighbours":
                neighbour_vectors, mask = self.neighbours(items["item_ids"], self.item_embedding.weight)
                vectors.append(neighbour_vectors)
                masks.append(mask)
            else:
                features, mask = self._modality(name, items)
                vectors.append(getattr(self, f"{name}_projection")(features))
                masks.append(mask)
        return torch.stack(vectors, 1), torch.stack(masks, 1)

    def forward(self, items: dict[str, torch.Tensor]) -> ItemEncoding:
        """Encodes and fuses each item once; the modality vectors come along for the auxiliary heads."""
        h, available = self.modality_vectors(items)
        mask = available
        if self.training and self.modality_dropout > 0:
            dropped = available & (torch.rand(available.shape, device=available.device) >= self.modality_dropout)
            mask = torch.where(dropped.any(1, keepdim=True), dropped, available)
        vectors, weights = self.fusion(h, mask)
        if self.neighbours is not None and "id" not in self.modalities:
            vectors = self._placed_by_neighbours(items["item_ids"], vectors)
        return ItemEncoding(vectors, weights, h, available)

    def _placed_by_neighbours(self, item_ids: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Without item IDs: the vectors of items that never occurred in training replaced by the mean direction
        of their content neighbours' vectors. The projection of an untrained item's content is an extrapolation
        from the trained items; their fitted vectors carry what users did with items like it (on the MovieLens
        cold split the cold items' Recall@20 went from .009 to .052, and the overall one rose too,
        docs/sequential.md)."""
        untrained = self.neighbours.untrained(item_ids)
        if not bool(untrained.any()):
            return vectors
        neighbours = self.neighbours.index[item_ids[untrained]]  # trained items: encoded without borrowing
        theirs = self({"item_ids": neighbours.flatten()}).vectors.view(*neighbours.shape, -1)
        # their mean direction at their mean length: each neighbour counts alike, whatever its vector's length
        borrowed = F.normalize(F.normalize(theirs, dim=-1).mean(1), dim=-1) * theirs.norm(dim=-1).mean(1, keepdim=True)
        return vectors.index_put((untrained.nonzero().flatten(),), borrowed.to(vectors.dtype))
