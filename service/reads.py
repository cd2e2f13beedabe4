"""Every query the API runs to answer a read, in one place: routes validate, call these,
and map what they return to the response models (samsweep.core.wire). The writes
(create, cancel) are service/studies.py; sending to the broker, service/dispatch.py.

- a study (`get_study`, 404 for another owner's) and pages of studies with their counts;
- counts per state, `progress` and `study_status`: the one place they are derived;
- `snapshot`: counts, timings and the two digests reads are cached and ETagged on;
- the report's input (`trial_records`) and the report itself (`study_report`), from
  which /best, the plots and the page take the best cell (samsweep.core.report.best_cell);
- a page of trials and their curves (`trial_curves`); the trials a plot draws, with only
  the curves it draws;
- `ping`: /health's check that the database answers;
- `best_means`: the index's best-cell mean per study in one grouped query (equal to the
  report's best cell: tests/service/test_reads.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from samsweep.core.db import Study, Trial, curves_for, utcnow
from samsweep.core.ids import STUDY_ID
from samsweep.core.report import Report, TrialRecord, best_cell, build_report, complete_trials
from samsweep.core.spec import StudySpec, TrialParams
from samsweep.core.states import FINISHED_STATES, StudyStatus, TrialState
from samsweep.core.wire import Progress
from service.cache import VersionedCache
from service.errors import Conflict, NotFound


def ping(session: Session) -> None:
    """Raises if the database does not answer."""
    session.execute(text("SELECT 1"))


def get_study(session: Session, study_id: str, owner: str | None = None) -> Study:
    """The study, or 404; an id that cannot be one (NUL, 5 kB, ...) never reaches the DB."""
    study = session.get(Study, study_id) if STUDY_ID.fullmatch(study_id) else None
    if study is None or (owner is not None and study.owner != owner):
        raise NotFound(f"no study with id {study_id[:64]!r}")
    return study


def list_studies(
    session: Session, limit: int, offset: int, owner: str | None = None
) -> tuple[list[Study], int]:
    query = select(Study)
    count = select(func.count()).select_from(Study)
    if owner is not None:
        query, count = query.where(Study.owner == owner), count.where(Study.owner == owner)
    rows = session.scalars(
        query.order_by(Study.created_at.desc(), Study.id).limit(limit).offset(offset)
    )
    return list(rows), session.scalar(count) or 0


def state_counts(session: Session, study_id: str) -> dict[str, int]:
    return state_counts_many(session, [study_id])[study_id]


def state_counts_many(session: Session, study_ids: list[str]) -> dict[str, dict[str, int]]:
    """Trials per state for each study, every state present (0 if none): one query."""
    counts = {sid: Counter({s.value: 0 for s in TrialState}) for sid in study_ids}
    rows = session.execute(
        select(Trial.study_id, Trial.state, func.count())
        .where(Trial.study_id.in_(study_ids))
        .group_by(Trial.study_id, Trial.state)
    )
    for sid, state, n in rows:
        counts[sid][state] = n
    return {sid: dict(c) for sid, c in counts.items()}


def progress(n_trials: int, counts: dict[str, int]) -> Progress:
    """How many of the study's trials have finished (complete, pruned, failed, infeasible
    or cancelled: FINISHED_STATES), of how many."""
    finished = sum(counts[s] for s in FINISHED_STATES)
    return Progress(
        total=n_trials, finished=finished, fraction=finished / n_trials if n_trials else 0.0
    )


def study_status(study: Study, counts: dict[str, int]) -> StudyStatus:
    """Derived from the trials' states: cancelled or complete once every trial has
    finished, running once one has started, else queued."""
    finished = progress(study.n_trials, counts).finished
    if study.cancelled_at is not None and finished == study.n_trials:
        return StudyStatus.CANCELLED
    if finished == study.n_trials:
        return StudyStatus.COMPLETE
    if counts[TrialState.RUNNING] or finished:
        return StudyStatus.RUNNING
    return StudyStatus.QUEUED


def elapsed_seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return ((end or utcnow()) - start).total_seconds()


@dataclass(frozen=True)
class Snapshot:
    """A study's trials at one moment: counts per state (every state present), the first
    start and last finish, and two digests that reads are cached and ETagged on:

    - `results` changes whenever the report can: a trial is claimed, re-queued, finishes
      (with its metrics or error) or is cancelled, the study is cancelled, its stored
      spec is rewritten (by a migration, say). Reports, /best and every plot but the
      curves are keyed on it, so a running study's epochs do not churn them.
    - `version` changes on those and on every epoch recorded or heartbeat: the worker
      writes `heartbeat_at` with each epoch's row (a resumed attempt re-recording an
      earlier epoch included), so its maximum moves whenever curves can have changed.
      The curves plot is keyed on it.
    """

    counts: dict[str, int]
    timings: dict[str, Any]
    results: str
    version: str


def snapshot(session: Session, study: Study) -> Snapshot:
    """One grouped query over the study's trials (their (study_id, number) index)."""
    counts = {s.value: 0 for s in TrialState}
    started = last = None
    results = hashlib.sha256(f"{study.id}|{study.cancelled_at}|".encode())
    results.update(json.dumps(study.spec, sort_keys=True).encode())  # bounded: a few KB
    rows = session.execute(
        select(
            Trial.state,
            func.count(),
            func.min(Trial.started_at),
            func.max(Trial.finished_at),
            func.coalesce(func.sum(Trial.attempts), 0),
            func.coalesce(func.sum(Trial.epoch), 0),
            func.max(Trial.heartbeat_at),
        )
        .where(Trial.study_id == study.id)
        .group_by(Trial.state)
        .order_by(Trial.state)
    )
    live = []
    for state, n, first, final, attempts, epochs, beat in rows:
        counts[state] = n
        started = first if started is None or (first and first < started) else started
        last = final if last is None or (final and final > last) else last
        results.update(f"|{state}:{n}:{final}:{attempts}".encode())
        live.append(f"|{epochs}:{beat}")
    version = hashlib.sha256(results.digest() + "".join(live).encode())
    timings = {"created_at": study.created_at, "started_at": started, "last_finished_at": last}
    return Snapshot(counts, timings, results.hexdigest()[:32], version.hexdigest()[:32])


