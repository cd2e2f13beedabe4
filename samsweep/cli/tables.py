"""What the terminal shows, with rich: the progress bar, the studies, trials and report
tables, and the best cell.

On a terminal the progress bar redraws in place; elsewhere (a log file, CI) it prints a
plain line each time something changes, and tables print without colour at a width
that keeps their rows on one line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from rich import box
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from samsweep.core.report import Group, Report, Row, Stat
from samsweep.core.spec import Cell, train_setting
from samsweep.core.wire import Best, StudyDetail, StudySummary
from samsweep.core.wire import TrialPublic as Trial

# Not a terminal and no COLUMNS: wide enough that a report row stays on one line.
LOG_WIDTH = 200


def console(file: IO[str] | None = None) -> Console:
    """A console on stdout (or `file`, e.g. sys.stderr)."""
    out = file or sys.stdout
    width = None
    if not out.isatty() and "COLUMNS" not in os.environ:
        width = LOG_WIDTH
    # markup=False: study names and errors are user text, never rich markup
    return Console(file=out, width=width, highlight=False, soft_wrap=False, markup=False)


# --- progress --------------------------------------------------------------------------


class ProgressView:
    """Shows a study's progress: a live rich bar on a terminal, a line per change elsewhere.

    with ProgressView() as view:
        client.wait(study_id, on_progress=view.update)
    """

    def __init__(self, file: IO[str] | None = None) -> None:
        self.console = console(file or sys.stderr)
        self.live = self.console.is_terminal
        self._last: tuple | None = None
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ProgressView:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("trials  {task.fields[states]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, detail: StudyDetail) -> None:
        p, c = detail.progress, detail.counts
        running, failed = c.get("RUNNING", 0), c.get("FAILED", 0) + c.get("INFEASIBLE", 0)
        states = f"running {running}  failed {failed}"
        if c.get("PRUNED"):
            states += f"  pruned {c['PRUNED']}"
        if self._progress is not None:
            if self._task is None:
                self._task = self._progress.add_task(
                    f"study {detail.id}", total=p.total, completed=p.finished, states=""
                )
            self._progress.update(
                self._task, completed=p.finished, states=f"{states}  {detail.status}", refresh=True
            )
            return
        state = (p.finished, running, failed, str(detail.status))
        if state != self._last:
            width, done = 30, int(30 * p.fraction)
            elapsed = detail.timings.elapsed_seconds or 0.0
            self.console.print(
                f"[{'#' * done}{'.' * (width - done)}] {p.finished}/{p.total} trials"
                f"  {states}  {detail.status}  {elapsed:5.0f}s",
                markup=False,
            )
            self._last = state


# --- formatting --------------------------------------------------------------------------

PERCENT = {"train_accuracy", "test_accuracy", "val_accuracy", "gap"}


def _num(metric: str, x: float | None) -> str:
    if x is None:
        return "-"
    if metric in PERCENT:
        return f"{100 * x:.2f}"
    if metric == "passes":
        return f"{x:.0f}"
    if metric == "wall_seconds":
        return f"{x:.1f}"
    return f"{x:.4g}"


def stat_text(metric: str, s: Stat) -> str:
    """`mean ± std` (accuracies and gap in %); `-` with no value, no ± with one seed."""
    if s.mean is None:
        return "-"
    if s.std is None:
        return _num(metric, s.mean)
    return f"{_num(metric, s.mean)} ± {_num(metric, s.std)}"


def method(params: dict[str, Any]) -> str:
    """The trial's cell within its optimizer and batch size (`Cell.method`), with its
    train settings where those are grid axes ('sam 0.05, lr 0.1')."""
    cell = Cell.from_params(params)
    return cell.method + train_setting(cell.lr, cell.weight_decay)


def _table(title: str | None = None) -> Table:
    return Table(
        title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False
    )


# --- studies, a study, trials --------------------------------------------------------------


def studies_table(studies: Iterable[StudySummary]) -> Table:
    t = _table()
    for name, justify in [("id", "left"), ("name", "left"), ("status", "left"),
                          ("trials", "right"), ("created", "left")]:  # fmt: skip
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in studies:
        created = s.created_at.strftime("%Y-%m-%d %H:%M:%S")
        t.add_row(s.id, s.name, str(s.status), str(s.n_trials), created)
    return t


def study_lines(detail: StudyDetail, page_url: str) -> list[str]:
    p, t = detail.progress, detail.timings
    counts = "  ".join(f"{k.lower()} {v}" for k, v in detail.counts.items() if v)
    elapsed = "" if t.elapsed_seconds is None else f", {t.elapsed_seconds:.0f}s"
    return [
        f"study {detail.id} ({detail.name}): {detail.status}",
        f"{p.finished}/{p.total} trials finished ({100 * p.fraction:.0f}%{elapsed}): {counts}",
        f"page: {page_url}",
    ]


def trials_table(trials: Iterable[Trial]) -> Table:
    """One row per trial (accuracies in %)."""
    t = _table("trials (accuracies in %)")
    for name in ["#", "optimizer", "batch", "method", "seed", "state"]:
        t.add_column(name, justify="right" if name in ("#", "batch", "seed") else "left")
    for name in ["train", "test", "val", "gap", "secs"]:
        t.add_column(name, justify="right")
    t.add_column("error")
    for tr in trials:
        p, m = tr.params, tr.metrics or {}
        t.add_row(
            str(tr.number),
            p["base_optimizer"],
            str(p["batch_size"]),
            method(p),
            str(p["seed"]),
            tr.state,
            *(_num(k, m.get(k)) for k in ("train_accuracy", "test_accuracy", "val_accuracy")),
            _num("gap", m.get("gap")),
            _num("wall_seconds", m.get("wall_seconds")),
            tr.error or "",
        )
    return t


# --- the report ------------------------------------------------------------------------


def _columns(report: Report) -> list[tuple[str, str]]:
    """(metric, header); validation only where some row has it."""
    has_val = any(r.metrics["val_accuracy"].n for g in report.groups for r in g.rows)
    cols = [("train_accuracy", "train %"), ("test_accuracy", "test %")]
    if has_val:
        cols.append(("val_accuracy", "val %"))
    return cols + [
        ("gap", "gap (pp)"),
        ("sharpness", "sharpness"),
        ("hessian_max_eig", "top eig."),
        ("wall_seconds", "secs"),
        ("passes", "passes"),  # compute: forward+backward passes (SAM two per step)
    ]


def _done(row: Row) -> str:
    """`n` seeds complete, and the other states when not all are."""
    total = sum(row.counts.values())
    done = row.counts.get("COMPLETE", 0)
    if done == total:
        return str(done)
    rest = ", ".join(f"{v} {k.lower()}" for k, v in row.counts.items() if k != "COMPLETE" and v)
    return f"{done}/{total} ({rest})"


def group_table(report: Report, g: Group) -> Table:
    """The group's rows; in a sampler's study each row is a configuration, with its lr and
    weight decay, and the tuned baseline is marked selected too."""
    t = _table(g.title)
    t.add_column("rho", justify="right")
    settings = [n for n in ("lr", "weight_decay") if any(getattr(r, n) is not None for r in g.rows)]
    for name in settings:
        t.add_column("lr" if name == "lr" else "wd", justify="right")
    t.add_column("")
    t.add_column("seeds", justify="right")
    cols = _columns(report)
    for _, header in cols:
        t.add_column(header, justify="right")
    for row in g.rows:
        mark = ("baseline" if row.baseline else "") + (" selected" if row.selected else "")
        t.add_row(
            f"{row.rho:.3g}",
            *(f"{getattr(row, n):.3g}" for n in settings),
            mark.strip(),
            _done(row),
            *(stat_text(metric, row.metrics[metric]) for metric, _ in cols),
            style="bold" if row.selected else None,
        )
    return t


def gain_line(g: Group) -> str:
    if g.selected_rho is None:
        return "  no SAM rho has a complete trial yet: no selection, no gain"
    gain = g.gain
    if gain is None:
        return f"  SAM's gain at rho {g.selected_rho:g}: no seed with both SAM and the baseline"
    head = (
        f"  SAM's gain at rho {g.selected_rho:g} (test accuracy, paired over"
        f" {gain.n_pairs} seed{'s' if gain.n_pairs != 1 else ''}): {100 * gain.mean:+.2f} pp"
    )
    if gain.ci_low is None or gain.ci_high is None:
        why = "one pair" if gain.n_pairs < 2 else "every pair differs alike"
        line = head + f" ({why}: no interval)"
    else:
        verdict = "excludes zero" if gain.excludes_zero else "includes zero: not significant"
        line = f"{head}, 95% CI [{100 * gain.ci_low:+.2f}, {100 * gain.ci_high:+.2f}]: {verdict}"
    if gain.compute_ratio is not None and gain.per_compute is not None:
        line += (f"; at {gain.compute_ratio:.2f}x the baseline's compute:"
                 f" {100 * gain.per_compute:+.2f} pp per baseline run")  # fmt: skip
    return line


def large_batch_table(report: Report) -> Table | None:
    if not report.large_batch:
        return None
    t = _table("large batches: the baseline's test-accuracy drop and what SAM recovers")
    for name in ["optimizer", "method", "batch", "vs batch", "rho", "baseline drop (pp)",
                 "SAM drop (pp)", "recovered"]:  # fmt: skip
        t.add_column(name, justify="left" if name in ("optimizer", "method") else "right")
    for lb in report.large_batch:
        frac = lb.recovered_fraction
        t.add_row(
            lb.base_optimizer,
            ", ".join(x for x in (lb.train, lb.sam) if x) or "-",
            str(lb.batch_size),
            str(lb.small_batch_size),
            "-" if lb.selected_rho is None else f"{lb.selected_rho:g}",
            _num("gap", lb.baseline_drop),
            _num("gap", lb.sam_drop),
            "- (no drop)" if frac is None else f"{100 * frac:.0f}%",
        )
    return t


def selection_lines(report: Report) -> list[str]:
    lines = [
        f"rho selected per group by the mean {report.selection_metric} over seeds;"
        f" SAM against the baseline at {report.comparison}"
    ]
    if report.selected_on_test:
        lines.append(
            "warning: rho was selected on the test set, so the selected rho's test accuracy"
            " (and SAM's gain) is optimistic; hold out a validation split"
            " (dataset.val_fraction) to select on it"
        )
    return lines


def report_renderables(report: Report) -> list[RenderableType]:
    """The report as the terminal shows it: a table per group (baseline, each rho, the
    selected one marked) with SAM's gain under it, the large-batch table, and which
    metric selected rho (a warning when it was the test set)."""
    counts = ", ".join(f"{v} {k.lower()}" for k, v in report.counts.items())
    out: list[RenderableType] = [
        Text(
            f"report: {report.n_trials} trials ({counts}); mean ± std over seeds;"
            " accuracies and gap in %"
        )
    ]
    for g in report.groups:
        out += [group_table(report, g), Text(gain_line(g))]
        errors = sorted({e for row in g.rows for e in row.errors})
        out += [Text(f"  failed: {e}") for e in errors]
    lb = large_batch_table(report)
    if lb is not None:
        out.append(lb)
    out += [Text(line) for line in selection_lines(report)]
    return out


def best_lines(best: Best) -> list[str]:
    """The best cell by its mean over seeds, then the single best trial."""
    out = []
    c = best.cell
    if c is None:
        counts = ", ".join(f"{v} {k.lower()}" for k, v in best.counts.items() if v)
        out.append(f"no complete trial yet ({counts})")
    else:
        kind = method(c.model_dump())  # with its lr and weight decay where they vary
        m = c.metrics
        out.append(
            f"best cell by mean {best.objective} over {c.n} seed{'s' if c.n != 1 else ''}:"
            f" {c.base_optimizer} batch {c.batch_size} {kind}:"
            f" {best.objective} {stat_text(best.objective, c.objective)}%"
            f"  (test {stat_text('test_accuracy', m['test_accuracy'])}%,"
            f" train {stat_text('train_accuracy', m['train_accuracy'])}%,"
            f" gap {stat_text('gap', m['gap'])})"
        )
    b = best.best
    if b is not None:
        p, tm = b.params, b.metrics
        out.append(
            f"best by {best.objective}: {p['base_optimizer']} batch {p['batch_size']} "
            f"{method(p)} seed {p['seed']}: test {100 * tm['test_accuracy']:.2f}%  "
            f"train {100 * tm['train_accuracy']:.2f}%  gap {100 * tm['gap']:.2f}"
            "  (the single best trial)"
        )
    if best.selected_on_test:
        out.append("warning: selected on the test set (the study's objective is test accuracy)")
    if not best.complete:
        out.append(f"the study is {best.status}: these may change")
    return out
