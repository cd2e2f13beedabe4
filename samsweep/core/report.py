"""The generalization-gap report: per grid cell, mean ± std over seeds; per group, the
selected ρ, SAM's paired gain over the base optimizer, and the large-batch question.

A *group* is one (base optimizer, batch size, SAM variant, m), and learning rate and
weight decay where those are grid axes: its rows are the baseline (ρ = 0, the base
optimizer alone, shared by every variant and m of that optimizer, batch size and
train setting) and one row per SAM ρ. The protocol is the paper's:

- **Selection.** ρ is chosen per group by the mean over seeds of the study's selection
  metric: validation accuracy when the spec holds out a split, else test accuracy,
  which the report then flags (``selected_on_test``): a ρ picked on the test set
  overstates its own test accuracy.
- **Gain.** SAM's test-accuracy gain at the selected ρ over the baseline, from the
  per-seed differences (the same seed means the same initialization and data order,
  so the pairs share their noise), with a two-sided 95 % Student-t interval.
- **Large batches.** For each larger batch size, the baseline's test-accuracy drop
  from the smallest batch size, and the fraction of that drop SAM recovers at the
  selected ρ.

Cells that have not finished are counted by state, never dropped; failed and
infeasible cells carry their reasons. Pure computation: the API, the CLI and the
tests call :func:`build_report` on trials they read.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, computed_field
from scipy import stats

from samsweep.core.spec import (
    Cell,
    StudySpec,
    TrialParams,
    axis,
    sam_every_value,
    sam_schedule,
    sam_setting,
    sam_start_value,
    train_setting,
)
from samsweep.core.states import TrialState

# The per-trial metrics the rows aggregate, in the order tables show them.
METRICS = (
    "train_accuracy",
    "test_accuracy",
    "val_accuracy",
    "gap",
    "sharpness",
    "hessian_max_eig",
    "wall_seconds",
    "passes",
)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the report and the plots read it (a row of the trials table); the
    curves (per-epoch metrics) only where a plot draws them."""

    params: TrialParams
    state: TrialState
    metrics: dict[str, Any] | None = None
    error: str | None = None
    number: int = 0
    curves: list[dict[str, Any]] | None = None


class Stat(BaseModel):
    """Mean ± sample standard deviation (n − 1) over the n seeds that have the value."""

    mean: float | None
    std: float | None = Field(description="None with fewer than two values")
    n: int


class Row(BaseModel):
    rho: float
    baseline: bool = Field(description="rho = 0: the base optimizer alone")
    lr: float | None = Field(None, description="a searched study's configuration's lr")
    weight_decay: float | None = Field(None, description="... and weight decay")
    selected: bool = Field(
        False, description="the selected SAM row; in a searched study also the tuned baseline"
    )
    seeds: list[int] = Field(description="seeds of the complete trials, in order")
    counts: dict[str, int] = Field(description="trials per state")
    errors: list[str] = Field(description="reasons of failed or infeasible trials")
    metrics: dict[str, Stat] = Field(description=f"each of {', '.join(METRICS)}")

    @property
    def pruned(self) -> bool:
        """A seed of it was pruned: never selected, nor the best cell (the seeds left would
        be the lucky ones)."""
        return bool(self.counts.get(TrialState.PRUNED))


class Gain(BaseModel):
    """SAM at the selected rho minus the baseline, test accuracy, paired by seed."""

    metric: str = "test_accuracy"
    mean: float
    std: float | None
    n_pairs: int
    seeds: list[int]
    ci_low: float | None = Field(description=f"{CONFIDENCE:.0%} Student-t interval")
    ci_high: float | None
    excludes_zero: bool | None = Field(description="None below two pairs")
    compute_ratio: float | None = Field(
        None, description="SAM's mean passes over the baseline's: 2 at equal epochs, 1 at "
        "equal compute (train.baseline_epochs: double), less for SAM late or every k"
    )  # fmt: skip
    per_compute: float | None = Field(
        None, description="mean / compute_ratio: the gain per baseline run's worth of compute"
    )


