"""The worker's claim on PostgreSQL: a trial whose stored spec no longer validates (it
was stored before a stricter spec, say) is FAILED with that reason at once, never left
RUNNING for the sweeper to call "worker lost"."""

from __future__ import annotations

from sqlalchemy import select

from samsweep.core.db import Study, Trial, session_factory
from samsweep.core.migrate import migrate
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec
from samsweep.core.states import TrialState
from tests.support.specs import digits_spec
from worker.claim import claim


def test_a_stored_spec_that_no_longer_validates_fails_the_trial(pg_url):
    migrate(Settings(database_url=pg_url))
    sessions = session_factory(pg_url)
    spec = StudySpec.model_validate(digits_spec()).model_dump(mode="json")
    spec["name"] = "tab\there"  # accepted once; the printable-text rule refuses it now
    params = StudySpec.model_validate(digits_spec()).trials()[0]
    with sessions() as s:
        s.add(Study(id="s1", name="old", spec=spec, n_trials=1, optuna_study_name="old-s1"))
        s.add(
            Trial(
                study_id="s1",
                number=0,
                cell_key=params.cell_key,
                seed=0,
                params=params.model_dump(),
            )
        )
        s.commit()
        trial_id = s.query(Trial.id).scalar()
    assert claim(sessions, trial_id) is None
    with sessions() as s:
        t = s.get(Trial, trial_id)
        assert t.state == TrialState.FAILED and t.finished_at is not None
        assert t.error.startswith("error: the stored spec no longer validates"), t.error
        assert t.attempts == 1


# docs/spec.md "The study spec": max_concurrent_trials holds at the claim too: a trial sent
# before the bound was lowered (PATCH) goes back to the dispatcher instead of running
def test_a_claim_past_the_studys_bound_sends_the_trial_back(pg_url):
    from sqlalchemy import update

    from samsweep.core.db import utcnow

    migrate(Settings(database_url=pg_url))
    sessions = session_factory(pg_url)
    spec = StudySpec.model_validate(digits_spec(max_concurrent_trials=2))
    with sessions() as s:
        s.add(Study(id="s1", name="s", spec=spec.model_dump(mode="json"), n_trials=4,
                    optuna_study_name="s-s1", max_concurrent_trials=2))  # fmt: skip
        s.flush()
        s.add_all(
            Trial(
                study_id="s1",
                number=i,
                cell_key=t.cell_key,
                seed=t.seed,
                params=t.model_dump(),
                enqueued_at=utcnow(),
            )  # fmt: skip
            for i, t in enumerate(spec.trials())
        )
        s.commit()
        ids = list(s.scalars(select(Trial.id).order_by(Trial.number)))
    assert claim(sessions, ids[0]) is not None
    with sessions() as s:  # lowered while trials were in the broker
        s.execute(update(Study).values(max_concurrent_trials=1))
        s.commit()
    assert claim(sessions, ids[1]) is None
    with sessions() as s:
        t = s.get(Trial, ids[1])
        assert t.state == TrialState.QUEUED and t.enqueued_at is None and t.attempts == 0
        s.execute(update(Trial).where(Trial.id == ids[0]).values(state=TrialState.COMPLETE))
        s.commit()
    assert claim(sessions, ids[1]) is not None  # a place freed
