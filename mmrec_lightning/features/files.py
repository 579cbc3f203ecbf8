"""Item feature matrices kept beside a prepared dataset: ``<dataset>/features/<modality>_feat.npy``.

Row i belongs to item i, which is MMRec's ``image_feat.npy`` / ``text_feat.npy`` layout: the files can be
handed to MMRec as they are. An all-zero row means the item has no such content. ``features.json`` records
where each matrix came from (the encoder that made it, or the source file it was copied from).

They are written by ``prepare`` for sources that ship features (MMRec's) and by ``extract-features``, and
read by models through :class:`mmrec_lightning.features.ItemFeatures`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrec_lightning.atomic import write_atomically
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.matrices import MatrixWriter

FEATURES_DIR = "features"
MODALITIES = ("image", "text")


def feature_file(dataset: str | Path, modality: str) -> Path:
    """Where the ``modality`` features of the prepared dataset at ``dataset`` live."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return Path(dataset) / FEATURES_DIR / f"{modality}_feat.npy"


def save_features(path: Path, matrix: np.ndarray, rows_per_chunk: int = 65536) -> Path:
    """Write ``matrix`` (any array-like with ``shape``, e.g. a memory map) as float32, atomically."""
    writer = MatrixWriter(path, matrix.shape[0], matrix.shape[1])
    try:
        for start in range(0, matrix.shape[0], rows_per_chunk):
            writer.array[start : start + rows_per_chunk] = matrix[start : start + rows_per_chunk]
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def record_provenance(dataset: str | Path, modality: str, provenance: dict[str, Any]) -> None:
    """Note in ``features.json`` where the ``modality`` matrix came from (replacing the file atomically)."""
    index = Path(dataset) / FEATURES_DIR / "features.json"
    entries = json.loads(index.read_text()) if index.is_file() else {}
    entries[modality] = provenance
    write_atomically(index, lambda file: file.write((json.dumps(entries, indent=2) + "\n").encode()))


@dataclass(frozen=True)
class SourceFeatures:
    """A source's feature matrix with one row per source item: row ``int(raw_id)`` (MMRec's layout), or row
    ``row_of[raw_id]`` (the order of an item file). ``prepare`` copies it into the dataset in item order, so
    rows stay aligned when filtering drops items.

    Args:
        path: the ``.npy`` file, or a tensor saved with ``torch.save`` (``.pt``).
        row_of: each item's row, by raw id; default ``int(raw_id)``.
    """

    path: Path
    row_of: Mapping[str, int] | None = None

    def rows(self, raw_ids: np.ndarray) -> np.ndarray:
        if self.row_of is None:
            index = raw_ids.astype(np.int64)
        else:
            index = np.fromiter((self.row_of[raw] for raw in raw_ids), dtype=np.int64, count=len(raw_ids))
        return _load_matrix(self.path)[index]


def _load_matrix(path: Path) -> np.ndarray:
    """``.pt`` through ``torch.load(weights_only=True)`` (tensors only, no code), anything else as ``.npy``
    memory-mapped (only what is used is read)."""
    if path.suffix == ".pt":
        import torch  # only here: the feature files of most sources are .npy

        tensor = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"holds a {type(tensor).__name__}, not a tensor")
        return tensor.float().numpy()
    return np.load(path, mmap_mode="r")


def source_features(
    path: str | Path, option: str, num_rows: int, rows_are: str, row_of: Mapping[str, int] | None = None
) -> SourceFeatures:
    """The feature file a source option names, checked to be a readable matrix of numbers with ``num_rows``
    rows (``rows_are`` says which, for the error)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"{option} {path}: no such file")
    try:
        matrix = _load_matrix(path)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigurationError(f"{option} {path}: not a readable .npy array or .pt tensor ({error})") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number) or matrix.shape[0] != num_rows:
        raise ConfigurationError(
            f"{option} {path}: {matrix.dtype} {list(matrix.shape)}, expected a [{num_rows}, d] matrix of numbers: "
            f"{rows_are}"
        )
    return SourceFeatures(path.resolve(), row_of)


def read_features(path: str | Path) -> np.ndarray:
    """A feature matrix as a read-only memory map, checked to be 2-D numbers (its rows are checked against the
    data where it is used, ``ItemFeatures.check_rows``)."""
    path = Path(path)
    fix = "write it with `python -m mmrec_lightning extract-features` (see docs/models.md)"
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such feature file; {fix}")
    try:
        matrix = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"{path}: not a readable .npy array ({error}); {fix}") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise ConfigurationError(
            f"{path}: expected an [items, dim] matrix of numbers, got {matrix.dtype} {list(matrix.shape)}"
        )
    return matrix