class Group(BaseModel):
    base_optimizer: str
    batch_size: int
    sam_variant: str | None
    m: int | None
    lr: float | None = Field(None, description="when train.lr is a grid axis")
    weight_decay: float | None = Field(None, description="when train.weight_decay is an axis")
    sam_start: float | None = Field(None, description="SAM late: from this fraction on")
    sam_every: int | None = Field(None, description="SAM every k-th step")
    rows: list[Row]
    selected_rho: float | None = Field(description="best SAM rho by the selection metric")
    gain: Gain | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def title(self) -> str:
        """How tables name the group: 'sgd, batch 128, sam m=32' ('sgd, batch 128' in a
        study without SAM; 'sgd, batch 128, lr 0.1, sam' where lr is an axis)."""
        parts = (f"{self.base_optimizer}, batch {self.batch_size}", self.train, self.sam)
        return ", ".join(p for p in parts if p)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def sam(self) -> str:
        """Its SAM setting: 'sam', 'asam m=32', 'sam from 50% every 2'; '' in a study
        without SAM."""
        if not self.sam_variant:
            return ""
        return sam_setting(self.sam_variant, self.m) + sam_schedule(self.sam_start, self.sam_every)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def train(self) -> str:
        """Its train settings that are grid axes: 'lr 0.1, wd 0.0005'; '' if none is."""
        return train_setting(self.lr, self.weight_decay).removeprefix(", ")

    def kind(self) -> tuple[Any, ...]:
        """The group apart from its batch size: what the large-batch question compares
        across batch sizes, and a plot's panel."""
        return (self.base_optimizer, self.sam_variant, self.m, self.lr, self.weight_decay,
                self.sam_start, self.sam_every)  # fmt: skip

    def cell(self, row: Row) -> Cell:
        """The grid cell of one of this group's rows (the baseline's has no SAM setting)."""
        lr = row.lr if row.lr is not None else self.lr
        wd = row.weight_decay if row.weight_decay is not None else self.weight_decay
        return _cell(row.rho, self.batch_size, self.base_optimizer, self.sam_variant, self.m,
                     lr, wd, self.sam_start, self.sam_every)  # fmt: skip

    def baseline_row(self) -> Row | None:
        """The baseline SAM is compared with: the tuned one in a searched study (the
        selected baseline row), else the group's one."""
        rows = [r for r in self.rows if r.baseline]
        return next((r for r in rows if r.selected), rows[0] if rows else None)

    def sam_row(self) -> Row | None:
        """The selected SAM row, if any."""
        return next((r for r in self.rows if r.selected and not r.baseline), None)


