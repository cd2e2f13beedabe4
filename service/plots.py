"""The study's plots, drawn on the server with matplotlib (Agg, no display), as SVG or PNG.

Each plot takes the report (samsweep.core.report.Report) and/or the trials as typed records
(samsweep.core.report.TrialRecord, with curves where drawn) and returns the file's bytes:

- ``rho``: test accuracy against ρ, one line per batch size (and base optimizer, SAM
  variant, m when there are several), error bars = sample std over seeds. The x axis is
  logarithmic over the SAM ρ values; the baseline (ρ = 0) cannot sit on a log axis, so
  it is drawn as a dashed horizontal line in its batch size's colour, with its ± std
  band shaded.
- ``gap``: train and test accuracy per batch size, the baseline next to SAM at the
  selected ρ, as grouped bars with error bars (the gap is the distance between a pair).
- ``heatmap``: mean test accuracy over ρ × batch size, each cell annotated with its
  mean (and std); one panel per (base optimizer, SAM variant, m).
- ``sharpness``: sharpness against test accuracy, one point per complete trial, the
  colour says ρ and the marker the batch size.
- ``curves``: per-epoch train, validation and test accuracy of trials on one figure;
  the trials of the best cell (by the study's objective) unless one trial is asked for.
- ``history``: the optimization history: each complete trial's objective in the order
  the trials were numbered (drawn, for a sampler's study), SAM and the baseline apart,
  with the best so far of each as a step line; pruned trials counted in the title.
- ``importance``: which searched params matter for SAM's objective: Optuna's own
  ``optuna.importance.get_param_importances`` (PED-ANOVA) over the complete SAM trials
  (ρ is a SAM trial's param only), as bars.

In a sampler's study (continuous ρ) the ``rho`` plot is a scatter: one point per
complete SAM trial at its own ρ, coloured by batch size, the tuned baseline's mean as a
dashed line.

Every figure is bounded in what it draws, whatever the grid: more groups than
`MAX_GROUPS` (ρ and gap plots), panels or cells than the heatmap can show, or too many
ρ values and batch sizes for the sharpness plot's legend, and the figure says so and
where to read the numbers instead (the report) rather than drawing an unreadable,
minutes-long figure; curves are thinned to `MAX_POINTS` points per line.

Nothing here reads user text into a figure (a study's name could hold matplotlib
mathtext): titles and labels are built from numbers and the spec's enumerations.
Figures are `matplotlib.figure.Figure` objects, never pyplot's global state, and
rendering is serialized by a lock (matplotlib is not thread-safe). The API draws in
separate processes (service/render.py).
"""

from __future__ import annotations

import io
import itertools
import math
import threading
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.typing import RcKeyType  # noqa: E402

from samsweep.core.report import (  # noqa: E402
    Group,
    Report,
    TrialRecord,
    best_cell,
    complete_trials,
)
from samsweep.core.spec import TrialParams, sam_setting  # noqa: E402
from samsweep.core.states import TrialState  # noqa: E402

KINDS = ("rho", "gap", "heatmap", "sharpness", "curves", "history", "importance")
FORMATS = {"svg": "image/svg+xml", "png": "image/png"}
PNG_DPI = 200  # for papers
NO_TRIALS = "no complete trials yet"
MAX_GROUPS = 24  # lines of the rho plot, bar groups of the gap plot
MAX_PANELS, MAX_CELLS, MAX_LABELLED_CELLS = 6, 1600, 150  # heatmap
MAX_LEGEND = 24  # sharpness: rho values + batch sizes in its legend
MAX_POINTS = 500  # per curve

_lock = threading.Lock()
_STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "samsweep",  # the same plot gives the same SVG
    "svg.fonttype": "path",  # no fonts needed where the SVG is viewed
}
COLORS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


class UnknownTrial(LookupError):
    pass


