"""Items added to a served export while it runs, kept in one Parquet file beside the export.

Every addition replaces the file in one step (:func:`mmrec_lightning.atomic.write_atomically`) under an
exclusive lock, so several server processes add items without losing each other's, and a crash leaves the
file as it was before or after an addition, never between. Each process re-reads the file when it has
changed (a ``stat`` per query batch), so an item added through one process is found by all of them, and by
the server after a restart. The whole file is rewritten per addition: meant for the thousands of items
added between two exports, not for millions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrec_lightning.atomic import write_atomically

try:  # POSIX; elsewhere one server process at a time may add items
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

ADDITIONS = "added_items.parquet"


@dataclass
class NewItem:
    """An item to add: its id, text, vector, and its per-item outputs (``modality_weights``: one value per
    column of the export's ``item_outputs``)."""

    id: str
    text: str | None
    vector: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


class AddedItems:
    """The items added to an export, in the order they were added: ``ids``, ``texts``, ``vectors``
    ``[n, dim]`` and ``outputs`` (name -> ``[n, columns]``).

    Args:
        path: the Parquet file (default ``added_items.parquet`` in the export folder).
        dim: the export's vector dimension.
        outputs: the export's per-item outputs and their columns (``{"modality_weights": ["image", ...]}``).
    """

    def __init__(self, path: Path, dim: int, outputs: dict[str, list[str]]) -> None:
        self.path, self.dim, self.output_columns = Path(path), dim, dict(outputs)
        self._stamp: tuple[int, int, int] | None = None
        self._use(self._table([], [], [], np.zeros((0, dim)), {n: np.zeros((0, len(c))) for n, c in outputs.items()}))
        self.refresh()

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def _table(ids: list, texts: list, added_at: list, vectors: np.ndarray, outputs: dict[str, np.ndarray]) -> pa.Table:
        def fixed(values: np.ndarray) -> pa.Array:
            flat = pa.array(np.asarray(values, np.float32).ravel(), pa.float32())
            return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])

        columns = {
            "raw_id": pa.array(ids, pa.string()),
            "text": pa.array(texts, pa.string()),
            "added_at": pa.array(added_at, pa.timestamp("us", tz="UTC")),
            "vectors": fixed(vectors),
        }
        return pa.table(columns | {name: fixed(values) for name, values in outputs.items()})

    def _use(self, table: pa.Table) -> None:
        def matrix(name: str) -> np.ndarray:
            column = table.column(name).combine_chunks()
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return np.ascontiguousarray(flat, dtype=np.float32).reshape(table.num_rows, column.type.list_size)

        self.table = table
        self.ids: list[str] = table.column("raw_id").to_pylist()
        self.rows = {raw: row for row, raw in enumerate(self.ids)}
        self.texts: list[str | None] = table.column("text").to_pylist()
        self.vectors = matrix("vectors")
        self.outputs = {name: matrix(name) for name in self.output_columns}

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size  # a replacement is a new inode

    def refresh(self) -> bool:
        """Re-read the file if another process (or this one) replaced it; whether anything changed."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        if stamp is not None:
            self._use(pq.read_table(self.path))
        self._stamp = stamp
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive access across processes, through a hidden lock file beside the additions."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
            yield

    def add(self, items: Sequence[NewItem], taken: Callable[[str], bool]) -> list[bool]:
        """Add the ``items`` whose id is neither ``taken`` (by the catalogue) nor added before, in one atomic
        replacement of the file; for each item, whether it was added."""
        with self._locked():
            self.refresh()  # what other processes added since this one last looked
            known, accepted = set(self.ids), []
            for item in items:
                accepted.append(item.id not in known and not taken(item.id))
                known.add(item.id)
            new = [item for item, ok in zip(items, accepted, strict=True) if ok]
            if new:
                now = datetime.now(timezone.utc)
                rows = self._table(
                    [item.id for item in new],
                    [item.text for item in new],
                    [now] * len(new),
                    np.stack([item.vector for item in new]),
                    {name: np.stack([item.outputs[name] for item in new]) for name in self.output_columns},
                )
                table = pa.concat_tables([self.table, rows])
                write_atomically(self.path, lambda file: pq.write_table(table, file))
                self._use(table)
                self._stamp = self._current_stamp()
        return accepted