class LargeBatch(BaseModel):
    """The large-batch question for one larger batch size of one (optimizer, variant, m)."""

    base_optimizer: str
    sam_variant: str | None
    m: int | None
    lr: float | None = None
    weight_decay: float | None = None
    sam_start: float | None = None
    sam_every: int | None = None
    small_batch_size: int
    batch_size: int
    selected_rho: float | None
    baseline_drop: float | None = Field(description="baseline test acc., small minus this")
    sam_drop: float | None = Field(description="SAM (selected rho) at this size, same reference")
    recovered_fraction: float | None = Field(
        description="(SAM - baseline) / baseline drop at this size; None without a drop"
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def sam(self) -> str:
        """Its SAM setting: 'sam', 'asam m=32', 'sam from 50%'."""
        if not self.sam_variant:
            return ""
        return sam_setting(self.sam_variant, self.m) + sam_schedule(self.sam_start, self.sam_every)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def train(self) -> str:
        """Its train settings that are grid axes: 'lr 0.1'; '' if none is."""
        return train_setting(self.lr, self.weight_decay).removeprefix(", ")


class Report(BaseModel):
    objective: str
    sampler: str = Field("grid", description="grid, or the sampler that drew the study")
    selection_metric: str
    selected_on_test: bool = Field(description="rho was selected on the test set")
    comparison: str = Field(
        "equal epochs", description="equal epochs (the baseline trains train.epochs, half "
        "SAM's compute), or equal compute (train.baseline_epochs: double)"
    )  # fmt: skip
    counts: dict[str, int]
    n_trials: int
    groups: list[Group]
    large_batch: list[LargeBatch]

    def to_dataframe(self) -> Any:
        """The rows as a pandas DataFrame, one per (group, rho), in CSV_COLUMNS order (the
        CSV export's columns). Needs pandas (`pip install 'samsweep[pandas]'`)."""
        pd = require_pandas("Report.to_dataframe()")
        return pd.DataFrame.from_records(to_rows(self), columns=list(CSV_COLUMNS))


def require_pandas(what: str) -> Any:
    """pandas, imported only when a DataFrame is asked for; a clear error without it."""
    try:
        import pandas
    except ImportError:
        raise ImportError(
            f"{what} needs pandas: pip install 'samsweep[pandas]' (or pandas itself)"
        ) from None
    return pandas


def stat(values: Sequence[float]) -> Stat:
    if not values:
        return Stat(mean=None, std=None, n=0)
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return Stat(mean=mean, std=None, n=len(values))
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return Stat(mean=mean, std=math.sqrt(var), n=len(values))


def paired_gain(sam: dict[int, float], base: dict[int, float]) -> Gain | None:
    """SAM minus baseline over the seeds both have, with a Student-t interval."""
    seeds = sorted(sam.keys() & base.keys())
    if not seeds:
        return None
    diffs = [sam[s] - base[s] for s in seeds]
    d = stat(diffs)
    assert d.mean is not None
    low = high = excludes = None
    # n = 1 has no spread to estimate; identical differences (std 0, common when accuracy
    # moves in steps of 1/N) give a zero-width "interval" that two seeds cannot support
    if d.std is not None and d.std > 0:
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(diffs) - 1) * d.std / math.sqrt(len(diffs))
        low, high = d.mean - half, d.mean + half
        excludes = low > 0 or high < 0
    return Gain(
        mean=d.mean, std=d.std, n_pairs=len(diffs), seeds=seeds,
        ci_low=low, ci_high=high, excludes_zero=excludes,
    )  # fmt: skip


def selection_metric(spec: StudySpec) -> str:
    """Validation accuracy when there is a split (the paper's protocol), else test."""
    return "val_accuracy" if spec.dataset.val_fraction > 0 else "test_accuracy"


def build_report(spec: StudySpec, trials: Iterable[TrialRecord]) -> Report:
    select_on = selection_metric(spec)
    cells: dict[str, list[TrialRecord]] = defaultdict(list)
    for t in trials:
        cells[t.params.cell_key].append(t)
    all_counts: Counter[str] = Counter()
    rows: dict[str, Row] = {}
    per_seed: dict[str, dict[str, dict[int, float]]] = {}  # cell -> metric -> seed -> value
    for key, ts in cells.items():
        ts.sort(key=lambda t: t.params.seed)
        counts = Counter(str(t.state) for t in ts)
        all_counts.update(counts)
        done = [
            (t.params.seed, t.metrics) for t in ts if t.state == TrialState.COMPLETE and t.metrics
        ]
        values = {
            name: {seed: float(v) for seed, m in done if (v := m.get(name)) is not None}
            for name in METRICS
        }
        per_seed[key] = values
        rows[key] = Row(
            rho=ts[0].params.rho,
            baseline=ts[0].params.rho == 0,
            lr=ts[0].params.lr if spec.sampler.searches else None,
            weight_decay=ts[0].params.weight_decay if spec.sampler.searches else None,
            seeds=[seed for seed, _ in done],
            counts=dict(sorted(counts.items())),
            errors=[t.error for t in ts if t.error and t.state != TrialState.CANCELLED],
            metrics={name: stat(list(v.values())) for name, v in values.items()},
        )

    if spec.sampler.searches:
        groups = _searched_groups(cells, rows, per_seed, select_on)
    else:
        groups = _grid_groups(spec, rows, per_seed, select_on)
    for g in groups:  # SAM's compute against the baseline's, for the gain per compute
        g.gain = _with_compute(g.gain, g.sam_row(), g.baseline_row())
    return Report(
        objective=spec.objective,
        sampler=spec.sampler.name,
        selection_metric=select_on,
        selected_on_test=select_on == "test_accuracy",
        comparison="equal compute" if spec.train.baseline_epochs == "double" else "equal epochs",
        counts=dict(sorted(all_counts.items())),
        n_trials=sum(all_counts.values()),
        groups=groups,
        large_batch=_large_batch(groups),
    )


