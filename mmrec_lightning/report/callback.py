"""``ReportWriter``: after ``test``, writes ``report.html`` next to the run and sends its gallery and
metric-per-K curves to W&B when a ``WandbLogger`` is configured."""

from __future__ import annotations

import datetime
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from mmrec_lightning.atomic import write_atomically
from mmrec_lightning.callbacks import TestMetricsWriter, run_directory
from mmrec_lightning.report.gallery import Gallery, compute_gallery
from mmrec_lightning.report.html import build_report
from mmrec_lightning.report.items import ItemDisplay
from mmrec_lightning.report.results import read_curves, read_test_metrics
from mmrec_lightning.report.wandb_log import log_gallery, log_metric_curves


class ReportWriter(L.Callback):
    """At the end of ``test``, writes ``<run dir>/report.html``: one self-contained page with the test metrics
    of every model tested in the run (``test_metrics.json``) per K and for warm and cold items, the training
    curves (the CSV logger's ``metrics.csv``), the distribution of the modality weights over the catalogue and
    a gallery of sample test users — recent training items, the top-K with each item's modality weights,
    held-out items, hits marked — computed with the tested model (the best checkpoint after
    ``fit --test_after_fit``) from the test's own loaders.

    The gallery and the weights come from the first model tested in the run; models tested after it (the
    popularity baseline) add their metrics, and the page is written again. With a ``WandbLogger``, the gallery
    is also logged as a table (``report/sample_users``) and the metrics as charts (``report/<metric>_at_k``).

    Args:
        enabled: write the report (it costs one more pass over the catalogue and a few seconds of plotting).
        num_users: sample users in the gallery, drawn among the users with training and test items.
        top_k: recommendations shown per user (at most the model's largest ``top_k``).
        history: most recent training items shown per user.
        seed: seed of the draw of sample users.
        wandb: also log the gallery and the metric curves to the run's ``WandbLogger``, if there is one.
        directory: where to write; default the run's log directory.
        filename: the HTML file's name.
    """

    def __init__(
        self,
        enabled: bool = False,
        num_users: int = 8,
        top_k: int = 10,
        history: int = 8,
        seed: int = 0,
        wandb: bool = True,
        directory: str | None = None,
        filename: str = "report.html",
    ) -> None:
        self.enabled = enabled
        self.num_users, self.top_k, self.history, self.seed = num_users, top_k, history, seed
        self.wandb = wandb
        self.directory = directory
        self.filename = filename
        self.path: Path | None = None
        self.gallery: Gallery | None = None
        self._facts: dict[str, str] = {}
        self._items: ItemDisplay | None = None
        self._loggers: list[Logger] = []

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        first = self.path is None
        if first:  # fixed by the first test: the baseline tested after the model runs without loggers
            self.path = run_directory(trainer, self.directory) / self.filename
            self._loggers = list(trainer.loggers)
            self.gallery = compute_gallery(trainer, pl_module, self.num_users, self.top_k, self.history, self.seed)
            self._items = ItemDisplay(pl_module.data_facts.dataset)  # kept: thumbnails are decoded once per run
            self._facts = {
                "model": type(pl_module).__name__,
                "checkpoint": str(trainer.ckpt_path or "the weights in memory"),
                "dataset": str(pl_module.data_facts.path),
            }
        if not trainer.is_global_zero:
            return
        writer = next((cb for cb in trainer.callbacks if isinstance(cb, TestMetricsWriter)), None)
        results = read_test_metrics(writer.path if writer is not None else None)
        # the run's curves: beside the report (a report rebuilt into an earlier run's directory), else the CSV logger's
        logged = [Path(lg.log_dir) / "metrics.csv" for lg in self._loggers if isinstance(lg, CSVLogger)]
        csv = next((path for path in [self.path.parent / "metrics.csv", *logged] if path.is_file()), None)
        facts = {**self._facts, "written": datetime.datetime.now().isoformat(timespec="seconds")}
        curves = read_curves(csv)
        html = build_report(facts=facts, results=results, curves=curves, gallery=self.gallery, items=self._items)
        write_atomically(self.path, lambda file: file.write(html.encode("utf-8")))  # never half a page
        rank_zero_info(f"report: {self.path}")
        for logger in self._loggers if self.wandb else []:
            if isinstance(logger, WandbLogger):
                if first:
                    log_gallery(logger, self.gallery, self._items)
                log_metric_curves(logger, results)
