"""The per-trial recording on real PostgreSQL and Optuna storage: each epoch reaches
our row and the Optuna trial once, a cancelled study or a lost claim stops training,
and the outcome is recorded once, with the trial state it stands for."""

from __future__ import annotations

import json

import optuna
import pytest
from sqlalchemy import select, update

from samsweep import optuna_store
from samsweep.db import Study, Trial, curves_for, session_factory, utcnow
from samsweep.migrate import migrate
from samsweep.settings import Settings
from samsweep.spec import StudySpec
from samsweep.states import TrialState
from tests.conftest import digits_spec
from trainer import EpochMetrics, TrialResult
from worker.claim import claim
from worker.heartbeat import Heartbeat
from worker.outcome import Outcome
from worker.recorder import Stop, TrialRecorder


def epoch(n: int, test_accuracy: float = 0.5) -> EpochMetrics:
    return EpochMetrics(
        epoch=n, train_loss=1.0, train_accuracy=0.6, test_loss=1.1,
        test_accuracy=test_accuracy, seconds=0.1, lr=0.05,
    )  # fmt: skip


@pytest.fixture
def claimed(pg_url):
    """A claimed trial with its Optuna trial started: (recorder, sessions, settings)."""
    settings = Settings(database_url=pg_url)
    migrate(settings)
    sessions = session_factory(pg_url)
    spec = StudySpec.model_validate(digits_spec())
    params = spec.trials()[0]
    optuna_url = settings.resolved_optuna_url
    optuna_store.create_optuna_study(optuna_url, "digits-test-s1", "s1", spec)
    with sessions() as s:
        s.add(Study(id="s1", name=spec.name, spec=spec.model_dump(mode="json"),
                    n_trials=1, optuna_study_name="digits-test-s1"))  # fmt: skip
        s.add(Trial(study_id="s1", number=0, cell_key=params.cell_key, seed=params.seed,
                    params=params.model_dump()))  # fmt: skip
        s.commit()
        trial_id = s.query(Trial.id).scalar()
    c = claim(sessions, trial_id)
    assert c is not None
    optuna_id, _ = optuna_store.start_trial(optuna_url, c.optuna_study_name, spec, params, trial_id)
    recorder = TrialRecorder(sessions, c, optuna_url, optuna_id, Heartbeat(sessions, c, 60), 5)
    return recorder, sessions, settings


def row(sessions) -> Trial:
    with sessions() as s:
        return s.query(Trial).one()


def curves(sessions) -> list[dict]:
    """The trial's curves as every reader assembles them (samsweep.db.curves_for)."""
    with sessions() as s:
        (trial_id,) = s.scalars(select(Trial.id)).all()
        return curves_for(s, [trial_id])[trial_id]


def optuna_trial(settings: Settings) -> optuna.trial.FrozenTrial:
    storage = optuna_store.get_storage(settings.resolved_optuna_url)
    return optuna.load_study(study_name="digits-test-s1", storage=storage).trials[0]


def test_each_epoch_reaches_the_row_and_optuna_once(claimed):
    recorder, sessions, settings = claimed
    recorder.on_epoch(epoch(1, 0.4))
    recorder.on_epoch(epoch(2, 0.6))
    t = row(sessions)
    assert t.epoch == 2 and [e["epoch"] for e in curves(sessions)] == [1, 2]
    assert optuna_trial(settings).intermediate_values == {1: 0.4, 2: 0.6}


def test_a_cancelled_study_stops_training_at_the_epoch(claimed):
    recorder, sessions, _ = claimed
    with sessions() as s:
        s.execute(update(Study).values(cancelled_at=utcnow()))
        s.commit()
    with pytest.raises(Stop) as stopped:
        recorder.on_epoch(epoch(1))
    assert stopped.value.outcome is Outcome.CANCELLED


def test_a_lost_claim_stops_training_and_writes_nothing_more(claimed):
    recorder, sessions, _ = claimed
    with sessions() as s:  # the sweeper re-queued it and another worker claimed it
        s.execute(update(Trial).values(claim_token="another-worker"))
        s.commit()
    with pytest.raises(Stop) as stopped:
        recorder.on_epoch(epoch(1))
    assert stopped.value.outcome is Outcome.CLAIM_LOST
    assert recorder.finish(Outcome.CLAIM_LOST) is Outcome.CLAIM_LOST
    t = row(sessions)
    assert t.epoch == 0 and t.state == TrialState.RUNNING  # the other worker's to record


