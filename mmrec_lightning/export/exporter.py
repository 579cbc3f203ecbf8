"""The ``export`` callback: a trained model's user and item vectors and nearest-neighbour indexes, for serving."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
from lightning.pytorch.callbacks import BasePredictionWriter

from mmrec_lightning.atomic import replace_folder
from mmrec_lightning.callbacks import run_directory
from mmrec_lightning.encoders.base import FreezableEncoder
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.export.index import IndexKind, build_index, save_index
from mmrec_lightning.export.manifest import MANIFEST, item_output_file
from mmrec_lightning.features.matrices import RowParts, finish_parts, start_parts


class VectorExporter(BasePredictionWriter):
    """While ``predict`` runs (the ``export`` command turns this on), with encoders' adapters merged into their
    weights (:meth:`~mmrec_lightning.encoders.base.FreezableEncoder.merge_adapters`: the same vectors, sooner),
    streams the model's item vectors (the catalogue pass) and user vectors (the users pass) to disk, then writes,
    in ``export`` beside the checkpoint's folder (``runs/demo/checkpoints/last.ckpt`` -> ``runs/demo/export``)::

        item_vectors.npy, user_vectors.npy  float32, row i = item / user i
        item_<output>.npy                   float32, each per-item output the model declares in
                                            ``item_output_columns`` (multimodal: ``item_modality_weights.npy``,
                                            row i = item i's fusion weight per modality)
        items.parquet, users.parquet        row -> the dataset's raw id (items also with their text)
        recommend.faiss                     items by inner product with a user vector (the model's score)
        similar.faiss                       items by cosine similarity to an item vector
        export.json                         model, checkpoint, dataset, dimension, index settings, the
                                            per-item outputs' column names (``item_outputs``)

    The export is written beside the folder and then put in its place whole, so a killed export leaves the
    earlier one as it was and a reader never finds the two mixed.

    Args:
        enabled: write the export during ``predict``.
        directory: where to write; default ``export`` beside the checkpoint's folder (in the run's log
            directory without a checkpoint).
        index: ``exact``, ``approximate`` or ``auto`` (exact below ``exact_below`` items); see
            :func:`mmrec_lightning.export.index.build_index`.
        exact_below: the catalogue size from which ``auto`` builds approximate indexes.
    """

    def __init__(
        self,
        enabled: bool = False,
        directory: str | None = None,
        index: IndexKind = "auto",
        exact_below: int = 100_000,
    ) -> None:
        super().__init__(write_interval="batch")
        self.enabled, self.directory = enabled, directory
        self.index, self.exact_below = index, exact_below
        self.path: Path | None = None
        self._parts: dict[str, RowParts] = {}
        self._outputs: dict[str, list[str]] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        if self.directory:
            self.path = Path(self.directory)
        elif trainer.ckpt_path:  # beside the checkpoints' folder: runs/demo/checkpoints/last.ckpt -> runs/demo/export
            self.path = Path(trainer.ckpt_path).resolve().parent.parent / "export"
        else:
            self.path = run_directory(trainer) / "export"
        foreign = not self.path.is_dir() or any(self.path.iterdir())
        if self.path.exists() and foreign and not (self.path / MANIFEST).is_file():
            raise ConfigurationError(
                f"export.directory {self.path} is not an export (no {MANIFEST}) and the export would replace it: "
                "name a new or empty folder, or an earlier export"
            )
        for encoder in [m for m in pl_module.modules() if isinstance(m, FreezableEncoder)]:  # listed: merging edits
            encoder.merge_adapters()
        self._outputs = dict(pl_module.item_output_columns)
        matrices = {"items": ["vectors", *self._outputs], "users": ["vectors"]}
        self._parts = start_parts(trainer, self._staging, matrices)

    @property
    def _staging(self) -> Path:
        """Where the export is written before it replaces ``path`` whole: a killed export leaves an earlier one
        as it was. Named alike on every rank; a leftover of a killed run is removed first."""
        assert self.path is not None
        return self.path.with_name(f".{self.path.name}.partial")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if not self.enabled:
            return
        if "users" in prediction:
            kind, rows, values = "users", prediction["users"], {"vectors": prediction["user_vectors"]}
        else:
            outputs = {name: prediction[name] for name in self._outputs}
            kind, rows, values = "items", prediction["item_ids"], {"vectors": prediction["item_vectors"], **outputs}
        self._parts[kind].write(rows.cpu().numpy(), {name: v.float().cpu().numpy() for name, v in values.items()})

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        finish_parts(trainer, self._parts.values(), lambda: self._write(trainer, pl_module))

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.path is not None
        counts = {"items": pl_module.num_items, "users": pl_module.num_users}
        staging = self._staging
        targets = {
            "items": {"vectors": staging / "item_vectors.npy"}
            | {name: staging / item_output_file(name) for name in self._outputs},
            "users": {"vectors": staging / "user_vectors.npy"},
        }
        for kind, parts in self._parts.items():
            parts.assemble(trainer.world_size, counts[kind], targets[kind])
        dataset = pl_module.data_facts.dataset
        items = dataset.items.select(["item", "raw_id", "text"])
        pq.write_table(items, staging / "items.parquet")
        pq.write_table(dataset.users.select(["user", "raw_id"]), staging / "users.parquet")
        vectors = np.load(staging / "item_vectors.npy")
        settings = {"kind": self.index, "exact_below": self.exact_below}
        save_index(build_index(vectors, "inner_product", **settings), staging / "recommend.faiss")
        save_index(build_index(vectors, "cosine", **settings), staging / "similar.faiss")
        manifest = {
            "model": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "checkpoint": str(Path(trainer.ckpt_path).resolve()) if trainer.ckpt_path else None,
            "dataset": str(pl_module.data_facts.path.resolve()),
            "dim": int(vectors.shape[1]),
            "items": counts["items"],
            "users": counts["users"],
            "index": settings,
            "item_outputs": self._outputs,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_folder(staging, self.path)
        print(f"exported {counts['users']:,} users and {counts['items']:,} items to {self.path}")