PerSeed = dict[str, dict[str, dict[int, float]]]  # cell -> metric -> seed -> value


def _grid_groups(
    spec: StudySpec, rows: dict[str, Row], per_seed: PerSeed, select_on: str
) -> list[Group]:
    s = spec.search
    assert isinstance(s.rho, list)  # a grid's
    sam_rhos = sorted(r for r in s.rho if r > 0)  # rows and plots in rho order
    # Without a SAM rho there is one group per (optimizer, batch size): its baseline.
    kinds = list(itertools.product(
        s.sam_variant, s.m, map(sam_start_value, s.sam_start), map(sam_every_value, s.sam_every)
    )) if sam_rhos else [(None, None, None, None)]  # fmt: skip
    groups: list[Group] = []
    batches = sorted(s.batch_size)
    settings = list(itertools.product(axis(spec.train.lr), axis(spec.train.weight_decay)))
    for opt, batch, (lr, wd), (variant, m, start, every) in itertools.product(
        s.base_optimizer, batches, settings, kinds
    ):
        base_key = _key(0.0, batch, opt, None, None, lr, wd)
        sam_keys = [_key(r, batch, opt, variant, m, lr, wd, start, every) for r in sam_rhos]
        keys = [k for k in [base_key, *sam_keys] if k in rows]
        if not keys:
            continue
        selected = _select(sam_keys, rows, select_on)
        gain = None
        if selected is not None and base_key in per_seed:
            gain = paired_gain(
                per_seed[selected]["test_accuracy"], per_seed[base_key]["test_accuracy"]
            )
        group_rows = [rows[k].model_copy(update={"selected": k == selected}) for k in keys]
        groups.append(
            Group(
                base_optimizer=opt,
                batch_size=batch,
                sam_variant=variant,
                m=m,
                lr=lr,
                weight_decay=wd,
                sam_start=start,
                sam_every=every,
                rows=group_rows,
                selected_rho=rows[selected].rho if selected else None,
                gain=gain,
            )  # fmt: skip
        )
    return groups


