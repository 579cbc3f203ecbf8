"""The report's gallery and metric-per-K curves sent to Weights & Biases: a ``wandb.Table`` with one row
per shown item (thumbnail, title, score, modality weights, hit) and one ``line_series`` chart per metric."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from mmrec_lightning.report.gallery import Gallery
from mmrec_lightning.report.items import ItemDisplay
from mmrec_lightning.report.plots import LABELS
from mmrec_lightning.report.results import metrics_at_k

GALLERY_KEY = "report/sample_users"
BASE_COLUMNS = ["user", "role", "position", "item", "title", "image", "score", "hit"]


def gallery_table(gallery: Gallery, items: ItemDisplay) -> tuple[list[str], list[list[Any]]]:
    """The columns and rows of the gallery table: per sample user, a row for each recent training item
    (role ``history``), recommendation (``recommendation``, with score, weights and hit) and held-out test
    item (``held_out``); position counts from 1 within each role."""
    import wandb  # here, not at the top: most runs have no W&B logger, and importing wandb takes a while

    columns = [*BASE_COLUMNS, *(f"modality_weights/{m}" for m in gallery.modalities)]
    no_weights = [None] * len(gallery.modalities)

    def row(user: int, role: str, position: int, item: int, score=None, hit=None, weights=no_weights) -> list:
        image = items.thumbnail(item)
        title = items.title(item)
        picture = wandb.Image(image, caption=title) if image is not None else None
        return [items.user_raw_id(user), role, position, items.raw_id(item), title, picture, score, hit, *weights]

    rows = []
    for sample in gallery.samples:
        rows += [row(sample.user, "history", i, item) for i, item in enumerate(sample.history, 1)]
        rows += [
            row(sample.user, "recommendation", i, r.item, r.score, r.hit, [r.weights[m] for m in gallery.modalities])
            for i, r in enumerate(sample.recommendations, 1)
        ]
        found = {r.item for r in sample.recommendations if r.hit}
        rows += [row(sample.user, "held_out", i, item, hit=item in found) for i, item in enumerate(sample.held_out, 1)]
    return columns, rows


def metric_curves(results: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """``{"report/<metric>_at_k": chart}``: each metric against K, one line per model."""
    import wandb

    tables = {model: metrics_at_k(values) for model, values in results.items()}
    metrics = list(dict.fromkeys(metric for table in tables.values() for metric in table))
    charts = {}
    for metric in metrics:
        models = [model for model, table in tables.items() if metric in table]
        ks = sorted({k for model in models for k in tables[model][metric]})
        ys = [[tables[model][metric].get(k, float("nan")) for k in ks] for model in models]
        title = f"{LABELS.get(metric, metric)}@K"
        charts[f"report/{metric}_at_k"] = wandb.plot.line_series(xs=ks, ys=ys, keys=models, title=title, xname="K")
    return charts


def log_gallery(logger: WandbLogger, gallery: Gallery, items: ItemDisplay) -> None:
    columns, rows = gallery_table(gallery, items)
    logger.log_table(GALLERY_KEY, columns=columns, data=rows)


def log_metric_curves(logger: WandbLogger, results: Mapping[str, Mapping[str, float]]) -> None:
    charts = metric_curves(results)
    if charts:
        logger.log_metrics(charts)
