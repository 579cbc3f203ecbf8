"""Callbacks the CLI adds to every run: the resolved config sent to the loggers, test metrics written to JSON,
non-finite steps skipped, predictions written to Parquet."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mmrec_lightning.atomic import write_atomically

SECRET_KEY = re.compile(r"(api[_-]?key|token|password|secret)", re.IGNORECASE)


def redact(value: Any) -> Any:
    """A copy of a nested config with the values of secret-looking keys replaced (they must never reach logs)."""
    if isinstance(value, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def run_directory(trainer: L.Trainer, directory: str | None = None) -> Path:
    """``directory`` if given, else the run's log directory. ``trainer.log_dir`` is a collective under DDP:
    every rank must call this, even where only rank 0 writes."""
    return Path(directory or trainer.log_dir or trainer.default_root_dir)


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the run directory (Lightning's behaviour) and also sends the resolved config
    to every logger (W&B shows it in the run's config panel). Runs on rank 0 only."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class TestMetricsWriter(L.Callback):
    """At the end of ``test``, writes the test metrics to ``<run dir>/test_metrics.json`` under the model's name
    (several models tested in one run, e.g. the model and its baselines, share the file).

    Args:
        directory: where to write; default the run's log directory.
        filename: the JSON file's name.
    """

    def __init__(self, directory: str | None = None, filename: str = "test_metrics.json") -> None:
        self.directory = directory
        self.filename = filename
        self.path: Path | None = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.path is None:  # fixed by the first test, so later tests in the same run add to the same file
            self.path = run_directory(trainer, self.directory) / self.filename
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        results = json.loads(self.path.read_text()) if self.path.is_file() else {}
        results[type(pl_module).__name__] = {
            name.removeprefix("test/"): float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("test/")
        }
        write_atomically(self.path, lambda file: file.write((json.dumps(results, indent=2) + "\n").encode()))


def format_table(results: dict[str, dict[str, float]], metrics: list[str]) -> str:
    """A plain-text table: one row per model, one column per metric."""
    header = ["model", *metrics]
    rows = [[name, *(f"{values.get(m, float('nan')):.4f}" for m in metrics)] for name, values in results.items()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses too many steps in a row."""


class NonFiniteGuard(L.Callback):
    """Skips optimizer steps whose gradients are not finite (a NaN or Inf loss gives such gradients) by
    dropping them, counts the skipped steps (``train/skipped_steps`` per epoch), and stops the run after
    ``max_consecutive`` skipped steps in a row, naming the last good checkpoint. Under DDP the gradients
    are already averaged over ranks here, so every rank skips the same steps.

    Args:
        max_consecutive: skipped steps in a row after which the run stops.
    """

    def __init__(self, max_consecutive: int = 10) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_this_epoch = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.skipped_this_epoch = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # a NaN anywhere makes a gradient's min and max NaN, an Inf makes one of them infinite, and finite
        # values cannot overflow them: one pass per gradient and one check, where isfinite on every element
        # cost a third of an ID model's step, and a float64 sum a sixth
        extremes = [bound for g in grads if g.numel() for bound in g.aminmax()]
        if not extremes or bool(torch.stack(extremes).isfinite().all()):
            self.consecutive = 0
            return
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None  # the optimizer leaves parameters without gradients untouched
        self.consecutive += 1
        self.skipped_this_epoch += 1
        rank_zero_warn(f"step {trainer.global_step}: non-finite loss or gradients; step skipped")
        if self.consecutive >= self.max_consecutive:
            checkpoint = trainer.checkpoint_callback
            last_good = (checkpoint.last_model_path or checkpoint.best_model_path) if checkpoint else ""
            raise NonFiniteLossError(
                f"{self.consecutive} steps in a row had non-finite losses; stopping. Last good checkpoint: "
                f"{last_good or 'none saved yet'}. Lower the learning rate or check the data, then resume "
                "with --ckpt_path"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped_this_epoch), sync_dist=False, rank_zero_only=True)