def _searched_groups(
    cells: dict[str, list[TrialRecord]], rows: dict[str, Row], per_seed: PerSeed, select_on: str
) -> list[Group]:
    """A sampler's study: per (optimizer, batch size, SAM variant, m), every configuration
    it ran is a row, the baselines first (each baseline configuration in every variant's
    and m's group of its optimizer and batch size). SAM's best configuration by the
    selection metric is compared with the best *baseline* configuration (the baseline is
    tuned too), paired by seed."""
    params = {key: ts[0].params for key, ts in cells.items()}

    def sam_kind(p: TrialParams) -> tuple[Any, ...]:
        return (p.sam_variant, p.m, p.sam_start, p.sam_every)

    kinds = sorted({sam_kind(p) for p in params.values() if p.rho > 0},
                   key=lambda k: (k[0] or "", k[1] or 0, k[2] or 0.0, k[3] or 1),
                   ) or [(None, None, None, None)]  # fmt: skip
    pairs = sorted({(p.base_optimizer, p.batch_size) for p in params.values()},
                   key=lambda k: (k[1], k[0]))  # fmt: skip
    groups = []
    for (opt, batch), kind in itertools.product(pairs, kinds):

        def order(k: str) -> tuple[float, float, float]:
            p = params[k]
            return (p.rho, p.lr or 0.0, p.weight_decay or 0.0)

        mine = [k for k, p in params.items() if (p.base_optimizer, p.batch_size) == (opt, batch)]
        base_keys = sorted((k for k in mine if params[k].rho == 0), key=order)
        sam_keys = sorted(
            (k for k in mine if params[k].rho > 0 and sam_kind(params[k]) == kind),
            key=order,
        )
        if not base_keys and not sam_keys:
            continue
        selected = _select(sam_keys, rows, select_on)
        tuned = _select(base_keys, rows, select_on, baseline=True)
        gain = None
        if selected is not None and tuned is not None:
            gain = paired_gain(
                per_seed[selected]["test_accuracy"], per_seed[tuned]["test_accuracy"]
            )
        groups.append(
            Group(
                base_optimizer=opt, batch_size=batch, sam_variant=kind[0], m=kind[1],
                sam_start=kind[2], sam_every=kind[3],
                rows=[rows[k].model_copy(update={"selected": k in (selected, tuned)})
                      for k in base_keys + sam_keys],
                selected_rho=rows[selected].rho if selected else None,
                gain=gain,
            )
        )  # fmt: skip
    return groups


def _cell(
    rho: float, batch: int, opt: str, variant: str | None, m: int | None,
    lr: float | None = None, wd: float | None = None,
    start: float | None = None, every: int | None = None,
) -> Cell:  # fmt: skip
    return Cell(rho=rho, batch_size=batch, base_optimizer=opt, sam_variant=variant, m=m,
                lr=lr, weight_decay=wd, sam_start=start, sam_every=every)  # fmt: skip


def _key(
    rho: float, batch: int, opt: str, variant: str | None, m: int | None,
    lr: float | None = None, wd: float | None = None,
    start: float | None = None, every: int | None = None,
) -> str:  # fmt: skip
    return _cell(rho, batch, opt, variant, m, lr, wd, start, every).key


def _with_compute(gain: Gain | None, sam: Row | None, base: Row | None) -> Gain | None:
    """The gain with SAM's compute against the baseline's (mean passes) and the gain per
    baseline run's worth of compute."""
    if gain is None or sam is None or base is None:
        return gain
    s, b = sam.metrics["passes"].mean, base.metrics["passes"].mean
    if not s or not b:
        return gain
    ratio = s / b
    return gain.model_copy(update={"compute_ratio": ratio, "per_compute": gain.mean / ratio})


def _select(
    keys: list[str], rows: dict[str, Row], metric: str, baseline: bool = False
) -> str | None:
    """The cell with the highest mean selection metric (ties: the smaller rho; for
    baselines, the first). A cell with a pruned trial is never selected: its pruner judged
    it hopeless, and the mean of the seeds it kept would be the lucky ones'."""
    scored = [(rows[k].metrics[metric].mean, 0.0 if baseline else -rows[k].rho, -i, k)
              for i, k in enumerate(keys) if k in rows
              and not rows[k].pruned]  # fmt: skip
    scored = [s for s in scored if s[0] is not None]
    return max(scored)[3] if scored else None


def _mean(row: Row | None) -> float | None:
    return row.metrics["test_accuracy"].mean if row else None


