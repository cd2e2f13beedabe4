"""service/reads.py on PostgreSQL: the index's grouped best-cell query equals the report's
best cell (the one definition, samsweep.core.report.best_cell) on the same studies;
progress and status are derived once; a plot reads only the curves it draws."""

from __future__ import annotations

import random

import pytest

from samsweep.core.db import Study, Trial, TrialEpoch, session_factory
from samsweep.core.migrate import migrate
from samsweep.core.report import best_cell
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec
from samsweep.core.states import StudyStatus, TrialState
from service import reads
from tests.support.specs import digits_spec

SPECS = {
    # objective test_accuracy, 2 x 3 x 2 cells, 3 seeds
    "a" * 32: digits_spec(rho=(0.0, 0.05, 0.1), batch_size=(16, 64), seeds=(0, 1, 2)),
    # a validation split: the objective (and the trials' value) is val_accuracy
    "b" * 32: digits_spec(
        rho=(0.0, 0.2),
        batch_size=(32,),
        seeds=(0, 1),
        objective="val_accuracy",
        dataset={"name": "digits", "val_fraction": 0.1},
    ),
    # nothing complete yet
    "c" * 32: digits_spec(rho=(0.0, 0.05), batch_size=(16,), seeds=(0,)),
}


@pytest.fixture
def db(pg_url):
    migrate(Settings(database_url=pg_url))
    factory = session_factory(pg_url)
    rng = random.Random(7)
    with factory() as s:
        for sid, raw in SPECS.items():
            spec = StudySpec.model_validate(raw)
            trials = spec.trials()
            s.add(Study(id=sid, name="t", spec=spec.model_dump(mode="json"),
                        n_trials=len(trials), optuna_study_name=f"samsweep-{sid}"))  # fmt: skip
            for i, p in enumerate(trials):
                state = TrialState.QUEUED if sid.startswith("c") else rng.choice(
                    [TrialState.COMPLETE] * 4 + [TrialState.FAILED, TrialState.RUNNING]
                )  # fmt: skip
                metrics = value = None
                if state == TrialState.COMPLETE:
                    metrics = {"train_accuracy": rng.random(), "test_accuracy": rng.random(),
                               "val_accuracy": rng.random(), "gap": 0.1}  # fmt: skip
                    value = metrics[spec.objective]
                s.add(Trial(study_id=sid, number=i, cell_key=p.cell_key, seed=p.seed,
                            params=p.model_dump(), state=state, metrics=metrics,
                            value=value))  # fmt: skip
        s.commit()
    return factory


# The index (GET /overview) keeps a grouped SQL query for speed: it must pick the same
# best cell mean as the report's best_cell, which /best and the curves plot use.
def test_the_index_best_mean_is_the_report_best_cell(db):
    with db() as s:
        means = reads.best_means(s, list(SPECS))
        for sid in SPECS:
            report = reads.study_report(s, s.get(Study, sid))
            found = best_cell(report, report.objective)
            if found is None:
                assert sid not in means
                continue
            _, row = found
            assert means[sid] == pytest.approx(row.metrics[report.objective].mean, abs=1e-12)
    assert set(means) == {"a" * 32, "b" * 32}


def test_progress_and_status_are_derived_from_the_counts(db):
    with db() as s:
        counts = reads.state_counts_many(s, list(SPECS))
        for sid in SPECS:
            study = s.get(Study, sid)
            c = counts[sid]
            p = reads.progress(study.n_trials, c)
            done = c["COMPLETE"] + c["FAILED"] + c["CANCELLED"] + c["INFEASIBLE"]
            assert (p.total, p.finished) == (study.n_trials, done)
            assert p.fraction == pytest.approx(done / study.n_trials)
            expected = (
                StudyStatus.COMPLETE
                if done == study.n_trials
                else StudyStatus.RUNNING
                if done or c["RUNNING"]
                else StudyStatus.QUEUED
            )
            assert reads.study_status(study, c) is expected
        assert reads.progress(0, counts["c" * 32]).fraction == 0.0


def test_a_plot_reads_only_the_curves_it_draws(db):
    with db() as s:
        study = s.get(Study, "a" * 32)
        for t in s.query(Trial).filter(Trial.study_id == study.id):
            s.add(TrialEpoch(trial_id=t.id, epoch=1, record={"epoch": 1, "test_accuracy": 0.5}))
        s.commit()
        report = reads.study_report(s, study)
        assert all(t.curves is None for t in reads.plotted_trials(s, study, report, False))
        one = reads.plotted_trials(s, study, report, True, trial=5)
        assert [t.number for t in one if t.curves] == [5]
        group, row = best_cell(report, report.objective)
        drawn = [t for t in reads.plotted_trials(s, study, report, True) if t.curves]
        assert drawn and all(t.params.cell == group.cell(row) for t in drawn)
        assert sorted(t.params.seed for t in drawn) == row.seeds
        with pytest.raises(reads.NotFound):
            reads.plotted_trials(s, study, report, True, trial=10_000)
