"""The per-trial recording on real PostgreSQL and Optuna storage: each epoch reaches
our tables and the Optuna trial once, as one appended row whose write does not grow
with the epochs before it; a resumed attempt replaces the epochs it trains again; a
cancelled study or a lost claim stops training, and a worker without the claim writes
no epoch; the outcome is recorded once, with the trial state it stands for, and the
trainer's history becomes the rows."""

from __future__ import annotations

import json

import optuna
import pytest
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.engine import Engine

import worker.claim
from samsweep.core import optuna_store
from samsweep.core.db import Study, Trial, curves_for, session_factory, utcnow
from samsweep.core.migrate import migrate
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec
from samsweep.core.states import TrialState
from tests.support.specs import digits_spec
from trainer import EpochMetrics, TrialResult
from worker.claim import claim, write_claimed
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
    """The trial's curves as every reader assembles them (samsweep.core.db.curves_for)."""
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


# docs/api.md "Delete": a deleted study's running trials stop at their next epoch boundary
def test_a_deleted_study_stops_training_at_the_epoch(claimed):
    recorder, sessions, _ = claimed
    with sessions() as s:
        s.execute(delete(Study))  # its trials and their epochs go with it (ON DELETE CASCADE)
        s.commit()
    with pytest.raises(Stop) as stopped:
        recorder.on_epoch(epoch(1))
    assert stopped.value.outcome is Outcome.DELETED
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Trial)) == 0


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
    assert curves(sessions) == []  # nor an epoch row


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
    # this worker writes nothing: another owns the trial, or there is no row to write to
    recorded_elsewhere = {Outcome.SKIPPED, Outcome.CLAIM_LOST, Outcome.DELETED}
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


# docs/report.md "optuna-dashboard, side by side": a trial's train/validation/test curves become its
# figure when it ends, complete or not; nothing is written per epoch beyond the intermediate value
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


def reclaim(sessions, settings: Settings) -> TrialRecorder:
    """The sweeper re-queues the trial (its worker lost) and another worker claims it,
    with a new Optuna trial, as worker/runner.py does."""
    with sessions() as s:
        s.execute(update(Trial).values(state=TrialState.QUEUED, claim_token=None))
        s.commit()
        (trial_id,) = s.scalars(select(Trial.id)).all()
    c = claim(sessions, trial_id)
    assert c is not None
    url = settings.resolved_optuna_url
    optuna_id, _ = optuna_store.start_trial(url, c.optuna_study_name, c.spec, c.params, trial_id)
    return TrialRecorder(sessions, c, url, optuna_id, Heartbeat(sessions, c, 60), 5)


def accuracies(sessions) -> list[tuple[int, float]]:
    return [(e["epoch"], e["test_accuracy"]) for e in curves(sessions)]


def result_of(history: list[EpochMetrics]) -> TrialResult:
    last = history[-1].test_accuracy
    return TrialResult(
        train_accuracy=0.7, test_accuracy=last, train_loss=0.9, test_loss=1.0, gap=0.7 - last,
        epochs=len(history), wall_seconds=1.0, samples_per_second=10.0, history=history,
    )  # fmt: skip


def sent_size(parameters) -> int:
    """Characters of a statement's parameters as sent: JSON ones (psycopg's Jsonb wrapper,
    whose repr hides its content) by their JSON text."""
    if isinstance(parameters, dict):
        return sum(sent_size(v) for v in parameters.values())
    if isinstance(parameters, list | tuple):
        return sum(sent_size(v) for v in parameters)
    if hasattr(parameters, "obj"):
        return len(json.dumps(parameters.obj, default=str))
    return len(str(parameters))


# issue 14 item 4 (benchmarks/README.md "Recording an epoch", per-epoch records): an epoch's write
# is one row, the same size at epoch 200 as at epoch 10; the whole-array rewrite it replaces sent
# every earlier epoch again (20x more at epoch 200)
def test_an_epochs_write_does_not_grow_with_the_epochs_before_it(claimed):
    recorder, sessions, settings = claimed
    sent: list[int] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append(len(statement) + sent_size(parameters))

    event.listen(Engine, "before_cursor_execute", count)  # every engine: ours and Optuna's
    per_epoch = {}
    try:
        for n in range(1, 201):
            sent.clear()
            recorder.on_epoch(epoch(n, 0.5 + n / 1000))
            per_epoch[n] = sum(sent)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert per_epoch[200] <= 1.1 * per_epoch[10], (per_epoch[10], per_epoch[200])
    assert row(sessions).epoch == 200
    assert [e for e, _ in accuracies(sessions)] == list(range(1, 201))
    assert optuna_trial(settings).intermediate_values == {n: 0.5 + n / 1000 for n in range(1, 201)}