def render(
    kind: str,
    fmt: str,
    report: Report,
    trials: Sequence[TrialRecord],
    objective: str = "test_accuracy",
    trial: int | None = None,
) -> bytes:
    """The plot `kind` as `fmt` (svg or png) bytes. `trial` (a trial number) is for
    ``curves`` only; UnknownTrial when the study has no such trial."""
    if kind not in KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; kinds: {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    with _lock, matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        if kind == "curves":
            _curves(fig, report, trials, objective, trial)
        elif kind == "history":
            _history(fig, trials, objective)
        elif not any(t.state == TrialState.COMPLETE for t in trials):
            _message(fig, NO_TRIALS)
        elif (reason := too_large(kind, report, trials)) is not None:
            _message(fig, reason)
        else:
            draw = {
                "rho": _rho_scatter if report.sampler != "grid" else _rho,
                "gap": _gap,
                "heatmap": _heatmap,
                "sharpness": _sharpness,
                "importance": _importance,
            }
            draw[kind](fig, report, trials)  # fmt: skip
        out = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else {}
        fig.savefig(out, format=fmt, dpi=PNG_DPI if fmt == "png" else None, metadata=metadata)
    return out.getvalue()


def _message(fig: Figure, text: str) -> None:
    ax = fig.add_subplot()
    ax.set_axis_off()
    size = 14 if "\n" not in text else 11
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=size, color="#555555")


READ_INSTEAD = "every number is in the report:\nGET /studies/{id}/report?format=csv"


def too_large(kind: str, report: Report, trials: Sequence[TrialRecord]) -> str | None:
    """Why this plot of this study would be unreadable (and slow) to draw, or None."""
    groups = len(report.groups)
    if kind in ("rho", "gap") and groups > MAX_GROUPS:
        return (
            f"{groups} groups (optimizer × batch size × train and SAM setting):\n"
            f"more than the {MAX_GROUPS} this plot draws readably;\n{READ_INSTEAD}"
        )
    if kind == "heatmap":
        panels = {g.kind() for g in report.groups}
        rhos = {r.rho for g in report.groups for r in g.rows}
        sizes = {g.batch_size for g in report.groups}
        if len(panels) > MAX_PANELS or len(rhos) * len(sizes) > MAX_CELLS:
            return (
                f"{len(panels)} panels of {len(rhos)} ρ × {len(sizes)} batch sizes:\n"
                f"more than this heatmap draws readably ({MAX_PANELS} panels, "
                f"{MAX_CELLS} cells);\n{READ_INSTEAD}"
            )
    if kind == "sharpness":
        done = [t.params for t in trials if t.state == TrialState.COMPLETE]
        rhos, sizes = {p.rho for p in done}, {p.batch_size for p in done}
        if len(rhos) + len(sizes) > MAX_LEGEND:
            return (
                f"{len(rhos)} ρ values and {len(sizes)} batch sizes:\n"
                f"more than this plot tells apart ({MAX_LEGEND} in all);\n{READ_INSTEAD}"
            )
    return None


