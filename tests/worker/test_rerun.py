"""A re-run trial on PostgreSQL: the worker that claims it FAILs the dead attempt's
Optuna trial and, where an earlier attempt had already told Optuna its result, adopts
that result instead of training again."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

import trainer
from samsweep.core import optuna_store
from samsweep.core.db import Trial, session_factory
from samsweep.core.migrate import migrate
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec
from samsweep.core.states import TrialState
from service.studies import insert_study
from tests.support.paths import SHARED_DATA
from tests.support.specs import digits_spec
from worker.outcome import Outcome
from worker.runner import run_trial


# docs/faults.md "What must hold": the next worker FAILs the dead attempt's Optuna trial, adopts
# its result instead if Optuna had already recorded it (docs/faults.md "What must hold", "Re-run")
def test_a_rerun_adopts_the_result_optuna_already_recorded(pg_url, tmp_path, monkeypatch):
    settings = Settings(database_url=pg_url, data_dir=SHARED_DATA, state_dir=tmp_path)
    migrate(settings)
    sessions = session_factory(pg_url)
    spec = StudySpec.model_validate(digits_spec())
    with sessions() as s:
        study, _ = insert_study(s, settings, spec)
        trial = s.scalars(select(Trial).where(Trial.study_id == study.id, Trial.number == 0)).one()
    url, name = settings.resolved_optuna_url, study.optuna_study_name
    params = spec.trials()[0]
    # Two earlier attempts: one died mid-training (its Optuna trial left RUNNING), the other
    # told Optuna its result and died before recording it on the row, which the sweeper
    # then returned to the queue.
    dead, _ = optuna_store.start_trial(url, name, spec, params, trial.id)
    told, _ = optuna_store.start_trial(url, name, spec, params, trial.id)
    metrics = {"test_accuracy": 0.875, "train_loss": 0.25}
    optuna_store.complete_trial(url, told, 0.875, metrics)
    with sessions() as s:
        s.execute(
            update(Trial)
            .where(Trial.id == trial.id)
            .values(state=TrialState.QUEUED, attempts=1, claim_token=None)
        )
        s.commit()

    def no_training(*args, **kwargs):
        pytest.fail("the re-run trained again instead of adopting Optuna's result")

    monkeypatch.setattr(trainer, "fit", no_training)
    assert run_trial(trial.id, settings) is Outcome.ADOPTED
    with sessions() as s:
        row = s.get(Trial, trial.id)
        assert row.state == TrialState.COMPLETE and row.finished_at is not None
        assert row.value == 0.875 and row.metrics == metrics
        assert row.attempts == 2
    storage = optuna_store.get_storage(url)
    assert storage.get_trial(dead).state.name == "FAIL"
    assert storage.get_trial(told).state.name == "COMPLETE"
    study_id = storage.get_study_id_from_name(name)
    assert len(storage.get_all_trials(study_id)) == 2  # no new Optuna trial either
