"""Files replaced in one step: a reader, or a run killed while writing, sees the old content or all of the
new, never part of it."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` with ``write(file)`` so that ``path`` is either its old content or all of the new one.

    The content goes to a temporary file in the same folder (a rename across file systems would be a copy),
    which is flushed to disk and then renamed over ``path``; on any error, the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_beside(path)
    try:
        with open(temporary, "xb") as file:  # created with the usual permissions, unlike tempfile's 0600
            write(file)
        replace_durably(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def temporary_beside(path: Path) -> Path:
    """A hidden name in ``path``'s folder (a rename across file systems would be a copy) that no reader of
    ``path`` mistakes for it."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def replace_durably(temporary: Path, path: Path) -> None:
    """Flush the finished ``temporary`` to disk, rename it over ``path`` and flush the rename."""
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform and file system allow it."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):  # some network file systems refuse to fsync a folder; the rename stands
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def replace_folder(staging: Path, path: Path) -> None:
    """Put the finished folder ``staging`` (beside ``path``) in place of ``path``: a reader finds the old folder or
    all of the new one, never a mix of the two (between the two renames, for an instant, neither)."""
    previous = temporary_beside(path)
    if path.exists():
        os.replace(path, previous)
    os.replace(staging, path)
    sync_directory(path.parent)
    shutil.rmtree(previous, ignore_errors=True)
