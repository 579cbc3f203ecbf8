"""Row matrices on disk (float32 ``.npy``, row i = item or user i), written so that a killed job never leaves
one that looks complete, and assembled from pieces computed on several processes."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmrec_lightning.atomic import replace_durably, temporary_beside

if TYPE_CHECKING:  # only annotations: importing Lightning would make `prepare` start ten times slower
    import lightning as L


class MatrixWriter:
    """Fills a ``[rows, dim]`` float32 matrix in place, chunk by chunk, then moves it under its real name in
    one step, so a killed job never leaves a file that looks complete.

    Args:
        path: the ``.npy`` file to write.
        rows: number of rows.
        dim: number of columns.
    """

    def __init__(self, path: Path, rows: int, dim: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.staging = temporary_beside(path)
        self.array = np.lib.format.open_memmap(self.staging, mode="w+", dtype=np.float32, shape=(rows, dim))

    def commit(self) -> Path:
        self.array.flush()
        del self.array
        replace_durably(self.staging, self.path)
        return self.path

    def abort(self) -> None:
        self.staging.unlink(missing_ok=True)


class RowParts:
    """Rows of several matrices computed in pieces — under DDP each process has its own share — streamed to
    one part file per (matrix, process) as they come, so memory stays one batch; afterwards one process
    assembles every matrix in row order.

    Args:
        folder: where the part files go (emptied by :meth:`assemble`).
        rank: this process's rank.
        names: the matrices.
    """

    def __init__(self, folder: Path, rank: int, names: Sequence[str]) -> None:
        self.folder, self.rank = folder, rank
        folder.mkdir(parents=True, exist_ok=True)
        self._files = {name: open(self._path(name, rank), "wb") for name in ["rows", *names]}  # noqa: SIM115

    def _path(self, name: str, rank: int) -> Path:
        return self.folder / f"{name}.rank{rank}.bin"

    def write(self, rows: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Append ``values[name][j]`` as row ``rows[j]`` of each matrix."""
        self._files["rows"].write(np.asarray(rows, dtype=np.int64).tobytes())
        for name, array in values.items():
            self._files[name].write(np.asarray(array, dtype=np.float32).tobytes())

    def close(self) -> None:
        for file in self._files.values():
            file.close()

    def assemble(self, world_size: int, num_rows: int, targets: dict[str, Path]) -> None:
        """Write each matrix ``name`` to ``targets[name]``, checking that the parts hold every row exactly
        once, and remove the parts."""
        rows = [np.fromfile(self._path("rows", rank), dtype=np.int64) for rank in range(world_size)]
        seen = np.bincount(np.concatenate(rows), minlength=num_rows)
        if len(seen) != num_rows or not (seen == 1).all():
            raise RuntimeError(f"{self.folder}: the parts do not hold each of {num_rows} rows exactly once")
        for name, target in targets.items():
            paths = [self._path(name, rank) for rank in range(world_size)]
            dim = sum(path.stat().st_size for path in paths) // 4 // num_rows
            writer = MatrixWriter(target, num_rows, dim)
            try:
                for part_rows, path in zip(rows, paths, strict=True):
                    if len(part_rows):
                        writer.array[part_rows] = np.memmap(path, np.float32, "r", shape=(len(part_rows), dim))
                writer.commit()
            except BaseException:
                writer.abort()
                raise
        shutil.rmtree(self.folder)


def start_parts(trainer: L.Trainer, staging: Path, matrices: Mapping[str, Sequence[str]]) -> dict[str, RowParts]:
    """This rank's :class:`RowParts` in ``staging / key`` for each ``key: matrix names``, once rank 0 has removed
    what an earlier, killed run left there."""
    if trainer.is_global_zero:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.strategy.barrier()
    return {key: RowParts(staging / key, trainer.global_rank, names) for key, names in matrices.items()}


def finish_parts(trainer: L.Trainer, parts: Iterable[RowParts], assemble: Callable[[], None]) -> None:
    """Close this rank's parts; once every rank has, rank 0 runs ``assemble``, and every rank waits for it."""
    for part in parts:
        part.close()
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        assemble()
    trainer.strategy.barrier()
