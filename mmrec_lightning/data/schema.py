"""The prepared-dataset format: one folder, written once by ``prepare``, read lazily by the DataModule.

Layout (schema version 1)::

    metadata.json       schema version, source, counts, how it was split, category names
    interactions.arrow  user, item, timestamp, rating, split — sorted by (split, user, timestamp)
    items.arrow         item, raw_id, text, category, image (encoded JPEG/PNG bytes)
    users.arrow         user, raw_id
    features/           optional item feature matrices (see ``mmrec_lightning.features.files``)

The tables are uncompressed Arrow IPC files, opened with a memory map: a dataset larger than RAM is
read page by page as items are touched, never loaded whole.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from PIL import Image

from mmrec_lightning.errors import ConfigurationError, reason
from mmrec_lightning.features.files import SourceFeatures, feature_file, record_provenance, save_features

SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}

INTERACTIONS_SCHEMA = pa.schema(
    [
        ("user", pa.int32()),
        ("item", pa.int32()),
        ("timestamp", pa.int64()),
        ("rating", pa.float32()),
        ("split", pa.int8()),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        ("item", pa.int32()),
        ("raw_id", pa.string()),
        ("text", pa.string()),
        ("category", pa.int32()),
        ("image", pa.binary()),
    ]
)
USERS_SCHEMA = pa.schema([("user", pa.int32()), ("raw_id", pa.string())])

log = logging.getLogger(__name__)

FILES = ("metadata.json", "interactions.arrow", "items.arrow", "users.arrow")


class PreparedDatasetError(ConfigurationError):
    """A prepared dataset is missing, incomplete or inconsistent."""


def _require_columns(table: pa.Table | pa.RecordBatch, schema: pa.Schema, what: str) -> None:
    for name in schema.names:
        if name not in table.schema.names:
            raise PreparedDatasetError(f"{what}: missing column {name!r} (expected {schema.names})")


def image_problem(data: bytes) -> str | None:
    """None if ``data`` decodes as an image, wholly, else the reason it does not: a full decode, not PIL's
    ``verify``, which passes a truncated JPEG that training would then fail on."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return None
    except Exception as error:  # PIL raises many types for bad data; all mean "unusable"
        return reason(error)


def _checked_items(batches: Iterable[pa.RecordBatch | pa.Table], report: dict[str, int]) -> Iterator[pa.RecordBatch]:
    """Validate the item stream as it is written: ids in order, no duplicate raw id, images that decode.
    An unreadable image is dropped (the item keeps its text) with a warning naming it, and counted."""
    seen: set[str] = set()
    expected = 0
    for batch in batches:
        _require_columns(batch, ITEMS_SCHEMA, "items")
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        batch = batch.select(ITEMS_SCHEMA.names).cast(ITEMS_SCHEMA)
        ids = batch.column("item").to_numpy(zero_copy_only=False)
        if not np.array_equal(ids, np.arange(expected, expected + len(ids))):
            raise PreparedDatasetError(f"items: column 'item' must count 0, 1, 2, … in order (row {expected})")
        raw_ids = batch.column("raw_id").to_pylist()
        for offset, raw in enumerate(raw_ids):
            if raw in seen:
                raise PreparedDatasetError(
                    f"items row {expected + offset}: raw_id {raw!r} appears twice; de-duplicate the item table"
                )
            seen.add(raw)
        images = batch.column("image").to_pylist()
        for offset, data in enumerate(images):
            reason = image_problem(data) if data is not None else None
            if reason is not None:
                log.warning(
                    "item %d (raw id %r): image unreadable (%s); kept without an image",
                    expected + offset,
                    raw_ids[offset],
                    reason,
                )
                images[offset] = None
                report["unreadable_images"] += 1
        expected += len(ids)
        yield from batch.set_column(
            ITEMS_SCHEMA.names.index("image"), "image", pa.array(images, pa.binary())
        ).to_batches()


def _check_interactions(interactions: pa.Table, num_users: int, num_items: int) -> None:
    """Every interaction names a known user and item and a valid split; errors name the input row."""
    for column, bound in (("user", num_users), ("item", num_items)):
        values = interactions.column(column).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero((values < 0) | (values >= bound))
        if bad.size:
            raise PreparedDatasetError(
                f"interactions row {bad[0]}: {column} {values[bad[0]]} is outside 0..{bound - 1} "
                f"({bad.size} such rows); every {column} must be in the {column} table"
            )
    split = interactions.column("split").to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((split < 0) | (split >= len(SPLITS)))
    if bad.size:
        raise PreparedDatasetError(f"interactions row {bad[0]}: split {split[bad[0]]} is not 0 (train), 1 or 2")