def test_a_complete_trial_records_its_metrics_and_the_objective(claimed):
    recorder, sessions, settings = claimed
    recorder.on_epoch(epoch(1, 0.4))
    result = TrialResult(
        train_accuracy=0.7, test_accuracy=0.65, train_loss=0.9, test_loss=1.0, gap=0.05,
        epochs=2, wall_seconds=1.0, samples_per_second=10.0,
        history=[epoch(1, 0.4), epoch(2, 0.65)],
    )  # fmt: skip
    assert recorder.finish(Outcome.COMPLETE, result=result) is Outcome.COMPLETE
    t = row(sessions)
    assert t.state == TrialState.COMPLETE and t.value == 0.65
    assert t.metrics["gap"] == 0.05 and "history" not in t.metrics
    assert [e["epoch"] for e in curves(sessions)] == [1, 2]
    frozen = optuna_trial(settings)
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.value == 0.65
    assert frozen.intermediate_values == {1: 0.4, 2: 0.65}  # the last epoch reported too
    fig = dashboard_figures(settings)["trial-0"]  # the trainer's full history
    assert [(t["name"], t["y"]) for t in fig["data"]] == [
        ("train", [0.6, 0.6]),
        ("test", [0.4, 0.65]),
    ]


@pytest.mark.parametrize(
    "outcome,state",
    [
        (Outcome.DIVERGED, TrialState.FAILED),
        (Outcome.INFEASIBLE, TrialState.INFEASIBLE),
        (Outcome.CANCELLED, TrialState.CANCELLED),
        (Outcome.ERROR, TrialState.FAILED),
    ],
)
def test_a_failed_trial_records_its_reason_in_both_places(claimed, outcome, state):
    recorder, sessions, settings = claimed
    assert recorder.finish(outcome, error=f"{outcome}: why") is outcome
    t = row(sessions)
    assert t.state == state and t.error == f"{outcome}: why" and t.finished_at is not None
    frozen = optuna_trial(settings)
    assert frozen.state == optuna.trial.TrialState.FAIL
    assert frozen.user_attrs["fail_reason"] == outcome


def test_every_outcome_names_the_state_it_records():
    recorded_elsewhere = {Outcome.SKIPPED, Outcome.CLAIM_LOST}  # this worker writes nothing
    for outcome in Outcome:
        assert (outcome.state is None) == (outcome in recorded_elsewhere), outcome


def dashboard_figures(settings: Settings) -> dict[str, dict]:
    """The figures optuna-dashboard's own JSON API serves for the study, by id."""
    import httpx
    from optuna_dashboard import wsgi

    storage = optuna_store.get_storage(settings.resolved_optuna_url)
    app = wsgi(storage)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://dash") as c:
        (study,) = c.get("/api/studies").json()["study_summaries"]
        detail = c.get(f"/api/studies/{study['study_id']}").json()
    return {g["id"]: json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"]}


# README "optuna-dashboard": a trial's train/validation/test curves become its figure when
# it ends, complete or not; nothing is written per epoch beyond the intermediate value
def test_the_learning_curves_become_a_dashboard_figure_when_the_trial_ends(claimed):
    recorder, sessions, settings = claimed
    recorder.on_epoch(epoch(1, 0.4))
    assert dashboard_figures(settings) == {}
    recorder.on_epoch(epoch(2, 0.6))
    assert recorder.finish(Outcome.DIVERGED, error="diverged: loss is nan") is Outcome.DIVERGED
    fig = dashboard_figures(settings)["trial-0"]
    lines = {t["name"]: (t["x"], t["y"]) for t in fig["data"]}
    assert lines == {"train": ([1, 2], [0.6, 0.6]), "test": ([1, 2], [0.4, 0.6])}
    assert fig["layout"]["title"]["text"].startswith("Trial 0: ρ=0")


# worker/dashboard.py: the figure is a nicety; failing to save it never fails the trial
def test_a_figure_that_cannot_be_saved_leaves_the_trial_complete(claimed, monkeypatch):
    import worker.recorder

    def broken(*args, **kwargs):
        raise ValueError("optuna-dashboard refused the figure")

    monkeypatch.setattr(worker.recorder, "save_learning_curves", broken)
    recorder, sessions, settings = claimed
    result = TrialResult(
        train_accuracy=0.7, test_accuracy=0.65, train_loss=0.9, test_loss=1.0, gap=0.05,
        epochs=1, wall_seconds=1.0, samples_per_second=10.0, history=[epoch(1, 0.65)],
    )  # fmt: skip
    assert recorder.finish(Outcome.COMPLETE, result=result) is Outcome.COMPLETE
    assert row(sessions).state == TrialState.COMPLETE
    assert optuna_trial(settings).state == optuna.trial.TrialState.COMPLETE
