"""Each trial's learning curves as a figure optuna-dashboard plots.

Optuna's intermediate values hold one series per trial (the objective, reported every
epoch: the dashboard's live curve). Train, validation and test accuracy per epoch, side
by side, go where optuna-dashboard shows arbitrary figures: a plotly figure saved on the
study with `optuna_dashboard.save_plotly_graph_object` (its public API; the study's
page draws each one, interactive). One figure per Optuna trial, id `trial-<number>`,
written once when the trial ends, so a running study costs nothing more per epoch.

Bounded, because optuna-dashboard keeps every figure in the study's system attributes:
each save reads all of them back, and the study page loads them all at each refresh.
So at most MAX_POINTS epochs per line (evenly spaced, the first and last always in), no
plotly template (it would add ~6 KB of styling to every figure), and figures only for
the study's first MAX_FIGURES Optuna trials; every trial's full curves stay in
samsweep (`GET /studies/{id}/trials`, the page's `curves` plot). A figure is a nicety:
failing to save one never fails the trial (worker/recorder.py).
"""

from __future__ import annotations

from typing import Any

import optuna
import plotly.graph_objects as go
from optuna_dashboard import save_plotly_graph_object

from samsweep.core import optuna_store
from samsweep.core.spec import TrialParams

MAX_POINTS = 200
MAX_FIGURES = 200  # Optuna trial numbers below this get a figure
SERIES = (
    ("train_accuracy", "train"),
    ("val_accuracy", "validation"),
    ("test_accuracy", "test"),
)


def figure_id(trial_number: int) -> str:
    return f"trial-{trial_number}"


def sampled(curves: list[dict[str, Any]], limit: int = MAX_POINTS) -> list[dict[str, Any]]:
    """At most `limit` epochs, evenly spaced, the first and the last included."""
    if len(curves) <= limit:
        return curves
    step = (len(curves) - 1) / (limit - 1)
    return [curves[round(i * step)] for i in range(limit)]


def title(trial_number: int, params: TrialParams, objective: str) -> str:
    return f"Trial {trial_number}: {params.cell.label}, seed {params.seed} (objective {objective})"


def learning_curves(
    trial_number: int, params: TrialParams, objective: str, curves: list[dict[str, Any]]
) -> go.Figure:
    """Accuracy per epoch: train, validation (when the spec holds data out) and test."""
    points = sampled(sorted(curves, key=lambda e: e["epoch"]))
    traces = []
    for key, name in SERIES:
        xy = [(e["epoch"], e[key]) for e in points if e.get(key) is not None]
        if xy:
            x, y = zip(*xy, strict=True)
            traces.append(go.Scatter(x=list(x), y=list(y), name=name, mode="lines+markers"))
    shown = "" if len(points) == len(curves) else f" ({len(points)} of {len(curves)} epochs)"
    return go.Figure(
        traces,
        layout={
            "template": "none",
            "title": {"text": title(trial_number, params, objective) + shown},
            "xaxis": {"title": {"text": "epoch"}},
            "yaxis": {"title": {"text": "accuracy"}},
            "hovermode": "x unified",
        },
    )


def save_learning_curves(
    url: str,
    study_name: str,
    trial_id: int,
    params: TrialParams,
    objective: str,
    curves: list[dict[str, Any]],
) -> None:
    """Save (or replace) the trial's figure on its Optuna study. A study deleted in the
    meantime (through optuna-dashboard, say) is left alone, as `fail_trial` does."""
    if not curves:
        return
    storage = optuna_store.get_storage(url)
    try:
        number = storage.get_trial_number_from_id(trial_id)
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return
    if number >= MAX_FIGURES:
        return
    figure = learning_curves(number, params, objective, curves)
    save_plotly_graph_object(study, figure, graph_object_id=figure_id(number))