def _write_table(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch | pa.Table]) -> dict[str, int]:
    """Stream batches into an Arrow IPC file; returns the row count and each column's non-null count."""
    counts = {"rows": 0, **{name: 0 for name in schema.names}}
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write(batch)
            counts["rows"] += batch.num_rows
            for name in schema.names:
                counts[name] += batch.num_rows - batch.column(name).null_count
    return counts


def _open_table(path: Path) -> pa.Table:
    return ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A zero-copy numpy view of a numeric column (one copy only if it is split in chunks)."""
    column = table.column(name)
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return array.to_numpy(zero_copy_only=False)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_prepared(
    output: str | Path,
    *,
    interactions: pa.Table,
    items: Iterable[pa.RecordBatch | pa.Table],
    users: pa.Table,
    metadata: dict[str, Any],
    features: Mapping[str, SourceFeatures] | None = None,
    overwrite: bool = False,
) -> Path:
    """Validate and write a prepared dataset atomically.

    Everything goes to a temporary sibling folder that is renamed into place only once complete, so a
    failed or killed ``prepare`` never leaves a dataset that looks complete. ``items`` may be a generator
    of record batches: images are streamed, never all in memory. ``features`` (modality -> the source's
    feature matrix) are copied into ``features/`` in item order.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise ConfigurationError(f"{output} already exists; pass --overwrite to replace it")
    _require_columns(interactions, INTERACTIONS_SCHEMA, "interactions")
    _require_columns(users, USERS_SCHEMA, "users")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    # mkdtemp makes the folder private (0700); a dataset is shared (a cluster's group) as the umask says
    staging.chmod(0o777 & ~_umask())
    try:
        dropped = {"unreadable_images": 0}
        item_counts = _write_table(staging / "items.arrow", ITEMS_SCHEMA, _checked_items(items, dropped))
        users = users.select(USERS_SCHEMA.names).cast(USERS_SCHEMA)
        interactions = interactions.select(INTERACTIONS_SCHEMA.names).cast(INTERACTIONS_SCHEMA)
        _check_interactions(interactions, users.num_rows, item_counts["rows"])
        order = np.lexsort(
            (
                interactions.column("timestamp").to_numpy(),
                interactions.column("user").to_numpy(),
                interactions.column("split").to_numpy(),
            )
        )
        interactions = interactions.take(pa.array(order))
        _write_table(staging / "interactions.arrow", INTERACTIONS_SCHEMA, interactions.to_batches())
        _write_table(staging / "users.arrow", USERS_SCHEMA, users.to_batches())
        split = interactions.column("split").to_numpy()
        train_items = np.unique(interactions.column("item").to_numpy()[split == SPLIT_CODES["train"]])
        counts = {
            "users": users.num_rows,
            "items": item_counts["rows"],
            "interactions": {name: int((split == code).sum()) for name, code in SPLIT_CODES.items()},
            "items_with_image": item_counts["image"],
            "items_with_text": item_counts["text"],
            "items_without_training_interactions": item_counts["rows"] - len(train_items),
        }
        copied = {}
        if features:
            raw_ids = np.asarray(_open_table(staging / "items.arrow").column("raw_id").to_pylist())
            for modality, source in features.items():
                matrix = source.rows(raw_ids)
                save_features(feature_file(staging, modality), matrix)
                record_provenance(staging, modality, {"source_file": str(source.path)})
                copied[modality] = {
                    "source_file": str(source.path),
                    "shape": list(matrix.shape),
                    "items_with_features": int(np.any(matrix != 0, axis=1).sum()),  # a zero row: no content
                }
        dropped = {**metadata.pop("dropped", {}), **dropped}
        metadata = {"schema_version": SCHEMA_VERSION, **metadata, "counts": counts, "dropped": dropped}
        if copied:
            metadata["features"] = copied
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        PreparedDataset(staging).validate()
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


@dataclass(frozen=True)
class SplitIndex:
    """One split's interactions grouped by user (CSR): ``items[indptr[u]:indptr[u + 1]]`` are user u's
    items in time order, ``times`` their timestamps, ``ratings`` their ratings (NaN where missing), or
    None when the split has no rating at all."""

    indptr: np.ndarray
    items: np.ndarray
    times: np.ndarray
    ratings: np.ndarray | None = None

    def row(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def merged(self, other: SplitIndex) -> SplitIndex:
        """This split's and ``other``'s interactions together, each user's in time order (this split's first
        among equal times)."""
        num_users = len(self.indptr) - 1
        users = np.concatenate([np.repeat(np.arange(num_users), split.lengths()) for split in (self, other)])
        times = np.concatenate([self.times, other.times])
        order = np.lexsort((np.arange(len(users)), times, users))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))])
        both = self.ratings is not None and other.ratings is not None
        ratings = np.concatenate([self.ratings, other.ratings])[order] if both else None
        return SplitIndex(indptr, np.concatenate([self.items, other.items])[order], times[order], ratings)


