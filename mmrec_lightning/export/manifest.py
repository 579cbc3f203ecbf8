"""The names in an export folder and its manifest, readable without torch (the HTTP server's search workers
import only this, FAISS and numpy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmrec_lightning.errors import ConfigurationError

MANIFEST = "export.json"


def item_output_file(name: str) -> str:
    """The file of a per-item output in an export (``modality_weights`` -> ``item_modality_weights.npy``)."""
    return f"item_{name}.npy"


def read_manifest(path: Path) -> dict[str, Any]:
    """``export.json`` of the export folder ``path``, or a :class:`ConfigurationError` saying how to make one."""
    if not (path / MANIFEST).is_file():
        raise ConfigurationError(
            f"{path}: no {MANIFEST}; export a model first with `python -m mmrec_lightning export "
            "--config CONFIG --ckpt_path CHECKPOINT`"
        )
    return json.loads((path / MANIFEST).read_text())


def exported_checkpoint(path: Path, manifest: dict[str, Any]) -> str:
    """The checkpoint an export was made from, or a :class:`ConfigurationError` saying it is gone."""
    checkpoint = manifest.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise ConfigurationError(f"{path}/{MANIFEST}: checkpoint {checkpoint!r} is missing; export again")
    return checkpoint
