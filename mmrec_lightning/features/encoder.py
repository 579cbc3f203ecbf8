"""Precomputed item features in place of an encoder: the catalogue encoded once, looked up by item index."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from mmrec_lightning.features.files import read_features
from mmrec_lightning.errors import ConfigurationError


class ItemFeatures(nn.Module):
    """A frozen feature matrix, one row per item, standing in for an image or text encoder.

    Use it where a model takes an encoder once the catalogue has been encoded with ``python -m
    mmrec_lightning extract-features`` (or was shipped with features, as MMRec's datasets are): training then
    runs at embedding speed and the data loaders decode no images and tokenise no text for that modality.
    The matrix is held in memory (rows x dim x 4 bytes) and moves with the model to its device; it is not
    stored in checkpoints, which keep the ``path`` instead.

    Args:
        path: the ``.npy`` matrix, row i = item i (e.g. ``data/synthetic/features/image_feat.npy``).
        normalize: scale every row to unit length (features of different encoders differ in scale).
        dtype: how the matrix is held. ``bfloat16`` halves its memory, and the models that project it
            (VBPR, FREEDOM) then multiply in bfloat16 with float32 accumulation, as mixed precision does
            (several times faster on GPUs and on CPUs with AMX); the projection weights stay float32.
            ``float32`` is exact (MMRec's choice).
    """

    frozen = True

    def __init__(self, path: str, normalize: bool = False, dtype: Literal["float32", "bfloat16"] = "float32") -> None:
        super().__init__()
        self.path = path
        matrix = torch.from_numpy(np.array(read_features(path), dtype=np.float32))  # a copy: memmaps are read-only
        available = matrix.abs().sum(1) > 0  # an all-zero row: the item has no such content
        if normalize:
            matrix = torch.nn.functional.normalize(matrix, dim=1)
        self.register_buffer("matrix", matrix.to(getattr(torch, dtype)), persistent=False)
        self.register_buffer("available", available, persistent=False)
        self.output_dim = matrix.shape[1]
        self._gathered: torch.Tensor | None = None  # rows of the last gather, in a block reused by the next
        self.gathers = 0

    @property
    def num_items(self) -> int:
        return self.matrix.shape[0]

    def check_rows(self, num_items: int, key: str) -> None:
        """Refuse, naming the config ``key`` and the file, a matrix without one row per item of the data."""
        if self.num_items != num_items:
            raise ConfigurationError(
                f"{key}: {self.path} has {self.num_items} rows, but the data has {num_items} items (row i = item "
                "i); point it at the features of this dataset or extract them again"
            )

    def gather(self, item_ids: torch.Tensor) -> torch.Tensor:
        """The features of ``item_ids``, written into a block of memory this module keeps for the purpose:
        valid until the next ``gather`` (``gathers`` counts them). On CPU, writing a batch's rows into fresh
        memory cost as much as projecting them: a block of tens of MB is mapped and faulted in anew each time."""
        block = self._gathered
        if block is None or block.shape[0] < len(item_ids):
            block = self._gathered = self.matrix.new_empty(len(item_ids), self.output_dim)
        self.gathers += 1
        return torch.index_select(self.matrix, 0, item_ids, out=block[: len(item_ids)])

    def gathered(self, item_ids: torch.Tensor, number: int) -> torch.Tensor:
        """The rows ``gather`` number ``number`` returned, gathered again if another gather has come since."""
        return self._gathered[: len(item_ids)] if number == self.gathers else self.gather(item_ids)

    def _apply(self, fn, recurse: bool = True):
        self._gathered = None  # moved or cast: the next gather allocates a block like the matrix, and here
        return super()._apply(fn, recurse)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """The features ``[B, output_dim]`` of ``item_ids``, in float32."""
        return self.matrix[item_ids].float()