class PreparedDataset:
    """Read access to a prepared dataset. Tables are memory-mapped; nothing large is loaded eagerly.

    Args:
        path: the folder written by ``prepare``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        missing = [name for name in FILES if not (self.path / name).is_file()]
        if missing:
            raise PreparedDatasetError(
                f"{self.path} is not a prepared dataset (missing {', '.join(missing)}); "
                "build it with `python -m mmrec_lightning prepare --source ... --output "
                f"{self.path}`"
            )
        self.metadata: dict[str, Any] = json.loads((self.path / "metadata.json").read_text())
        version = self.metadata.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PreparedDatasetError(
                f"{self.path}/metadata.json has schema_version {version!r}, this version of "
                f"mmrec_lightning reads {SCHEMA_VERSION}; prepare the dataset again"
            )

    @property
    def num_users(self) -> int:
        return int(self.metadata["counts"]["users"])

    @property
    def num_items(self) -> int:
        return int(self.metadata["counts"]["items"])

    @property
    def category_names(self) -> list[str]:
        return list(self.metadata.get("categories", []))

    @property
    def num_categories(self) -> int:
        return len(self.category_names)

    @cached_property
    def interactions(self) -> pa.Table:
        return _open_table(self.path / "interactions.arrow")

    @cached_property
    def items(self) -> pa.Table:
        return _open_table(self.path / "items.arrow")

    @cached_property
    def users(self) -> pa.Table:
        return _open_table(self.path / "users.arrow")

    def split(self, name: str) -> SplitIndex:
        """The CSR index of one split; the interactions file is sorted so that this is a pair of views."""
        if name not in SPLIT_CODES:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self._splits[name]

    @cached_property
    def _splits(self) -> dict[str, SplitIndex]:
        split = _column(self.interactions, "split")
        users = _column(self.interactions, "user")
        items = _column(self.interactions, "item")
        times = _column(self.interactions, "timestamp")
        rated = self.interactions.column("rating")
        # a column of nulls (implicit feedback) is not materialised as an array of NaN
        ratings = _column(self.interactions, "rating") if rated.null_count < len(rated) else None
        bounds = np.searchsorted(split, np.arange(len(SPLITS) + 1), side="left")
        index = {}
        for code, name in enumerate(SPLITS):
            lo, hi = bounds[code], bounds[code + 1]
            indptr = np.searchsorted(users[lo:hi], np.arange(self.num_users + 1), side="left")
            split_ratings = ratings[lo:hi] if ratings is not None and not np.isnan(ratings[lo:hi]).all() else None
            index[name] = SplitIndex(indptr.astype(np.int64), items[lo:hi], times[lo:hi], split_ratings)
        return index

    def item_categories(self) -> np.ndarray:
        return _column(self.items, "category")

    def validate(self) -> None:
        """Check the cross-file invariants; raise :class:`PreparedDatasetError` naming the first problem."""
        where = self.path
        n_users, n_items = self.num_users, self.num_items
        item_ids = _column(self.items, "item")
        if not np.array_equal(item_ids, np.arange(n_items)):
            raise PreparedDatasetError(f"{where}/items.arrow: column 'item' must be 0..{n_items - 1} in order")
        if not np.array_equal(_column(self.users, "user"), np.arange(n_users)):
            raise PreparedDatasetError(f"{where}/users.arrow: column 'user' must be 0..{n_users - 1} in order")
        for column, bound in (("user", n_users), ("item", n_items)):
            values = _column(self.interactions, column)
            bad = np.flatnonzero((values < 0) | (values >= bound))
            if bad.size:
                raise PreparedDatasetError(
                    f"{where}/interactions.arrow row {bad[0]}: {column} {values[bad[0]]} is outside 0..{bound - 1}"
                )
        split = _column(self.interactions, "split")
        if split.size and (split.min() < 0 or split.max() >= len(SPLITS)):
            raise PreparedDatasetError(f"{where}/interactions.arrow: split codes must be 0 (train), 1, 2")
        if np.any(np.diff(split.astype(np.int64)) < 0):
            raise PreparedDatasetError(f"{where}/interactions.arrow is not sorted by split; prepare it again")
        categories = self.item_categories()
        if categories.size and categories.max() >= self.num_categories:
            raise PreparedDatasetError(
                f"{where}/items.arrow: category {categories.max()} has no name in metadata.json 'categories'"
            )