def _thin(points: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """At most MAX_POINTS points, evenly spaced, the last one kept."""
    if len(points) <= MAX_POINTS:
        return points
    step = math.ceil(len(points) / MAX_POINTS)
    kept = points[::step]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


def _mean_std(group: Group, rho: float, metric: str) -> tuple[float | None, float]:
    row = next((r for r in group.rows if r.rho == rho), None)
    if row is None:
        return None, 0.0
    s = row.metrics[metric]
    return s.mean, s.std or 0.0


def _label(report: Report, g: Group) -> str:
    """A legend's name for the group: `batch 128`, with the optimizer, the train setting
    and the SAM setting only where the study has several (Group.title names them all)."""
    opts = {x.base_optimizer for x in report.groups}
    trains = {x.train for x in report.groups}
    kinds = {(x.sam_variant, x.m) for x in report.groups}
    parts = [f"batch {g.batch_size}"]
    if len(opts) > 1:
        parts.insert(0, g.base_optimizer)
    if len(trains) > 1:
        parts.append(g.train)
    if len(kinds) > 1:
        parts.append(g.sam)
    return ", ".join(parts)


def _rho(fig: Figure, report: Report, trials: Sequence[TrialRecord]) -> None:
    ax = fig.add_subplot()
    sam_rhos = sorted({r.rho for g in report.groups for r in g.rows if r.rho > 0})
    for i, g in enumerate(report.groups):
        color = COLORS[i % len(COLORS)]
        label = _label(report, g)
        base, base_std = _mean_std(g, 0.0, "test_accuracy")
        if base is not None:
            ax.axhline(base, color=color, linestyle="--", linewidth=1.2)
            if base_std:
                ax.axhspan(base - base_std, base + base_std, color=color, alpha=0.08, lw=0)
        points = [
            (r.rho, r.metrics["test_accuracy"].mean, r.metrics["test_accuracy"].std or 0.0)
            for r in g.rows
            if r.rho > 0 and r.metrics["test_accuracy"].mean is not None
        ]
        if points:
            xs, ys, es = zip(*points, strict=True)
            ax.errorbar(xs, ys, yerr=es, color=color, marker="o", capsize=3, label=label)
            if g.selected_rho is not None:
                y, _ = _mean_std(g, g.selected_rho, "test_accuracy")
                if y is not None:
                    ax.plot([g.selected_rho], [y], marker="*", ms=13, color=color, mec="black")
        elif base is not None:
            ax.plot([], [], color=color, linestyle="--", label=label)
    ax.set_xscale("log")
    if sam_rhos:
        lo, hi = sam_rhos[0], sam_rhos[-1]
        pad = 1.6 if lo == hi else 1.25
        ax.set_xlim(lo / pad, hi * pad)
    else:  # baselines only: a log axis needs some positive range to draw on
        ax.set_xlim(0.01, 1.0)
        ax.text(0.5, 0.95, "no SAM ρ > 0 in this study", transform=ax.transAxes, ha="center")
    ax.set_xlabel("ρ (log scale); dashed: baseline ρ = 0, shaded ± std")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy vs ρ (mean ± std over seeds; ★ selected ρ)")
    ax.legend(loc="best", fontsize=8)


def _gap(fig: Figure, report: Report, trials: Sequence[TrialRecord]) -> None:
    ax = fig.add_subplot()
    bars: list[tuple[str, float | str, str, str]] = [
        ("baseline train", 0.0, "train_accuracy", "#9ecae1"),
        ("baseline test", 0.0, "test_accuracy", "#1f77b4"),
        ("SAM train", "selected", "train_accuracy", "#fdd0a2"),
        ("SAM test", "selected", "test_accuracy", "#e6550d"),
    ]
    width = 0.2
    labels = []
    for x, g in enumerate(report.groups):
        labels.append(
            _label(report, g) + ("" if g.selected_rho is None else f"\nρ={g.selected_rho:g}")
        )
        for j, (name, which, metric, color) in enumerate(bars):
            rho = g.selected_rho if which == "selected" else float(which)
            mean, std = (None, 0.0) if rho is None else _mean_std(g, rho, metric)
            if mean is None:
                continue
            ax.bar(
                x + (j - 1.5) * width, mean, width, yerr=std, capsize=2, color=color,
                label=None if name in ax.get_legend_handles_labels()[1] else name,
            )  # fmt: skip
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.18)  # room for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title("Generalization gap: train vs test, baseline vs SAM at the selected ρ")
    ax.legend(loc="upper center", fontsize=8, ncol=4)


def _heatmap(fig: Figure, report: Report, trials: Sequence[TrialRecord]) -> None:
    panels: dict[tuple, list[Group]] = {}
    for g in report.groups:
        panels.setdefault(g.kind(), []).append(g)
    rhos = sorted({r.rho for g in report.groups for r in g.rows})
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, ((opt, variant, m, *_), gs) in zip(axes, panels.items(), strict=True):
        gs = sorted(gs, key=lambda g: g.batch_size)
        grid = [[_mean_std(g, rho, "test_accuracy") for g in gs] for rho in rhos]
        values = [[math.nan if mean is None else mean for mean, _ in row] for row in grid]
        image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
        finite = [v for row in values for v in row if not math.isnan(v)]
        middle = (min(finite) + max(finite)) / 2 if finite else 0
        labelled = len(rhos) * len(gs) <= MAX_LABELLED_CELLS
        for i, row in enumerate(grid if labelled else []):
            for j, (mean, std) in enumerate(row):
                text = "—" if mean is None else f"{mean:.3f}" + (f"\n±{std:.3f}" if std else "")
                color = "black" if mean is not None and mean > middle else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(gs)), [str(g.batch_size) for g in gs])
        ax.set_yticks(range(len(rhos)), [f"{r:g}" for r in rhos])
        ax.set_xlabel("batch size")
        ax.set_ylabel("ρ (0 = baseline)")
        ax.grid(False)
        if len(panels) > 1:
            title = (opt, gs[0].train, sam_setting(variant, m))
            ax.set_title(", ".join(x for x in title if x), fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="mean test accuracy")
    fig.suptitle("Mean test accuracy over ρ × batch size")


