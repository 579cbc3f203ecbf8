"""An export as the HTTP server reads it: opened read-only and memory-mapped, searched a batch of queries at a
time, with the items added since the export (:mod:`mmrec_lightning.serve.additions`) searched beside it.

Rows ``0 … items-1`` are the exported catalogue; row ``items + j`` is the j-th added item. The export's files
are never written: added items live in their own small exact indexes, whose results are merged with the
export's by score.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import pyarrow.parquet as pq

from mmrec_lightning.data.schema import SPLITS, PreparedDataset
from mmrec_lightning.export.index import normalized, search
from mmrec_lightning.export.manifest import item_output_file, read_manifest
from mmrec_lightning.serve.additions import ADDITIONS, AddedItems, NewItem

READ_ONLY_MAP = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY


class Neighbour(NamedTuple):
    row: int
    score: float


def named(columns: list[str], values: np.ndarray) -> dict[str, float | None]:
    """One row of a per-item output by column, as JSON has it (None where unknown)."""
    return {column: None if np.isnan(v) else float(v) for column, v in zip(columns, values, strict=True)}


def open_index(path: Path):
    """A FAISS index memory-mapped read-only: the pages are shared by every process serving the export."""
    return faiss.read_index(str(path), READ_ONLY_MAP)


class ServedExport:
    """The queries the server answers, on row numbers (the request layer maps raw ids to rows and back).

    Args:
        path: the export folder.
        additions: the file of added items; default ``added_items.parquet`` in the export folder.
    """

    def __init__(self, path: str | Path, additions: str | Path | None = None) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        items = pq.read_table(self.path / "items.parquet", columns=["raw_id", "text"])
        self.item_ids: list[str] = items.column("raw_id").to_pylist()
        self.item_texts: list[str | None] = items.column("text").to_pylist()
        self.user_ids: list[str] = pq.read_table(self.path / "users.parquet", columns=["raw_id"]).column(0).to_pylist()
        self._item_rows = {raw: row for row, raw in enumerate(self.item_ids)}
        self._user_rows = {raw: row for row, raw in enumerate(self.user_ids)}
        self.item_vectors = np.load(self.path / "item_vectors.npy", mmap_mode="r")
        self.user_vectors = np.load(self.path / "user_vectors.npy", mmap_mode="r")
        self.output_columns: dict[str, list[str]] = self.manifest.get("item_outputs") or {}
        self.item_outputs = {
            name: np.load(self.path / item_output_file(name), mmap_mode="r") for name in self.output_columns
        }
        self.recommend_index = open_index(self.path / "recommend.faiss")
        self.similar_index = open_index(self.path / "similar.faiss")
        self.added = AddedItems(Path(additions or self.path / ADDITIONS), self.dim, self.output_columns)
        self._added_indexes = self._index_added()

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def num_items(self) -> int:
        """Exported items; the added ones come after them."""
        return len(self.item_ids)

    @cached_property
    def _dataset(self) -> PreparedDataset:
        return PreparedDataset(self.manifest["dataset"])

    # --- ids and rows --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Pick up items added by other processes since the last call."""
        if self.added.refresh():
            self._added_indexes = self._index_added()

    def user_row(self, raw_id: str) -> int | None:
        return self._user_rows.get(raw_id)

    def item_row(self, raw_id: str) -> int | None:
        """The row of a catalogue or added item, None for an unknown one."""
        row = self._item_rows.get(raw_id)
        if row is None and raw_id in self.added.rows:
            row = self.num_items + self.added.rows[raw_id]
        return row

    def in_catalogue(self, raw_id: str) -> bool:
        return raw_id in self._item_rows

    def item(self, row: int) -> tuple[str, str | None]:
        """``(raw id, text)`` of a row."""
        if row < self.num_items:
            return self.item_ids[row], self.item_texts[row]
        return self.added.ids[row - self.num_items], self.added.texts[row - self.num_items]

    def item_vector(self, row: int) -> np.ndarray:
        if row < self.num_items:
            return np.asarray(self.item_vectors[row], dtype=np.float32)
        return self.added.vectors[row - self.num_items]

    def outputs_of(self, row: int) -> dict[str, dict[str, float]]:
        """The per-item outputs of a row by name and column (``{"modality_weights": {"image": 0.6, ...}}``)."""
        values = {
            name: self.item_outputs[name][row]
            if row < self.num_items
            else self.added.outputs[name][row - self.num_items]
            for name in self.output_columns
        }
        return {name: named(columns, values[name]) for name, columns in self.output_columns.items()}

    def seen(self, user: int) -> np.ndarray:
        """The items a user interacted with in any split of the dataset the export was made from."""
        return np.concatenate([self._dataset.split(split).row(user) for split in SPLITS])

    # --- batched searches ----------------------------------------------------------------------------

    def _index_added(self) -> tuple[Any, Any]:
        """Exact inner-product and cosine indexes over the added items (few: a flat scan is fast)."""
        by_score, by_cosine = faiss.IndexFlatIP(self.dim), faiss.IndexFlatIP(self.dim)
        if len(self.added):
            by_score.add(self.added.vectors)
            by_cosine.add(normalized(self.added.vectors))
        return by_score, by_cosine

    def _search(
        self, index, added_index, queries: np.ndarray, ks: Sequence[int], skip: Sequence[set[int]]
    ) -> list[list[Neighbour]]:
        """One search of the export's index and one of the added items' for the whole batch, merged per query
        by score, the rows in ``skip`` left out."""
        fetch = max(k + len(s) for k, s in zip(ks, skip, strict=True))
        scores, rows = search(index, queries, fetch)
        if added_index.ntotal:
            added_scores, added_rows = search(added_index, queries, fetch)
            scores = np.concatenate([scores, added_scores], axis=1)
            rows = np.concatenate([rows, np.where(added_rows >= 0, added_rows + self.num_items, -1)], axis=1)
        answers = []
        for k, excluded, query_scores, query_rows in zip(ks, skip, scores, rows, strict=True):
            order = np.argsort(-query_scores, kind="stable")
            kept = [
                Neighbour(int(query_rows[i]), float(query_scores[i]))
                for i in order
                if query_rows[i] >= 0 and int(query_rows[i]) not in excluded
            ]
            answers.append(kept[:k])
        return answers

    def recommend(self, users: Sequence[int], ks: Sequence[int], exclude_seen: Sequence[bool]):
        """For each user, the ``k`` items with the highest score (inner product with the user's vector),
        without the items the user interacted with where ``exclude_seen``."""
        queries = np.asarray(self.user_vectors[np.asarray(users)], dtype=np.float32)
        skip = [
            set(self.seen(u).tolist()) if exclude else set() for u, exclude in zip(users, exclude_seen, strict=True)
        ]
        return self._search(self.recommend_index, self._added_indexes[0], queries, ks, skip)

    def similar(self, vectors: np.ndarray, ks: Sequence[int], exclude: Sequence[int | None]):
        """For each vector, the ``k`` items nearest by cosine similarity, without the row ``exclude`` (the
        item asked about)."""
        skip = [set() if row is None else {row} for row in exclude]
        return self._search(self.similar_index, self._added_indexes[1], normalized(vectors), ks, skip)

    def top_users(self, vectors: np.ndarray, ks: Sequence[int]) -> list[list[Neighbour]]:
        """For each item vector, the ``k`` users who score it highest (a flat scan of the mapped user vectors)."""
        k = min(max(ks), len(self.user_ids))
        scores, rows = faiss.knn(
            np.ascontiguousarray(vectors, np.float32), self.user_vectors, k, metric=faiss.METRIC_INNER_PRODUCT
        )
        return [
            [Neighbour(int(r), float(s)) for s, r in zip(query_scores[:q], query_rows[:q], strict=True) if r >= 0]
            for q, query_scores, query_rows in zip(ks, scores, rows, strict=True)
        ]

    def add(self, items: Sequence[NewItem]) -> list[bool]:
        """Add items to the live catalogue (persisted beside the export); for each, whether it was added (False:
        its id is taken)."""
        accepted = self.added.add(items, taken=self.in_catalogue)
        self._added_indexes = self._index_added()
        return accepted