class TopKWriter(BasePredictionWriter):
    """Writes what ``predict`` returns — each user's top-K items (training items excluded) with scores, and
    the items' per-item outputs, such as a multimodal model's ``modality_weights/image``, ``…/text``,
    ``…/id`` — to ``<run dir>/predictions.parquet`` (one file per rank under DDP), with the dataset's raw
    user and item ids, one row per (user, rank).

    Args:
        directory: where to write; default the run's log directory.
        csv: also write the same table as CSV.
    """

    def __init__(self, directory: str | None = None, csv: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.directory = directory
        self.csv = csv
        self.paths: list[Path] = []
        self._writer: pq.ParquetWriter | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = run_directory(trainer, self.directory)
        directory.mkdir(parents=True, exist_ok=True)
        suffix = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.paths = [directory / f"predictions{suffix}.parquet"]
        dataset = pl_module.data_facts.dataset
        self._user_ids = dataset.users.column("raw_id")
        self._item_ids = dataset.items.column("raw_id")
        self._writer = None

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if "users" not in prediction:  # a batch of the catalogue pass
            return
        users, items, scores = (prediction[k].cpu().numpy() for k in ("users", "items", "scores"))
        k = items.shape[1]
        columns = {
            "user": self._user_ids.take(pa.array(np.repeat(users, k))),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users)),
            "item": self._item_ids.take(pa.array(items.ravel())),
            "score": scores.ravel().astype(np.float32),
        }
        for output, names in pl_module.item_output_columns.items():
            values = prediction[output].float().cpu().numpy()
            for index, name in enumerate(names):
                columns[f"{output}/{name}"] = values[..., index].ravel()
        table = pa.table(columns)
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self.paths[0]), table.schema)
        self._writer.write_table(table)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._writer is None:
            return
        self._writer.close()
        if self.csv:
            path = self.paths[0].with_suffix(".csv")
            pa_csv.write_csv(pq.read_table(self.paths[0]), str(path))
            self.paths.append(path)


class ImageFaultError(RuntimeError):
    """Too many of the images used in training could not be read."""


class ImageFaultMonitor(L.Callback):
    """Counts the training items whose stored image could not be used (the files changed or broke after
    ``prepare``; such items train without their image), logs ``train/unusable_images`` per epoch, and stops
    the run when more than ``max_fraction`` of the stored images seen in an epoch are unusable, listing
    examples.

    Args:
        max_fraction: largest tolerated fraction of unusable images in an epoch.
        min_images: images to see before the fraction is judged.
    """

    def __init__(self, max_fraction: float = 0.05, min_images: int = 100) -> None:
        self.max_fraction = max_fraction
        self.min_images = min_images
        self.failed = self.stored = 0
        self.examples: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.failed = self.stored = 0
        self.examples = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        items = batch["items"]
        if "image_failed" not in items:
            return
        failed = items["image_failed"]
        self.failed += int(failed.sum())
        self.stored += int((items["image_mask"] | failed).sum())
        self.examples.extend(items["item_ids"][failed].tolist()[: 5 - len(self.examples)])
        if self.stored >= self.min_images and self.failed > self.max_fraction * self.stored:
            raw_ids = pl_module.data_facts.dataset.items.column("raw_id")
            named = ", ".join(f"{i} ({raw_ids[i].as_py()})" for i in self.examples)
            raise ImageFaultError(
                f"{self.failed} of {self.stored} images used this epoch could not be read (> "
                f"{self.max_fraction:.0%}), e.g. items {named}; fix the image files and prepare the dataset again, "
                "or raise image_faults.max_fraction"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("train/unusable_images", float(self.failed), rank_zero_only=True)


class SaveOnInterrupt(L.Callback):
    """When a run is stopped by SIGTERM (a scheduler's preemption or ``kill``), SIGUSR1 (a scheduler's
    warning before preemption) or Ctrl-C, saves ``last.ckpt`` beside the run's other checkpoints — weights,
    optimizer, RNG state and the training loader's place in the epoch — so that ``fit --ckpt_path last``
    continues with the next batch. Other exceptions (bugs) save nothing: their state may be broken. Under
    SLURM with auto-requeue, SIGUSR1 stays Lightning's own requeue signal (``hpc_ckpt_N.ckpt``)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has installed its signal handlers by now, and restores the previous ones when fit ends. A
        # SIGUSR1 someone already handles (Lightning's SLURM auto-requeue, the user's own) is left to them.
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGUSR1, _as_sigterm)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt) or checkpoint is None:
            return
        if checkpoint.dirpath is None or trainer.state.fn != "fit":
            return
        path = os.path.join(checkpoint.dirpath, f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}")
        trainer.save_checkpoint(path)
        rank_zero_info(f"interrupted: saved {path}; resume with `fit --config … --ckpt_path last`")


def _as_sigterm(signum: int, frame: FrameType | None) -> None:
    """Handle a signal as the SIGTERM handler Lightning installed would: stop after this batch, then exit.
    Left at its default, SIGUSR1 would kill the process without a checkpoint."""
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        handler(signum, frame)
