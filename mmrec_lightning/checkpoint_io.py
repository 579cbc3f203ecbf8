"""Checkpoints written atomically: a run killed while saving leaves the previous checkpoint intact.

Lightning's ``TorchCheckpointIO`` serialises the checkpoint in memory, writes it to a temporary file in the
system temp folder and moves it into place. When that folder is on another file system than the checkpoints
(a node-local ``/tmp`` and a shared scratch folder, as on most clusters) the move is a copy into the real name:
a kill during the copy leaves a truncated checkpoint under that name, and nothing is flushed to disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import Strategy

from mmrec_lightning.atomic import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves a local checkpoint to a hidden temporary file beside it, flushes it to disk and renames it over
    the old one, so that the file under the checkpoint's name is always a complete checkpoint. Remote (fsspec
    URL) checkpoints are saved by Lightning's ``TorchCheckpointIO``. A kill during a save can leave the
    temporary file (``.<name>.<random>.tmp``): Lightning never takes it for a checkpoint, and it can be deleted.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        fs, local_path = url_to_fs(str(path))
        if not isinstance(fs, LocalFileSystem) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)  # it refuses storage_options with a message
            return
        write_atomically(Path(local_path), lambda file: torch.save(checkpoint, file))


def use_atomic_checkpoints(strategy: Strategy) -> None:
    """Make ``strategy`` save checkpoints with :class:`AtomicCheckpointIO` where it would use Lightning's default
    ``TorchCheckpointIO`` (also when a config names that one: the files are the same). Any other ``CheckpointIO``
    (from ``trainer.plugins``, a strategy's own, ``AsyncCheckpointIO``) is left alone."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