def best_trial(session: Session, study_id: str) -> Trial | None:
    # A complete trial always has its value; were one without, PostgreSQL's DESC puts
    # NULL first, so the filter keeps it from being "best".
    return session.scalar(
        select(Trial)
        .where(
            Trial.study_id == study_id,
            Trial.state == TrialState.COMPLETE,
            Trial.value.is_not(None),
        )
        .order_by(Trial.value.desc(), Trial.number)
        .limit(1)
    )


def stored_spec(study: Study) -> StudySpec:
    """The study's spec as stored; a spec stored before a stricter rule is a 409 naming
    the rule, never a 500."""
    try:
        return StudySpec.model_validate(study.spec)
    except ValidationError as e:
        raise Conflict(f"the stored spec no longer validates: {e}".splitlines()[0]) from e


def trial_record(
    params: dict[str, Any],
    state: str,
    metrics: dict[str, Any] | None,
    error: str | None,
    number: int = 0,
) -> TrialRecord:
    """A stored trial as the report reads it; params stored before a stricter rule are a
    409 naming the rule, as a stale spec is (stored_spec), never a 500."""
    try:
        parsed = TrialParams.model_validate(params)
    except ValidationError as e:
        raise Conflict(f"a stored trial no longer validates: {e}".splitlines()[0]) from e
    return TrialRecord(parsed, TrialState(state), metrics, error, number)


def trial_records(session: Session, study: Study) -> list[TrialRecord]:
    """Every trial of the study as the report and the plots read it, in number order
    (without curves)."""
    rows = session.execute(
        select(Trial.params, Trial.state, Trial.metrics, Trial.error, Trial.number)
        .where(Trial.study_id == study.id)
        .order_by(Trial.number)
    )
    return [trial_record(*row) for row in rows]


def study_report(
    session: Session, study: Study, version: str | None = None, cache: VersionedCache | None = None
) -> Report:
    """The generalization-gap report (samsweep.core.report) over every trial of the study;
    with a version and a cache, built once per study version."""
    if version is None or cache is None:
        return _build_report(session, study)
    return cache.get_or_compute(
        (study.id, version, "report"), lambda: _build_report(session, study)
    )


def _build_report(session: Session, study: Study) -> Report:
    return build_report(stored_spec(study), trial_records(session, study))


def trial_curves(session: Session, trial_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """The per-epoch records of these trials, in one query (samsweep.core.db.curves_for)."""
    return curves_for(session, trial_ids)


def trial_page(session: Session, study: Study, limit: int, offset: int) -> Sequence[Trial]:
    """A page of the study's trials in number (grid) order."""
    query = select(Trial).where(Trial.study_id == study.id).order_by(Trial.number)
    return session.scalars(query.limit(limit).offset(offset)).all()


def plotted_trials(
    session: Session, study: Study, report: Report, curves: bool, trial: int | None = None
) -> list[TrialRecord]:
    """The trials a plot draws; with `curves`, the curves of `trial` (404 if the study
    has no such trial) or, without one, of the best cell's complete trials (by the
    study's objective). Only the curves drawn are read: a study may hold thousands."""
    records = trial_records(session, study)
    if not curves:
        return records
    if trial is not None:
        if not any(t.number == trial for t in records):
            raise NotFound(f"no trial {trial} in this study", field="trial")
        wanted = {trial}
    else:
        found = best_cell(report, report.objective)
        cell = found[0].cell(found[1]) if found else None
        wanted = {t.number for t in complete_trials(cell, records)} if cell else set()
    ids = dict(
        session.execute(
            select(Trial.number, Trial.id).where(
                Trial.study_id == study.id, Trial.number.in_(wanted)
            )
        ).all()
    )
    found_curves = curves_for(session, ids.values())
    return [
        replace(t, curves=found_curves[ids[t.number]]) if t.number in ids else t for t in records
    ]


def best_means(session: Session, study_ids: list[str]) -> dict[str, float]:
    """Each study's best cell mean objective (the cell /best selects), in one grouped
    query: the mean of a cell's complete trials' values, the best per study. A trial's
    value is its objective metric and its cell_key its cell, so this is the report's
    best cell's mean, to the last bits of floating-point summation
    (tests/service/test_reads.py); studies without a complete trial are absent, and so
    are cells with a pruned trial, as in the report."""
    complete = (Trial.state == TrialState.COMPLETE) & Trial.value.is_not(None)
    cells = session.execute(
        select(Trial.study_id, func.avg(case((complete, Trial.value))))
        .where(
            Trial.study_id.in_(study_ids), Trial.state.in_([TrialState.COMPLETE, TrialState.PRUNED])
        )
        .group_by(Trial.study_id, Trial.cell_key)
        # a cell with a pruned trial is never the best (samsweep.core.report._select)
        .having(func.count().filter(Trial.state == TrialState.PRUNED) == 0)
    ).all()
    best: dict[str, float] = {}
    for sid, mean in cells:
        if mean is not None and (sid not in best or mean > best[sid]):
            best[sid] = float(mean)
    return best
