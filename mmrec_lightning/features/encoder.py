"""Precomputed item features in place of an encoder: the catalogue encoded once, looked up by item index."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.files import read_features

log = logging.getLogger(__name__)

BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""CPU flags (``/proc/cpuinfo``) of native bfloat16 products: x86's AVX512-BF16 and AMX, ARM's FEAT_BF16."""


def cpu_flags() -> frozenset[str] | None:
    """The instruction-set flags of this CPU as ``/proc/cpuinfo`` lists them (x86 ``flags``, ARM ``Features``),
    or None where there is no such file (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def _bfloat16_measured_faster(rows: int = 2048, dim: int = 2048, out: int = 64) -> bool:
    """Whether a bfloat16 product of VBPR's shape (a batch of feature rows times a projection) runs at least as
    fast as the float32 one here: the best of three of each, once (about 0.1 s)."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, dim, generator=generator), torch.randn(dim, out, generator=generator)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w = a.to(dtype), b.to(dtype)
        x @ w  # warm-up: kernel selection, first-touch allocations
        times = []
        for _ in range(3):
            start = time.perf_counter()
            x @ w
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.bfloat16] <= best[torch.float32]


@functools.cache
def cpu_bfloat16_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively: its flags name AVX512-BF16, AMX (x86) or BF16
    (ARM); where no flags can be read, a bfloat16 product measured once against the float32 one. Without such
    instructions bfloat16 is converted element by element and products ran 3-4x slower than float32 (VBPR and
    FREEDOM training on an AMD EPYC without AVX-512)."""
    flags = cpu_flags()
    if flags is not None:
        return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)
    return _bfloat16_measured_faster()


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
            ``float32`` is exact (MMRec's choice). On a CPU without bfloat16 instructions
            (:func:`cpu_bfloat16_is_fast`) a ``bfloat16`` matrix is held in float32 instead, with a logged note:
            there bfloat16 products were 3-4x slower than float32. Moved to a GPU it is held in bfloat16.
    """

    frozen = True

    def __init__(self, path: str, normalize: bool = False, dtype: Literal["float32", "bfloat16"] = "float32") -> None:
        super().__init__()
        self.path = path
        self.requested_dtype = dtype
        matrix = torch.from_numpy(np.array(read_features(path), dtype=np.float32))  # a copy: memmaps are read-only
        available = matrix.abs().sum(1) > 0  # an all-zero row: the item has no such content
        if normalize:
            matrix = torch.nn.functional.normalize(matrix, dim=1)
        self.register_buffer("matrix", matrix.to(self._held_dtype(matrix.device)), persistent=False)
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

    def _held_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype the matrix is held in on ``device``: the requested one, except bfloat16 on a CPU without
        bfloat16 instructions, where float32 is as exact and faster."""
        if self.requested_dtype == "bfloat16" and device.type == "cpu" and not cpu_bfloat16_is_fast():
            _note_float32_fallback(self.path)
            return torch.float32
        return getattr(torch, self.requested_dtype)

    def _apply(self, fn, recurse: bool = True):
        self._gathered = None  # moved or cast: the next gather allocates a block like the matrix, and here
        device = self.matrix.device
        module = super()._apply(fn, recurse)
        moved = self.matrix.device != device  # e.g. to a GPU: bfloat16 there, whatever this CPU lacks
        if moved and self.requested_dtype == "bfloat16" and self.matrix.dtype in (torch.float32, torch.bfloat16):
            self.matrix = self.matrix.to(self._held_dtype(self.matrix.device))
        return module

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """The features ``[B, output_dim]`` of ``item_ids``, in float32."""
        return self.matrix[item_ids].float()


_noted: set[str] = set()


def _note_float32_fallback(path: str) -> None:
    """Log, once per file, that bfloat16 features are held in float32 on this CPU."""
    if path in _noted:
        return
    _noted.add(path)
    log.warning(
        "ItemFeatures(%s, dtype=bfloat16): this CPU has no bfloat16 instructions (%s), where bfloat16 products "
        "ran 3-4x slower than float32; the matrix is held in float32 instead (exact, twice the memory)",
        path,
        " / ".join(BFLOAT16_CPU_FLAGS),
    )