def _sharpness(fig: Figure, report: Report, trials: Sequence[TrialRecord]) -> None:
    points = [
        (t.params.rho, t.params.batch_size, m["sharpness"], m["test_accuracy"])
        for t in trials
        if t.state == TrialState.COMPLETE
        and (m := t.metrics or {}).get("sharpness") is not None
        and m.get("test_accuracy") is not None
    ]
    if not points:
        _message(fig, "no sharpness measured\n(the spec's sharpness.samples is 0)")
        return
    ax = fig.add_subplot()
    rhos = sorted({p[0] for p in points})
    sizes = sorted({p[1] for p in points})
    cells: dict[tuple[Any, Any], list[tuple[float, float]]] = {}
    for r, b, s, a in points:  # one pass: a grid of 100 x 100 values is not 10^4 scans
        cells.setdefault((r, b), []).append((s, a))
    for (rho, bs), sel in cells.items():
        i, j = rhos.index(rho), sizes.index(bs)
        xs, ys = zip(*sel, strict=True)
        ax.scatter(
            xs, ys, color=COLORS[i % len(COLORS)], marker=MARKERS[j % len(MARKERS)],
            s=28, alpha=0.85, edgecolors="black", linewidths=0.4,
        )  # fmt: skip
    for i, rho in enumerate(rhos):  # legend: colour = rho, marker = batch size
        ax.scatter([], [], color=COLORS[i % len(COLORS)], marker="o", label=f"ρ={rho:g}")
    for j, bs in enumerate(sizes):
        ax.scatter([], [], color="#999999", marker=MARKERS[j % len(MARKERS)], label=f"batch {bs}")
    ax.set_xlabel("sharpness (loss increase in the ρ-ball)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Sharpness vs test accuracy (one point per complete trial)")
    ax.legend(loc="best", fontsize=7, ncol=2)


def _curves(
    fig: Figure,
    report: Report,
    trials: Sequence[TrialRecord],
    objective: str,
    number: int | None,
) -> None:
    if number is not None:
        chosen = [t for t in trials if t.number == number]
        if not chosen:
            raise UnknownTrial(f"no trial {number} in this study")
        p = chosen[0].params
        title = f"Trial {number} ({chosen[0].state}): {p.cell.label}, seed {p.seed}"
    else:
        found = best_cell(report, objective)
        if found is None:
            _message(fig, NO_TRIALS)
            return
        cell = found[0].cell(found[1])
        chosen = complete_trials(cell, trials)
        title = f"Best cell by {objective} ({len(chosen)} seeds): {cell.label}"
    if not any(t.curves for t in chosen):
        _message(fig, "no epochs recorded yet")
        return
    ax = fig.add_subplot()
    series = [("train_accuracy", "train", "#1f77b4"), ("val_accuracy", "validation", "#2ca02c"),
              ("test_accuracy", "test", "#e6550d")]  # fmt: skip
    for key, name, color in series:
        labelled = False
        for t in chosen:
            epochs = [(e["epoch"], e[key]) for e in t.curves or [] if e.get(key) is not None]
            if not epochs:
                continue
            xs, ys = zip(*_thin(epochs), strict=True)
            ax.plot(
                xs, ys, color=color, marker="o" if len(xs) <= 60 else None, ms=3,
                alpha=0.85 if len(chosen) == 1 else 0.6, label=None if labelled else name,
            )  # fmt: skip
            labelled = True
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right", fontsize=8)


