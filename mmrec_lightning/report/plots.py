"""The report's figures as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmrec_lightning.report.gallery import WEIGHT_BINS, WeightHistogram
from mmrec_lightning.report.results import METRICS, metrics_at_k

LABELS = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "map": "MAP", "hit": "Hit"}
MODEL_COLOURS = ("#1f3b73", "#8c8c8c", "#a6761d", "#e7298a", "#66a61e")
MODALITY_COLOURS = {"image": "#d95f02", "text": "#7570b3", "id": "#1b9e77"}
GROUP_STYLES = {"all": "-", "warm": "--", "cold": ":"}
LEGEND_LINES = 10
"""A panel with more lines than this names only the highlighted ones in its legend."""


def model_colour(index: int) -> str:
    return MODEL_COLOURS[index % len(MODEL_COLOURS)]


def modality_colour(modality: str) -> str:
    return MODALITY_COLOURS.get(modality, "#666666")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _panels(count: int, width: float = 3.2, height: float = 3.0) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * count, height), layout="constrained", dpi=100)
    return figure, list(figure.subplots(1, count, squeeze=False)[0])


def metrics_at_k_figure(results: Mapping[str, Mapping[str, float]]) -> bytes | None:
    """One panel per metric, its value at each K, one line per model; None without such metrics."""
    tables = {model: metrics_at_k(values) for model, values in results.items()}
    metrics = [metric for metric in METRICS if any(metric in table for table in tables.values())]
    if not metrics:
        return None
    figure, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        for index, (model, table) in enumerate(tables.items()):
            if metric in table:
                ks = list(table[metric])
                ax.plot(ks, list(table[metric].values()), marker="o", color=model_colour(index), label=model)
                ax.set_xticks(ks)
        ax.set(title=f"{LABELS[metric]}@K", xlabel="K", ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return _png(figure)


def warm_cold_figure(results: Mapping[str, Mapping[str, float]]) -> bytes | None:
    """Recall@K and NDCG@K over all test items, warm items (seen in training) and cold items (never seen),
    one colour per model; None when no model has warm/cold metrics."""
    tables = {
        model: {group: metrics_at_k(values, group) for group in GROUP_STYLES} for model, values in results.items()
    }
    if not any(groups["cold"] for groups in tables.values()):
        return None
    figure, axes = _panels(2, width=4.8, height=3.6)
    for ax, metric in zip(axes, ("recall", "ndcg"), strict=True):
        for index, (model, groups) in enumerate(tables.items()):
            for group, style in GROUP_STYLES.items():
                values = groups[group].get(metric)
                if values:
                    ax.plot(
                        list(values),
                        list(values.values()),
                        style,
                        marker="o",
                        color=model_colour(index),
                        label=f"{model} ({group})",
                    )
                    ax.set_xticks(list(values))
        ax.set(title=f"{LABELS[metric]}@K by test item group", xlabel="K", ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    return _png(figure)


def modality_weight_figure(histogram: WeightHistogram) -> bytes:
    """One histogram per modality of its fusion weight over the catalogue, with the mean marked."""
    figure, axes = _panels(len(histogram.modalities))
    edges = np.linspace(0.0, 1.0, WEIGHT_BINS + 1)
    for ax, modality, counts, mean in zip(axes, histogram.modalities, histogram.counts, histogram.means, strict=True):
        colour = modality_colour(modality)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=colour, edgecolor="white")
        ax.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.2f}")
        ax.set(title=f"weight of {modality}", xlabel="fusion weight", ylabel="items", xlim=(0, 1))
        ax.legend(fontsize="small")
    return _png(figure)


def training_figure(curves: pd.DataFrame) -> bytes | None:
    """Training loss per step, validation Recall@K per epoch and the mean validation modality weights per
    epoch, whichever of them ``metrics.csv`` holds; None when it holds none."""
    panels = []
    if "train/loss" in curves:
        panels.append(("training loss", "step", ["train/loss"]))
    recall = sorted((c for c in curves if c.startswith("val/recall@")), key=lambda c: int(c.split("@")[1]))
    if recall:
        panels.append(("validation Recall@K", "epoch", recall))
    weights = [c for c in curves if c.startswith("val/modality_weights/")]
    if weights:
        panels.append(("validation mean modality weight", "epoch", weights))
    if not panels:
        return None
    figure, axes = _panels(len(panels), width=4.0)
    for ax, (title, x, columns) in zip(axes, panels, strict=True):
        for column in columns:
            rows = curves[[x, column]].dropna()
            name = column.split("/")[-1]
            colour = modality_colour(name) if column.startswith("val/modality_weights/") else None
            ax.plot(rows[x], rows[column], marker="." if x == "epoch" else None, color=colour, label=name)
        ax.set(title=title, xlabel=x)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(columns) > 1:
            ax.legend(fontsize="small")
    return _png(figure)


@dataclass(frozen=True)
class Curve:
    """One run's validation curve in :func:`validation_curves_figure`."""

    label: str
    values: pd.Series
    """The metric, indexed by epoch."""
    colour_key: int = 0
    """Runs with the same key share a colour (a trial and its seed re-runs)."""
    style: str = "-"
    highlight: bool = False
    """Drawn thick and dark, in front: the winner's runs."""
    stopped: bool = False
    """Ends in a cross: the run stopped before its last epoch (pruned, failed)."""


def validation_curves_figure(panels: Mapping[str, Sequence[Curve]], metric: str) -> bytes | None:
    """One panel per titled group of runs, ``metric`` per epoch, one line per run; None when no run has a
    value."""
    shown = {title: [c for c in curves if len(c.values)] for title, curves in panels.items()}
    shown = {title: curves for title, curves in shown.items() if curves}
    if not shown:
        return None
    palette = colormaps["tab10"]
    figure, axes = _panels(len(shown), width=5.0, height=3.6)
    for ax, (title, curves) in zip(axes, shown.items(), strict=True):
        for curve in curves:
            ax.plot(
                curve.values.index,
                curve.values.to_numpy(),
                curve.style,
                color="black" if curve.highlight else palette(curve.colour_key % palette.N),
                linewidth=2.5 if curve.highlight else 1.0,
                alpha=1.0 if curve.highlight else 0.7,
                zorder=3 if curve.highlight else 2,
                marker=".",
                label=curve.label if curve.highlight or len(curves) <= LEGEND_LINES else None,
            )
            if curve.stopped:
                ax.plot(curve.values.index[-1:], curve.values.to_numpy()[-1:], "x", color="black", zorder=4)
        ax.set(title=title, xlabel="epoch", ylabel=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize="x-small")
    return _png(figure)