def _large_batch(groups: list[Group]) -> list[LargeBatch]:
    by_kind: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups:
        by_kind[g.kind()].append(g)
    out = []
    for (opt, variant, m, lr, wd, start, every), gs in by_kind.items():
        gs = sorted(gs, key=lambda g: g.batch_size)
        small = next((g for g in gs if _mean(g.baseline_row()) is not None), None)
        if small is None:
            continue
        base_small = _mean(small.baseline_row())
        assert base_small is not None
        for g in gs:
            if g.batch_size <= small.batch_size:
                continue
            base, sam = _mean(g.baseline_row()), _mean(g.sam_row())
            drop = None if base is None else base_small - base
            recovered = None
            if drop is not None and drop > 0 and sam is not None and base is not None:
                recovered = (sam - base) / drop
            out.append(
                LargeBatch(
                    base_optimizer=opt,
                    sam_variant=variant,
                    m=m,
                    lr=lr,
                    weight_decay=wd,
                    sam_start=start,
                    sam_every=every,
                    small_batch_size=small.batch_size,
                    batch_size=g.batch_size,
                    selected_rho=g.selected_rho,
                    baseline_drop=drop,
                    sam_drop=None if sam is None else base_small - sam,
                    recovered_fraction=recovered,
                )  # fmt: skip
            )
    return out


def best_cell(report: Report, metric: str) -> tuple[Group, Row] | None:
    """The grid cell (baseline or SAM) with the highest mean `metric` over seeds; ties go
    to the earlier row (the smaller rho, the smaller batch size). The one definition of
    the best cell: /best, the curves plot and the index select with it. A cell with a
    pruned trial is not a candidate (`_select`)."""
    best: tuple[float, Group, Row] | None = None
    for g in report.groups:
        for row in g.rows:
            mean = row.metrics[metric].mean
            if row.pruned:
                continue
            if mean is not None and (best is None or mean > best[0]):
                best = (mean, g, row)
    return None if best is None else (best[1], best[2])


def complete_trials(cell: Cell, trials: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The cell's complete trials (its seeds), in the order given."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.params.cell == cell]


CSV_COLUMNS = (
    [
        "base_optimizer",
        "batch_size",
        "sam_variant",
        "m",
        "sam_start",
        "sam_every",
        "lr",
        "weight_decay",
        "rho",
        "baseline",
        "selected",
        "n",
    ]  # fmt: skip
    + [f"{metric}_{part}" for metric in METRICS for part in ("mean", "std")]
    + [
        "gain_mean",
        "gain_ci_low",
        "gain_ci_high",
        "gain_n_pairs",
        "gain_compute_ratio",
        "gain_per_compute",
        "counts",
        "errors",
    ]  # fmt: skip
)


def to_rows(report: Report) -> list[dict[str, Any]]:
    """One flat record per report row, in CSV_COLUMNS order (SAM's gain on the selected
    row; a baseline shared by several variants or m appears once per group)."""
    out = []
    for g in report.groups:
        for row in g.rows:
            selected = row.selected and not row.baseline
            record: dict[str, Any] = {
                "base_optimizer": g.base_optimizer,
                "batch_size": g.batch_size,
                "sam_variant": None if row.baseline else g.sam_variant,
                "m": None if row.baseline else g.m,
                "sam_start": None if row.baseline else g.sam_start,
                "sam_every": None if row.baseline else g.sam_every,
                "lr": row.lr if row.lr is not None else g.lr,
                "weight_decay": row.weight_decay
                if row.weight_decay is not None
                else g.weight_decay,
                "rho": row.rho,
                "baseline": row.baseline,
                "selected": selected,
                "n": len(row.seeds),
            }
            for metric in METRICS:
                record[f"{metric}_mean"] = row.metrics[metric].mean
                record[f"{metric}_std"] = row.metrics[metric].std
            gain = g.gain if selected else None
            record.update(
                gain_mean=gain.mean if gain else None,
                gain_ci_low=gain.ci_low if gain else None,
                gain_ci_high=gain.ci_high if gain else None,
                gain_n_pairs=gain.n_pairs if gain else None,
                gain_compute_ratio=gain.compute_ratio if gain else None,
                gain_per_compute=gain.per_compute if gain else None,
                counts=" ".join(f"{k}={v}" for k, v in row.counts.items()),
                errors=" | ".join(row.errors),
            )
            out.append(record)
    return out