# docs/faults.md "What must hold" ("Re-run"): a resumed attempt re-trains from its checkpoint; the
# epochs it trains again end as its values, the earlier attempt's later ones go, and its Optuna
# trial has every epoch once
def test_a_resumed_attempt_replaces_the_epochs_it_trains_again(claimed):
    recorder, sessions, settings = claimed
    for n, acc in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]:
        recorder.on_epoch(epoch(n, acc))
    resumed = reclaim(sessions, settings)  # its checkpoint is at epoch 2
    assert [e["epoch"] for e in resumed.claim.curves] == [1, 2, 3, 4]
    resumed.on_epoch(epoch(3, 0.9))
    assert accuracies(sessions) == [(1, 0.1), (2, 0.2), (3, 0.9)]
    resumed.on_epoch(epoch(4, 0.95))
    assert accuracies(sessions) == [(1, 0.1), (2, 0.2), (3, 0.9), (4, 0.95)]
    assert row(sessions).epoch == 4
    storage = optuna_store.get_storage(settings.resolved_optuna_url)
    first, second = optuna.load_study(study_name="digits-test-s1", storage=storage).trials
    assert first.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    assert second.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.9, 4: 0.95}


# docs/faults.md "What must hold" ("Claim"): only the worker holding the claim writes; one that lost
# it adds and replaces no epoch, and deletes none
def test_a_worker_that_lost_its_claim_writes_no_epoch(claimed):
    recorder, sessions, settings = claimed
    recorder.on_epoch(epoch(1, 0.4))
    other = reclaim(sessions, settings)
    other.on_epoch(epoch(1, 0.8))
    for n in (1, 2):  # the same epoch again, or the next one
        with pytest.raises(Stop) as stopped:
            recorder.on_epoch(epoch(n, 0.1))
        assert stopped.value.outcome is Outcome.CLAIM_LOST
    assert not write_claimed(sessions, recorder.claim, [epoch(3).to_dict()], [1], epoch=3)
    assert recorder.finish(Outcome.CLAIM_LOST) is Outcome.CLAIM_LOST
    assert accuracies(sessions) == [(1, 0.8)] and row(sessions).epoch == 1


# the trainer's history is authoritative: an epoch whose callback never ran (a worker
# killed after its checkpoint) is added at the end, the rows already right are not
# written again, and rows the history lacks are deleted
def test_finish_makes_the_rows_the_trainers_history_writing_only_what_differs(claimed, monkeypatch):
    recorder, sessions, settings = claimed
    recorder.on_epoch(epoch(1, 0.1))
    recorder.on_epoch(epoch(2, 0.2))
    resumed = reclaim(sessions, settings)  # killed after epoch 3's checkpoint
    resumed.on_epoch(epoch(4, 0.4))
    assert accuracies(sessions) == [(1, 0.1), (2, 0.2), (4, 0.4)]
    written: list[tuple[list[int], list[int]]] = []
    put_epochs = worker.claim.put_epochs

    def spy(session, trial_id, records, drop=()):
        records = list(records)
        written.append(([r["epoch"] for r in records], list(drop)))
        put_epochs(session, trial_id, records, drop)

    monkeypatch.setattr(worker.claim, "put_epochs", spy)
    history = [epoch(1, 0.1), epoch(2, 0.2), epoch(3, 0.3), epoch(4, 0.4)]
    assert resumed.finish(Outcome.COMPLETE, result=result_of(history)) is Outcome.COMPLETE
    assert written == [([3], [])]
    assert accuracies(sessions) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    assert row(sessions).state == TrialState.COMPLETE
    storage = optuna_store.get_storage(settings.resolved_optuna_url)
    last = optuna.load_study(study_name="digits-test-s1", storage=storage).trials[-1]
    assert last.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}


def test_finish_deletes_the_rows_the_trainers_history_lacks(claimed):
    recorder, sessions, _ = claimed
    for n in (1, 2, 3):
        recorder.on_epoch(epoch(n, n / 10))
    history = [epoch(1, 0.1), epoch(2, 0.25)]
    assert recorder.finish(Outcome.COMPLETE, result=result_of(history)) is Outcome.COMPLETE
    assert accuracies(sessions) == [(1, 0.1), (2, 0.25)]