def _history(fig: Figure, trials: Sequence[TrialRecord], objective: str) -> None:
    done = sorted(
        (t for t in trials
         if t.state == TrialState.COMPLETE and (t.metrics or {}).get(objective) is not None),
        key=lambda t: t.number,
    )  # fmt: skip
    if not done:
        _message(fig, NO_TRIALS)
        return
    ax = fig.add_subplot()
    for name, baseline, color in (("SAM", False, COLORS[1]), ("baseline", True, COLORS[0])):
        mine = [t for t in done if (t.params.rho == 0) == baseline]
        if not mine:
            continue
        xs, ys = zip(*_thin([(t.number, float((t.metrics or {})[objective])) for t in mine]),
                     strict=True)  # fmt: skip
        ax.scatter(xs, ys, color=color, s=16, alpha=0.7, label=f"{name} trials")
        best = list(itertools.accumulate(ys, max))
        ax.step(xs, best, where="post", color=color, linewidth=1.4, label=f"{name}: best so far")
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    ax.set_xlabel("trial number (the order trials were drawn)")
    ax.set_ylabel(objective)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    extra = f"; {pruned} pruned" if pruned else ""
    ax.set_title(f"Optimization history ({len(done)} complete trials{extra})")
    ax.legend(loc="lower right", fontsize=8)


MIN_IMPORTANCE_TRIALS = 4


def importances(trials: Sequence[TrialRecord], objective: str) -> dict[str, float]:
    """Optuna's param importances (its default evaluator, PED-ANOVA) over the complete SAM
    trials: each searched param that takes more than one value, by its importance.
    Empty below MIN_IMPORTANCE_TRIALS such trials or without a param that varies."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.params.rho > 0
            and (t.metrics or {}).get(objective) is not None]  # fmt: skip
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return {}
    names = [n for n in TrialParams.model_fields if n != "seed"]  # every searched param
    values = {n: [getattr(t.params, n) for t in done] for n in names}
    varied = [n for n in names if len(set(values[n])) > 1 and None not in values[n]]
    if not varied:
        return {}
    dists: dict[str, Any] = {}
    for n in varied:
        vs = values[n]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in vs)
        if numeric:
            low, high = float(min(vs)), float(max(vs))
            dists[n] = FloatDistribution(low, high, log=low > 0 and high / low >= 10)
        else:
            dists[n] = CategoricalDistribution(tuple(sorted(set(map(str, vs)))))
    study = optuna.create_study(direction="maximize")
    for i, t in enumerate(done):
        params = {n: (float(values[n][i]) if isinstance(dists[n], FloatDistribution)
                      else str(values[n][i])) for n in varied}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=float((t.metrics or {})[objective])
        ))  # fmt: skip
    return optuna.importance.get_param_importances(study)


def _importance(fig: Figure, report: Report, trials: Sequence[TrialRecord]) -> None:
    found = importances(trials, report.objective)
    if not found:
        _message(fig, f"param importances need {MIN_IMPORTANCE_TRIALS} complete SAM trials\n"
                      "whose searched params vary")  # fmt: skip
        return
    ax = fig.add_subplot()
    names = list(found)[::-1]  # the most important at the top
    ax.barh(names, [found[n] for n in names], color=COLORS[1])
    ax.set_xlabel(f"importance for {report.objective} (Optuna, PED-ANOVA)")
    ax.set_xlim(0, 1)
    ax.set_title("Param importances over the complete SAM trials")


def _rho_scatter(fig: Figure, report: Report, trials: Sequence[TrialRecord]) -> None:
    """A sampler's study: every complete SAM trial at its own ρ, by batch size."""
    done = [t for t in trials if t.state == TrialState.COMPLETE
            and (t.metrics or {}).get("test_accuracy") is not None]  # fmt: skip
    ax = fig.add_subplot()
    sizes = sorted({t.params.batch_size for t in done})
    for i, bs in enumerate(sizes):
        color = COLORS[i % len(COLORS)]
        sam = [t for t in done if t.params.batch_size == bs and t.params.rho > 0]
        if sam:
            ax.scatter([t.params.rho for t in sam],
                       [(t.metrics or {})["test_accuracy"] for t in sam],
                       color=color, s=22, alpha=0.8, edgecolors="black", linewidths=0.3,
                       label=f"batch {bs}")  # fmt: skip
        for g in report.groups:
            base = g.baseline_row()
            mean = base.metrics["test_accuracy"].mean if base else None
            if g.batch_size == bs and mean is not None:
                ax.axhline(mean, color=color, linestyle="--", linewidth=1.1)
                break
    ax.set_xscale("log")
    ax.set_xlabel("ρ (log scale); dashed: the tuned baseline's mean")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy vs ρ, one point per complete SAM trial")
    if sizes:
        ax.legend(loc="best", fontsize=8)
