"""What a run already wrote that the report shows: the test metrics of each model per cut-off K (from
``test_metrics.json``) and the training curves (from the CSV logger's ``metrics.csv``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

METRICS = ("recall", "ndcg", "precision", "map", "hit")
_METRIC_NAME = re.compile(r"^(?:(?P<group>warm|cold)/)?(?P<metric>[a-z]+)@(?P<k>\d+)$")


def metrics_at_k(results: Mapping[str, float], group: str = "all") -> dict[str, dict[int, float]]:
    """``{metric: {K: value}}`` from one model's test results (names as in ``test_metrics.json``:
    ``recall@20``, ``warm/recall@20`` …), for the targets of ``group`` (``all``, ``warm`` or ``cold``)."""
    table: dict[str, dict[int, float]] = {}
    for name, value in results.items():
        match = _METRIC_NAME.match(name)
        if match is None or (match["group"] or "all") != group:
            continue
        table.setdefault(match["metric"], {})[int(match["k"])] = float(value)
    ordered = sorted(table.items(), key=lambda entry: (metric_rank(entry[0]), entry[0]))
    return {metric: dict(sorted(values.items())) for metric, values in ordered}


def metric_rank(metric: str) -> int:
    """Where a metric goes in tables and figures: those of ``METRICS`` in its order, any other after them."""
    return METRICS.index(metric) if metric in METRICS else len(METRICS)


def read_test_metrics(path: Path | None) -> dict[str, dict[str, float]]:
    """``{model name: {metric: value}}`` as :class:`~mmrec_lightning.callbacks.TestMetricsWriter` wrote it;
    empty when there is no such file."""
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def read_curves(path: Path | None) -> pd.DataFrame | None:
    """The rows of a CSV logger's ``metrics.csv`` (one per logging step or epoch end, NaN where a metric was
    not logged), or None when there is no such file."""
    return pd.read_csv(path) if path is not None and path.is_file() else None
