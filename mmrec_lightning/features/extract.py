"""``python -m mmrec_lightning extract-features``: encode the catalogue once and store the item features.

    python -m mmrec_lightning extract-features --config configs/synthetic/extract_features.yaml

The chosen image and text encoders (the same ``class_path`` blocks a training config uses: hub names, local
folders and the offline ``package:`` weights all work) encode every item of a prepared dataset with their
evaluation preprocessing, and the results go to ``<dataset>/features/image_feat.npy`` and ``text_feat.npy``
(MMRec's layout, row i = item i, zeros for an item without that content). A model then takes
``ItemFeatures`` in place of the encoder and trains at embedding speed. Runs through a Lightning ``Trainer``:
any accelerator, several devices (each encodes its own share), mixed precision, a progress bar.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only

from mmrec_lightning.data.contract import ItemPreprocessing
from mmrec_lightning.data.schema import PreparedDataset
from mmrec_lightning.datamodule import RecDataModule
from mmrec_lightning.encoders.base import ImageEncoder, TextEncoder
from mmrec_lightning.errors import ConfigurationError
from mmrec_lightning.features.files import feature_file, record_provenance
from mmrec_lightning.features.matrices import RowParts, finish_parts, start_parts

PROG = "python -m mmrec_lightning extract-features"


class FeatureExtractor(L.LightningModule):
    """Runs frozen encoders over batches of item content.

    Args:
        image_encoder: the image encoder, or none.
        text_encoder: the text encoder, or none.
    """

    def __init__(self, image_encoder: ImageEncoder | None = None, text_encoder: TextEncoder | None = None) -> None:
        super().__init__()
        if image_encoder is None and text_encoder is None:
            raise ConfigurationError(f"{PROG}: give an --image_encoder, a --text_encoder or both")
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        for encoder in (image_encoder, text_encoder):
            if encoder is not None:
                encoder.freeze()

    @property
    def encoders(self) -> dict[str, ImageEncoder | TextEncoder]:
        pairs = (("image", self.image_encoder), ("text", self.text_encoder))
        return {name: encoder for name, encoder in pairs if encoder is not None}

    def item_preprocessing(self) -> ItemPreprocessing:
        return ItemPreprocessing.of(self.image_encoder, self.text_encoder, augment_images=False)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Each modality's features of the batch's items, zero for items without that content."""
        out = {"item_ids": batch["item_ids"]}
        if self.image_encoder is not None:
            out["image"] = self.image_encoder(batch["image"]).float() * batch["image_mask"].unsqueeze(1)
        if self.text_encoder is not None:
            features = self.text_encoder(batch["input_ids"], batch["attention_mask"]).float()
            out["text"] = features * batch["text_mask"].unsqueeze(1)
        return out


class CatalogueData(RecDataModule):
    """A prepared dataset's item catalogue, once, as the only thing to predict on."""

    def predict_dataloader(self):
        return self.catalogue_dataloader()


class FeatureWriter(BasePredictionWriter):
    """Streams each device's features to part files as batches finish (memory stays one batch), then the
    first process assembles them into ``<dataset>/features/<modality>_feat.npy``, replacing any previous
    file only once the new one is complete.

    Args:
        dataset: the prepared dataset's folder.
        provenance: what made the features, recorded in ``features.json`` per modality.
        num_items: the dataset's number of items (rows of each matrix).
    """

    def __init__(self, dataset: Path, provenance: dict[str, dict[str, Any]], num_items: int) -> None:
        super().__init__(write_interval="batch")
        self.dataset, self.provenance, self.num_items = dataset, provenance, num_items
        self.folder = dataset / "features" / ".parts"
        self._parts: RowParts | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: FeatureExtractor) -> None:
        self._parts = start_parts(trainer, self.folder, {"features": list(pl_module.encoders)})["features"]

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        rows = prediction.pop("item_ids").cpu().numpy()
        self._parts.write(rows, {name: values.cpu().numpy() for name, values in prediction.items()})

    def on_predict_end(self, trainer: L.Trainer, pl_module: FeatureExtractor) -> None:
        def assemble() -> None:
            targets = {name: feature_file(self.dataset, name) for name in pl_module.encoders}
            self._parts.assemble(trainer.world_size, self.num_items, targets)
            for name in targets:
                record_provenance(self.dataset, name, self.provenance[name])
            shutil.rmtree(self.folder)

        finish_parts(trainer, [self._parts], assemble)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Encode every item of a prepared dataset once with frozen encoders and write "
        "<dataset>/features/{image,text}_feat.npy (row i = item i), for models that take ItemFeatures.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with any of these options")
    parser.add_argument("--data", type=str, required=True, help="folder of the prepared dataset")
    parser.add_subclass_arguments(ImageEncoder, "image_encoder", required=False, help="the image encoder")
    parser.add_subclass_arguments(TextEncoder, "text_encoder", required=False, help="the text encoder")
    parser.add_argument("--batch_size", type=int, default=256, help="items encoded per batch and device")
    parser.add_argument("--num_workers", type=int, default=0, help="data-loader workers (decoding, tokenising)")
    parser.add_argument("--accelerator", type=str, default="auto", help="as Lightning's Trainer: cpu, gpu, auto")
    parser.add_argument("--devices", type=int | str, default=1, help="as Lightning's Trainer")
    parser.add_argument("--precision", type=str | None, default=None, help="as Lightning's Trainer, e.g. bf16-mixed")
    return parser


def extract_features(
    data: str,
    image_encoder: ImageEncoder | None = None,
    text_encoder: TextEncoder | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    provenance: dict[str, dict[str, Any]] | None = None,
    **trainer: Any,
) -> dict[str, Path]:
    """Encode every item of the prepared dataset at ``data`` and write its feature files.

    Args:
        data: folder of the prepared dataset.
        image_encoder: the image encoder, or none.
        text_encoder: the text encoder, or none.
        batch_size: items per batch and device.
        num_workers: data-loader workers.
        provenance: what made each modality's features (recorded in ``features.json``); default the
            encoder's class.
        **trainer: Lightning ``Trainer`` arguments (accelerator, devices, precision, ...).

    Returns:
        the written file of each modality.
    """
    extractor = FeatureExtractor(image_encoder, text_encoder)
    provenance = provenance or {}
    provenance = {
        name: provenance.get(name, {"encoder": type(encoder).__qualname__})
        for name, encoder in extractor.encoders.items()
    }
    datamodule = CatalogueData(data, item_batch_size=batch_size, num_workers=num_workers)
    datamodule.connect(extractor.item_preprocessing())
    trainer.setdefault("logger", False)
    trainer.setdefault("enable_model_summary", False)
    runner = L.Trainer(callbacks=[FeatureWriter(Path(data), provenance, datamodule.num_items)], **trainer)
    runner.predict(extractor, datamodule=datamodule, return_predictions=False)
    return {name: feature_file(data, name) for name in extractor.encoders}


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    config = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    provenance = {
        name: {"encoder": config[f"{name}_encoder"].as_dict()}
        for name in ("image", "text")
        if config[f"{name}_encoder"] is not None
    }
    init = parser.instantiate_classes(config)
    written = extract_features(
        init.data,
        init.image_encoder,
        init.text_encoder,
        init.batch_size,
        init.num_workers,
        provenance,
        accelerator=init.accelerator,
        devices=init.devices,
        precision=init.precision,
    )
    if rank_zero_only.rank == 0:
        num_items = PreparedDataset(init.data).num_items
        for path in written.values():
            print(f"wrote {path} ({num_items:,} items)")
