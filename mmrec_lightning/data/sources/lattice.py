"""The LATTICE / multimodal-recommendation layout: ``train.json``, ``val.json``, ``test.json`` mapping a user
index to its item indices, with optional ``item2id.json`` / ``user2id.json`` (raw id -> index).

    python -m mmrec_lightning prepare --source lattice --path ../shared/data/amazon-baby-5core --output data/baby

The split is the folder's own. The files carry no timestamps: interactions are numbered in file order
(training items first), which keeps each user's order and puts evaluation after training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmrec_lightning.data.schema import ITEMS_SCHEMA, SPLIT_CODES
from mmrec_lightning.data.sources.base import SourceData
from mmrec_lightning.errors import ConfigurationError

SPLIT_FILES = {"train": "train.json", "valid": "val.json", "test": "test.json"}


@dataclass(frozen=True)
class LatticeOptions:
    """A folder in the LATTICE layout.

    Args:
        path: folder holding train.json, val.json and test.json (and optionally item2id.json, user2id.json).
    """

    path: str


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ConfigurationError(f"{path}: file not found (the lattice layout needs {', '.join(SPLIT_FILES.values())})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: expected a JSON object mapping ids, got {type(data).__name__}")
    return data


def _index(value: object, path: Path, what: str) -> int:
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{path}: {what} {value!r} is not an integer index") from None
    if index < 0:
        raise ConfigurationError(f"{path}: {what} {value!r} is negative")
    return index


def _raw_ids(path: Path, count: int, prefix: str) -> list[str]:
    """Index -> raw id from an ``<x>2id.json`` file when present, else the index itself."""
    if not path.is_file():
        return [str(i) for i in range(count)]
    raw = [f"{prefix}{i}" for i in range(count)]
    for raw_id, value in _load_json(path).items():
        index = _index(value, path, "index of " + repr(raw_id))
        if index >= count:
            raise ConfigurationError(f"{path}: {raw_id!r} maps to {index}, but the split files know {count}")
        raw[index] = raw_id
    return raw


def read(options: LatticeOptions) -> SourceData:
    folder = Path(options.path)
    users, items, splits = [], [], []
    for split, name in SPLIT_FILES.items():
        path = folder / name
        for user, user_items in _load_json(path).items():
            if not isinstance(user_items, list):
                raise ConfigurationError(f"{path}: user {user!r} maps to {type(user_items).__name__}, expected a list")
            u = _index(user, path, "user")
            users.extend([u] * len(user_items))
            items.extend(_index(i, path, f"item of user {user}") for i in user_items)
            splits.extend([SPLIT_CODES[split]] * len(user_items))
    users_array, items_array = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    item2id = folder / "item2id.json"
    num_items = max(int(items_array.max()) + 1, len(_load_json(item2id)) if item2id.is_file() else 0)
    num_users = int(users_array.max()) + 1
    interactions = pa.table(
        {
            "user": users_array.astype(np.int32),
            "item": items_array.astype(np.int32),
            "timestamp": np.arange(len(users_array), dtype=np.int64),
            "rating": pa.nulls(len(users_array), pa.float32()),
            "split": np.asarray(splits, dtype=np.int8),
        }
    )
    item_raw = _raw_ids(item2id, num_items, "item")
    user_raw = _raw_ids(folder / "user2id.json", num_users, "user")

    def item_batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch(
            [
                pa.array(np.arange(num_items), pa.int32()),
                pa.array(item_raw),
                pa.nulls(num_items, pa.string()),
                pa.array(np.full(num_items, -1), pa.int32()),
                pa.nulls(num_items, pa.binary()),
            ],
            schema=ITEMS_SCHEMA,
        )

    return SourceData(
        interactions=interactions,
        items=item_batches(),
        users=pa.table({"user": np.arange(num_users, dtype=np.int32), "raw_id": user_raw}),
        metadata={
            "source": "lattice",
            "source_options": {"path": str(folder)},
            "split": {"method": "source: train.json / val.json / test.json"},
            "categories": [],
        },
    )
