"""A sampler's study in the dispatcher (no worker): configurations drawn from Optuna's
sampler only when places free, one trial per seed sharing its params, SAM and the
baseline taking turns, exactly n_trials configurations, reproducible with a seed, and a
space that runs out ends the study, on SQLite and PostgreSQL. With real workers:
tests/e2e/test_search.py."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import select, update

from samsweep.core import optuna_store
from samsweep.core.db import Study, Trial, session_factory
from samsweep.core.migrate import migrate
from samsweep.core.settings import Settings
from samsweep.core.spec import StudySpec
from samsweep.core.states import TrialState
from service.dispatch import dispatch
from service.studies import insert_study
from tests.service.test_dispatch import Recording
from tests.support.specs import digits_spec


@pytest.fixture(params=["embedded", "postgresql"])
def settings(request, tmp_path) -> Settings:
    db = {} if request.param == "embedded" else {"database_url": request.getfixturevalue("pg_url")}
    s = Settings(state_dir=tmp_path, dispatch_window=2, **db)
    migrate(s)
    return s


def searched(name: str = "tpe", n: int = 4, seed: int | None = 7, **search) -> StudySpec:
    raw = digits_spec(rho=(0.0,), batch_size=(16, 32), seeds=(0, 1))
    raw["search"]["rho"] = {"low": 0.01, "high": 0.5, "log": True}
    raw["search"].update(search)
    raw["train"]["lr"] = {"low": 1e-3, "high": 0.3, "log": True}
    raw["sampler"] = {"name": name, "n_trials": n, "seed": seed}
    return StudySpec.model_validate(raw)


def run(settings: Settings, spec: StudySpec, value=lambda params: 0.5) -> tuple[str, list]:
    """Create the study, then dispatch rounds as workers claim and finish what is sent
    (each trial's value by `value(params)`), until nothing more is sent."""
    sessions = session_factory(settings.resolved_database_url)
    with sessions() as s:
        study, _ = insert_study(s, settings, spec)
    broker = Recording()
    for _ in range(50):
        with sessions() as s:
            before = len(broker.sent)
            dispatch(s, broker, settings)
            for trial_id in broker.sent[before:]:
                t = s.get(Trial, trial_id)
                s.execute(update(Trial).where(Trial.id == trial_id)
                          .values(state=TrialState.COMPLETE, value=value(t.params)))  # fmt: skip
            s.commit()
            if len(broker.sent) == before:
                break
    with sessions() as s:
        rows = s.execute(
            select(Trial.number, Trial.cell_key, Trial.params, Trial.optuna_trial_id)
            .where(Trial.study_id == study.id)
            .order_by(Trial.number)
        ).all()
    return study.id, rows


# docs/spec.md "Search": exactly n_trials configurations, each once per seed with the same
# params, drawn as places free; SAM and the baseline take turns; values inside the ranges
def test_exactly_n_trials_configurations_each_once_per_seed(settings):
    spec = searched(n=4)
    study, rows = run(settings, spec)
    assert len(rows) == 8 and [r.number for r in rows] == list(range(8))
    configs = {}
    for r in rows:
        p = dict(r.params)
        configs.setdefault(r.cell_key, []).append(p.pop("seed"))
    assert len(configs) == 4 and all(seeds == [0, 1] for seeds in configs.values())
    firsts = [r.params for r in rows[::2]]
    assert [p["rho"] > 0 for p in firsts] == [True, False, True, False]  # SAM, then turns
    for p in firsts:
        assert 1e-3 <= p["lr"] <= 0.3 and p["batch_size"] in (16, 32)
        assert p["rho"] == 0 or 0.01 <= p["rho"] <= 0.5
    assert all(r.optuna_trial_id is not None for r in rows[::2])  # the asked trial, seed 0
    assert all(r.optuna_trial_id is None for r in rows[1::2])  # the worker makes the others
    with session_factory(settings.resolved_database_url)() as s:
        name = s.get(Study, study).optuna_study_name
    asked = optuna.load_study(study_name=name, storage=settings.resolved_optuna_url).trials
    assert len(asked) == 4 and {t.user_attrs["samsweep_trial_id"] for t in asked}


# docs/spec.md "Search": the sampler sees the results in before it draws (no budget queued
# ahead): a configuration is drawn only when a place frees
def test_configurations_are_drawn_only_as_places_free(settings):
    spec = searched(n=10)
    sessions = session_factory(settings.resolved_database_url)
    with sessions() as s:
        study, _ = insert_study(s, settings, spec)
        dispatch(s, Recording(), settings)
        drawn = s.scalar(select(Trial.id).where(Trial.study_id == study.id).limit(1))
        count = len(s.scalars(select(Trial.id).where(Trial.study_id == study.id)).all())
    assert drawn is not None and count == 2  # one configuration x 2 seeds for a window of 2


# docs/spec.md "Search": sampler.seed makes the draws reproducible, given the same results
def test_a_seeded_sampler_draws_the_same_configurations(settings):
    first = [r.params for r in run(settings, searched(name="random", seed=3))[1]]
    again = [r.params for r in run(settings, searched(name="random", seed=3))[1]]
    other = [r.params for r in run(settings, searched(name="random", seed=4))[1]]
    assert first == again and first != other


# docs/spec.md "Search": a space with fewer configurations than n_trials ends the study
# with those, none trained twice
def test_a_space_that_runs_out_ends_the_study_with_what_it_has(settings):
    raw = digits_spec(rho=(0.0, 0.05), batch_size=(16,), seeds=(0,))
    raw["sampler"] = {"name": "random", "n_trials": 5, "seed": 1}
    spec = StudySpec.model_validate(raw)  # 1 SAM and 1 baseline configuration exist
    study, rows = run(settings, spec)
    assert sorted(r.cell_key.split("|")[0] for r in rows) == ["rho=0.0", "rho=0.05"]
    with session_factory(settings.resolved_database_url)() as s:
        assert s.get(Study, study).n_trials == 2  # the budget shrank to what exists
    name = optuna_store.study_name(spec.name, study)
    states = {t.state for t in optuna.load_study(study_name=name,
              storage=settings.resolved_optuna_url).trials}  # fmt: skip
    assert optuna.trial.TrialState.FAIL in states  # the repeated draws, failed


# docs/api.md "Studies that grow": a sampler's study grows by a larger sampler.n_trials; its
# space and seeds stay
def test_a_sampler_study_grows_by_its_budget_only(settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as client:
        spec = searched(n=2).model_dump(mode="json")
        study = client.post("/studies", json=spec).json()["id"]
        grown = client.patch(f"/studies/{study}", json={"sampler": {"n_trials": 3}})
        assert grown.status_code == 200 and grown.json()["added"] == 2, grown.text
        assert grown.json()["n_trials"] == 6 and grown.json()["spec"]["sampler"]["n_trials"] == 3
        for patch, field in [
            ({"sampler": {"n_trials": 1}}, "sampler.n_trials"),
            ({"sampler": {"name": "random"}}, "sampler"),
            ({"seeds": [0, 1, 2]}, "seeds"),
            ({"search": {"batch_size": [16, 32, 64]}}, "search"),
        ]:
            r = client.patch(f"/studies/{study}", json=patch)
            assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
        grid = client.post("/studies", json=digits_spec()).json()["id"]
        r = client.patch(f"/studies/{grid}", json={"sampler": {"n_trials": 3}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "sampler", r.text


# docs/spec.md "Search": a sampler's study counts its budget still to draw against the
# owner's quotas, so studies with nothing drawn yet cannot exhaust the service
def test_the_budget_still_to_draw_counts_against_the_owners_quota(tmp_path):
    from service.errors import LimitExceeded

    s = Settings(state_dir=tmp_path, max_pending_trials_per_owner=10, max_studies_per_owner=2)
    migrate(s)
    sessions = session_factory(s.resolved_database_url)
    with sessions() as session:
        insert_study(session, s, searched(n=4))  # 8 trials, none drawn yet
        with pytest.raises(LimitExceeded, match="has 8 queued or running"):
            insert_study(session, s, searched(n=2))  # 8 + 4 > 10
        session.rollback()
        insert_study(session, s, searched(n=1))  # 8 + 2: within
        session.rollback()
        with pytest.raises(LimitExceeded, match="2 unfinished studies"):
            insert_study(session, s, StudySpec.model_validate(digits_spec(batch_size=(16,))))


# docs/spec.md "Search": an Optuna trial left RUNNING without a running samsweep trial (a
# round that failed after its draw, a trial failed after its last attempt) is FAILed by the
# sweep once stale, so TPE's constant liar does not count it forever; a queued one is kept
def test_the_sweep_fails_optuna_trials_left_running_without_a_trial(settings):
    from service.sweeper import settle_orphaned_optuna_trials

    spec = searched(n=4)
    sessions = session_factory(settings.resolved_database_url)
    with sessions() as s:
        study, _ = insert_study(s, settings, spec)
        dispatch(s, Recording(), settings)  # one configuration: its asked trial, row QUEUED
        orphan, *_ = optuna_store.suggest(
            settings.resolved_optuna_url, study.optuna_study_name, spec, 9, baseline=True
        )  # no row: a failed round
    stale = settings.model_copy(update={"stale_seconds": 0.001})
    with sessions() as s:
        assert settle_orphaned_optuna_trials(s, stale) == 1
        first = s.scalar(select(Trial).where(Trial.study_id == study.id, Trial.number == 0))
        s.execute(update(Trial).where(Trial.id == first.id).values(state=TrialState.FAILED))
        s.commit()
        assert settle_orphaned_optuna_trials(s, stale) == 1  # its row failed: its trial too
        assert settle_orphaned_optuna_trials(s, settings) == 0
    trials = optuna.load_study(study_name=study.optuna_study_name,
                               storage=settings.resolved_optuna_url).trials  # fmt: skip
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
