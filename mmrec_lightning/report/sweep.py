"""The page a hyper-parameter sweep leaves in its folder: the monitored validation metric of every trial and
seed re-run per epoch (read from each run's ``metrics.csv``), the table of trials, and the winner's test."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from mmrec_lightning.report.html import Plot, page
from mmrec_lightning.report.plots import Curve, validation_curves_figure
from mmrec_lightning.report.results import read_curves

RERUN_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep: a trial (``seed`` None), or one of the top trials trained under ``seed``."""

    trial: int
    folder: Path
    """The run's folder, where its CSV logger wrote ``metrics.csv``."""
    value: float | None
    """Its best validation value; None when it has none (it failed, or still runs)."""
    state: str = "complete"
    """The Optuna trial's state, in lower case: complete, pruned, fail, running …"""
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def label(self) -> str:
        return f"trial {self.trial}" if self.seed is None else f"trial {self.trial} seed {self.seed}"


def validation_curve(folder: Path, metric: str) -> pd.Series:
    """``metric`` per epoch from the CSV logger's ``metrics.csv`` in ``folder``; empty when the run logged none
    (a run pruned or killed before its first validation)."""
    curves = read_curves(folder / "metrics.csv")
    if curves is None or metric not in curves:
        return pd.Series(dtype=float)
    rows = curves[["epoch", metric]].dropna()
    return pd.Series(rows[metric].to_numpy(), index=rows["epoch"].astype(int).to_numpy(), name=metric)


def sweep_report(
    *,
    facts: Mapping[str, str],
    metric: str,
    trials: Sequence[SweepRun],
    reruns: Sequence[SweepRun],
    winner: int | None,
    results: Mapping[str, Mapping[str, float]],
) -> str:
    """The sweep's page: ``facts``, the winner's test ``results`` (as in ``test_metrics.json``), the validation
    ``metric`` per epoch of the ``trials`` and of the top trials under each seed (``reruns``), the winner's
    runs highlighted, and the table of trials. The plotted values are also embedded as JSON
    (``<script id='validation-curves'>``: panel, then run label, then ``epoch`` and ``value`` lists) for
    scripts and tests."""
    seeds = sorted({run.seed for run in reruns if run.seed is not None})
    panels: dict[str, list[tuple[SweepRun, pd.Series]]] = {
        "every trial": [(run, validation_curve(run.folder, metric)) for run in trials],
        "the top trials under each seed": [(run, validation_curve(run.folder, metric)) for run in reruns],
    }
    figure = validation_curves_figure(
        {
            title: [
                Curve(
                    run.label,
                    values,
                    colour_key=run.trial,
                    style=RERUN_STYLES[seeds.index(run.seed) % len(RERUN_STYLES)] if run.seed is not None else "-",
                    highlight=run.trial == winner,
                    stopped=run.state not in ("complete", "running"),
                )
                for run, values in runs
            ]
            for title, runs in panels.items()
        },
        metric,
    )
    plotted = {
        title: {run.label: {"epoch": values.index.tolist(), "value": values.tolist()} for run, values in runs}
        for title, runs in panels.items()
    }
    caption = (
        f"Validation {metric} per epoch of every trial (a cross: pruned or failed there) and of the top trials "
        f"under each seed (line style), from each run's metrics.csv; the winner's runs are black."
    )
    return page(
        title=f"{facts.get('study', 'Sweep')} — sweep report",
        facts=facts,
        results=results,
        figures=[Plot("Validation curves", caption, figure, missing="no run has validated yet")],
        sections=[
            f"<script type='application/json' id='validation-curves'>{_json(plotted)}</script>",
            "<h2>Trials</h2>",
            _trials_table(trials, reruns, winner, metric),
        ],
    )


def _json(data: object) -> str:
    """``data`` as JSON that cannot end the script element it sits in."""
    return json.dumps(data).replace("</", "<\\/")


def _trials_table(trials: Sequence[SweepRun], reruns: Sequence[SweepRun], winner: int | None, metric: str) -> str:
    """One row per trial: its state, best validation value, mean and spread over the seeds when it was
    re-run, and its parameters; the winner's row in bold."""
    names = list(dict.fromkeys(name for run in trials for name in run.params))
    by_trial: dict[int, list[float]] = {}
    for run in reruns:
        if run.value is not None:
            by_trial.setdefault(run.trial, []).append(run.value)
    header = "".join(f"<th>{escape(h)}</th>" for h in ["trial", "state", f"best {metric}", "over seeds", *names])
    lines = []
    for run in trials:
        seeds = _spread(by_trial.get(run.trial, []))
        cells = [str(run.trial), run.state, _number(run.value), seeds, *(_number(run.params.get(n)) for n in names)]
        tag = "td class=best" if run.trial == winner else "td"
        lines.append(f"<tr data-trial='{run.trial}'>" + "".join(f"<{tag}>{escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table class='metrics trials'><tr>{header}</tr>{''.join(lines)}</table>"


def _spread(values: Sequence[float]) -> str:
    """Mean ± standard deviation (of the sample, as the sweep prints it) and count; empty without values."""
    if len(values) < 2:
        return f"{values[0]:.4f} (1)" if values else ""
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({len(values)})"


def _number(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
