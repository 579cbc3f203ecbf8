"""The report as one self-contained HTML page: figures and thumbnails are embedded as base64 data URIs, so
the single file can be copied off a cluster and opened anywhere."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

import pandas as pd

from mmrec_lightning.report.gallery import Gallery, Recommendation, SampleUser
from mmrec_lightning.report.items import ItemDisplay
from mmrec_lightning.report.plots import (
    LABELS,
    metrics_at_k_figure,
    modality_colour,
    modality_weight_figure,
    training_figure,
    warm_cold_figure,
)
from mmrec_lightning.report.results import metric_rank, metrics_at_k

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.facts { color: #555; font-size: 14px; } .facts b { color: #222; }
table.metrics { border-collapse: collapse; font-size: 13px; }
table.metrics th, table.metrics td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
table.metrics td.best { font-weight: bold; background: #eef5ee; }
figure.plot { margin: 12px 0; } figure.plot img { max-width: 100%; }
figure.plot figcaption, .note { color: #555; font-size: 13px; }
.user { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 16px 0; }
.user h3 { margin: 4px 0 8px; font-size: 16px; } .user h3 small { color: #666; font-weight: normal; }
.row { display: flex; align-items: flex-start; margin: 6px 0; }
.row .label { width: 96px; flex: none; font-size: 13px; color: #555; padding-top: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 6px; }
.card { width: 92px; margin: 0; border: 2px solid #eee; border-radius: 4px; padding: 2px; font-size: 11px; }
.card.hit { border-color: #2e9d3a; background: #effaf0; }
.card img, .card .noimg { width: 84px; height: 84px; object-fit: contain; display: block; margin: 0 auto; }
.card .noimg { background: #f3f3f3; color: #999; text-align: center; line-height: 84px; }
.card .title { display: block; line-height: 1.3em; height: 2.6em; overflow: hidden; }
.badge { color: #fff; background: #2e9d3a; border-radius: 3px; padding: 0 3px; font-weight: bold; }
.weights { display: flex; height: 6px; margin: 2px 0; background: #eee; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }
.muted { color: #777; }
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass(frozen=True)
class Plot:
    heading: str
    caption: str
    png: bytes | None
    missing: str = "nothing to show"
    """Why there is no figure, when ``png`` is None."""


def build_report(
    *,
    facts: Mapping[str, str],
    results: Mapping[str, Mapping[str, float]],
    curves: pd.DataFrame | None,
    gallery: Gallery | None,
    items: ItemDisplay | None,
) -> str:
    """The report page of a run: ``facts`` (model, checkpoint, dataset …), the test ``results`` of every model
    (as in ``test_metrics.json``), the training ``curves`` (``metrics.csv``) and the ``gallery``."""
    histogram = gallery.histogram if gallery is not None else None
    figures = [
        Plot("Metrics at K", "Each metric at every cut-off K, for every model tested.", metrics_at_k_figure(results)),
        Plot(
            "Warm and cold items",
            "Test items seen in training (warm, dashed) against items never seen in training (cold, dotted).",
            warm_cold_figure(results),
            missing="no model has metrics for cold test items (the test split has none)",
        ),
        Plot(
            "Training",
            "From the CSV logger's metrics.csv.",
            training_figure(curves) if curves is not None else None,
            missing="no CSV logger, or it holds no training or validation metrics",
        ),
        Plot(
            "Modality weights over the catalogue",
            "How much each item's vector draws on each modality (the fusion weights), over every item.",
            modality_weight_figure(histogram) if histogram is not None else None,
            missing="the model fuses no modalities",
        ),
    ]
    return page(
        title=f"{facts.get('model', 'Run')} — run report",
        facts=facts,
        results=results,
        figures=figures,
        gallery=gallery,
        items=items,
    )


def page(
    *,
    title: str,
    facts: Mapping[str, str],
    results: Mapping[str, Mapping[str, float]],
    figures: Sequence[Plot],
    gallery: Gallery | None = None,
    items: ItemDisplay | None = None,
    sections: Sequence[str] = (),
) -> str:
    """The page: ``facts`` about the run, the test metrics of every model, the ``figures``, any further
    ``sections`` (HTML, as given) and the gallery of sample users."""
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>",
        "<div class='facts'>" + " · ".join(f"{escape(k)}: <b>{escape(v)}</b>" for k, v in facts.items()) + "</div>",
        "<h2>Test metrics</h2>",
        _metrics_table(results),
    ]
    for plot in figures:
        parts.append(f"<h2>{escape(plot.heading)}</h2>")
        if plot.png is None:
            parts.append(f"<p class='note'>Not available: {escape(plot.missing)}.</p>")
        else:
            parts.append(
                f"<figure class='plot'><img alt='{escape(plot.heading)}' src='{data_uri(plot.png, 'image/png')}'>"
                f"<figcaption>{escape(plot.caption)}</figcaption></figure>"
            )
    parts.extend(sections)
    if gallery is not None and items is not None:
        parts.append(_gallery(gallery, items))
    parts.append("</body></html>")
    return "\n".join(parts)


def _metrics_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """One row per metric and K, one column per model; the best value of a row in bold when models compete."""
    tables = {model: metrics_at_k(values) for model, values in results.items()}
    rows = sorted(
        {(metric, k) for table in tables.values() for metric, ks in table.items() for k in ks},
        key=lambda row: (metric_rank(row[0]), row),
    )
    if not rows:
        return "<p class='note'>No test metrics were written in this run (test_metrics.json).</p>"
    header = "".join(f"<th>{escape(model)}</th>" for model in tables)
    lines = []
    for metric, k in rows:
        values = [table.get(metric, {}).get(k) for table in tables.values()]
        best = max((v for v in values if v is not None), default=None)
        cells = "".join(
            "<td>–</td>" if v is None else f"<td{' class=best' if len(values) > 1 and v == best else ''}>{v:.4f}</td>"
            for v in values
        )
        lines.append(f"<tr><th>{escape(LABELS.get(metric, metric))}@{k}</th>{cells}</tr>")
    return f"<table class='metrics'><tr><th>metric</th>{header}</tr>{''.join(lines)}</table>"


def _gallery(gallery: Gallery, items: ItemDisplay) -> str:
    legend = "".join(f"<span style='background:{modality_colour(m)}'></span>{escape(m)}" for m in gallery.modalities)
    parts = [
        "<h2>Sample users</h2>",
        "<p class='note'>Each user's most recent training items, the model's top recommendations (training items "
        "excluded) and the user's held-out test items; a green frame marks a recommended item that is one of "
        "the held-out items (a hit)."
        + (f" Bars show each recommendation's fusion weights: <span class='legend'>{legend}</span>" if legend else "")
        + "</p>",
    ]
    if not gallery.samples:
        parts.append("<p class='note'>No user with both training and test items to show.</p>")
    for sample in gallery.samples:
        parts.append(_sample(sample, items))
    return "\n".join(parts)


def _sample(sample: SampleUser, items: ItemDisplay) -> str:
    found = {r.item for r in sample.recommendations if r.hit}
    k = len(sample.recommendations)
    history = [_card(items, item, "history") for item in sample.history]
    top = [_card(items, r.item, "recommendation", r.hit, i, r) for i, r in enumerate(sample.recommendations, 1)]
    held_out = [_card(items, item, "held_out", item in found) for item in sample.held_out]
    return (
        f"<section class='user' data-user='{sample.user}'><h3>User {escape(items.user_raw_id(sample.user))} "
        f"<small>{len(sample.held_out)} held out · {len(found)} of them in the top {k}</small></h3>"
        + _row("Recent history", history)
        + _row(f"Top {k}", top)
        + _row("Held out (test)", held_out)
        + "</section>"
    )


def _row(label: str, cards: list[str]) -> str:
    body = "".join(cards) or "<span class='muted'>none</span>"
    return f"<div class='row'><div class='label'>{escape(label)}</div><div class='cards'>{body}</div></div>"


def _card(
    items: ItemDisplay,
    item: int,
    role: str,
    hit: bool = False,
    rank: int | None = None,
    rec: Recommendation | None = None,
) -> str:
    """One item: thumbnail, title, and for a recommendation its rank, score and modality weights. The
    ``data-`` attributes name the item, its role and whether it is a hit, for scripts and tests."""
    jpeg = items.jpeg(item)
    picture = (
        f"<img alt='item {item}' src='{data_uri(jpeg, 'image/jpeg')}'>"
        if jpeg is not None
        else "<div class='noimg'>no image</div>"
    )
    category = items.category(item)
    tooltip = " · ".join(filter(None, [items.raw_id(item), category]))
    lines = [f"<span class='title'>{'<b>#' + str(rank) + '</b> ' if rank else ''}{escape(items.title(item))}</span>"]
    if hit:
        lines.append("<span class='badge'>hit</span> ")
    if rec is not None:
        lines.append(f"<span class='muted'>score {rec.score:.2f}</span>")
        if rec.weights:
            lines.append(_weights(rec.weights))
    classes = "card hit" if hit else "card"
    return (
        f"<figure class='{classes}' data-role='{role}' data-item='{item}' data-hit='{int(hit)}' "
        f"title='{escape(tooltip)}'>{picture}<figcaption>{''.join(lines)}</figcaption></figure>"
    )


def _weights(weights: Mapping[str, float]) -> str:
    """A bar split by modality weight, and the weights as numbers in their modality's colour."""
    bars = "".join(
        f"<span style='width:{100 * w:.1f}%;background:{modality_colour(m)}'></span>" for m, w in weights.items()
    )
    numbers = " ".join(f"<span style='color:{modality_colour(m)}'>{w:.2f}</span>" for m, w in weights.items())
    names = escape(" / ".join(weights))
    return f"<div class='weights' title='{names}'>{bars}</div><span title='{names}'>{numbers}</span>"
