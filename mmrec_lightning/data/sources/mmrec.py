"""MMRec's layout (github.com/enoche/MMRec): ``<name>.inter`` with its split in ``x_label``, and optionally the
precomputed item features ``image_feat.npy`` and ``text_feat.npy``.

    python -m mmrec_lightning prepare --source mmrec --path ../shared/data/mmrec/baby --output data/baby-mmrec

``<name>.inter`` is tab-separated with the header ``userID itemID rating timestamp x_label`` (x_label 0, 1, 2 =
train, valid, test; rating, timestamp and x_label may be absent). Ids are MMRec's own indices and stay so
(ids sort numerically). The items are 0..max(itemID), as in MMRec, without text or images.

Each feature file is checked to hold one row per item (row ``int(raw_id)`` belongs to an item) and copied
into the prepared dataset's ``features/`` folder in its item order, so rows stay aligned when filtering
drops items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.data.sources.pipeline import CommonOptions, RawSource, build
from mmrec_lightning.data.sources.readers import (
    FileRows,
    read_delimited,
    require_folder,
    require_ids,
    to_numbers,
    to_seconds,
)
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.files import SourceFeatures, source_features

COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
X_LABELS = {0: "train", 1: "valid", 2: "test"}
FEATURE_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}


@dataclass(frozen=True)
class MMRecOptions(CommonOptions):
    """A dataset folder in MMRec's layout.

    Args:
        path: the folder holding ``<name>.inter`` and optionally ``image_feat.npy`` and ``text_feat.npy``.
        name: the dataset name (reads ``<name>.inter``); default: the folder's only ``.inter`` file.
        image_features: the image feature matrix (``.npy``, or ``.pt`` saved with ``torch.save``), row i for
            itemID i, wherever it is (MMRec's own layout keeps it a folder above the ``.inter``); default:
            ``image_feat.npy`` beside the ``.inter`` file, if there is one.
        text_features: the text feature matrix, as ``image_features``; default ``text_feat.npy`` beside it.
    """

    path: str
    name: str | None = None
    image_features: str | None = None
    text_features: str | None = None


def _inter_file(folder: Path, name: str | None) -> Path:
    if name is not None:
        path = folder / f"{name}.inter"
        if not path.is_file():
            raise ConfigurationError(f"{path}: file not found (--name {name} reads <name>.inter)")
        return path
    found = sorted(folder.glob("*.inter"))
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise ConfigurationError(f"{folder}: expected one .inter file, found {listed}; choose one with --name")
    return found[0]


def _indices(column: pd.Series, name: str, at: FileRows) -> np.ndarray:
    """MMRec's ids: non-negative integers; anything else is an error naming its line."""
    values = to_numbers(require_ids(column, name, at), name, at)
    bad = np.flatnonzero((values < 0) | (values != np.floor(values)))
    if bad.size:
        raise ConfigurationError(f"{at(bad[0])}: {name} {column.iloc[bad[0]]!r} is not a non-negative integer")
    return values.astype(np.int64)


def _features(options: MMRecOptions, folder: Path, num_items: int, inter: Path) -> dict[str, SourceFeatures]:
    """The feature files named by ``--image_features`` / ``--text_features``, else those beside the ``.inter``
    file, each checked to hold one row per item (a ``.npy`` is read as a memory map: only its header)."""
    features = {}
    for modality, name in FEATURE_FILES.items():
        named = getattr(options, f"{modality}_features")
        path = Path(named) if named is not None else folder / name
        if named is None and not path.is_file():
            continue
        rows_are = f"one row per item of {inter.name} (itemID 0..{num_items - 1})"
        features[modality] = source_features(path, f"--{modality}_features", num_items, rows_are)
    return features


def read(options: MMRecOptions) -> SourceData:
    folder = require_folder(options.path, "--path")
    path = _inter_file(folder, options.name)
    frame = read_delimited(path, "\t", COLUMNS[:2], optional=COLUMNS[2:])
    at = FileRows(path, 2)
    users, items = _indices(frame["userID"], "userID", at), _indices(frame["itemID"], "itemID", at)
    interactions = pd.DataFrame({"user": users.astype(str), "item": items.astype(str)})
    if "rating" in frame:
        interactions["rating"] = to_numbers(frame["rating"], "rating", at)
    if "timestamp" in frame:
        interactions["timestamp"] = to_seconds(frame["timestamp"], "timestamp", at)
    if "x_label" in frame:
        labels = pd.Series(to_numbers(frame["x_label"], "x_label", at)).map(X_LABELS)
        bad = np.flatnonzero(labels.isna().to_numpy())
        if bad.size:
            value = frame["x_label"].iloc[bad[0]]
            raise ConfigurationError(f"{at(bad[0])}: x_label {value!r} is not 0 (train), 1 (valid) or 2 (test)")
        interactions["split"] = labels.to_numpy()
    num_items = int(items.max()) + 1
    item_table = pd.DataFrame({"item": np.arange(num_items).astype(str)})
    features = _features(options, folder, num_items, path)
    data = build("mmrec", options, RawSource(interactions, item_table, str(path), str(path)))
    data.features = features
    return data
