"""GP's configurations, drawn beside the workers (worker/drawer.py; docs/spec.md
"Search"): the API's dispatcher never draws them (GP loads torch), the drawer draws one
configuration ahead, in a process of its own, and the dispatcher sends its trials; a GP
study ends with exactly n_trials configurations, each once per seed, on SQLite and
PostgreSQL. With real workers: tests/e2e/test_search.py."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import select, update

from samsweep.core.db import Trial, session_factory
from samsweep.core.states import TrialState
from service.dispatch import dispatch
from service.studies import insert_study
from tests.service.test_dispatch import Recording
from tests.service.test_search import searched, settings  # noqa: F401  (the fixture)
from worker.drawer import Drawer, draw_next, waiting


def _finish_sent(sessions, broker, before: int) -> None:
    with sessions() as s:
        for trial_id in broker.sent[before:]:
            t = s.get(Trial, trial_id)
            value = 1.0 - abs(t.params.get("lr", 0.1) - 0.05)  # GP has something to model
            s.execute(update(Trial).where(Trial.id == trial_id)
                      .values(state=TrialState.COMPLETE, value=value))  # fmt: skip
        s.commit()


# docs/spec.md "Search": GP draws beside the workers, one configuration ahead; exactly
# n_trials configurations, each once per seed, every value inside its range
def test_gp_configurations_are_drawn_by_the_drawer_and_sent_by_the_dispatcher(settings):  # noqa: F811
    sessions = session_factory(settings.resolved_database_url)
    spec = searched(name="gp", n=4)
    with sessions() as s:
        study, _ = insert_study(s, settings, spec)
    broker = Recording()
    with sessions() as s:
        assert dispatch(s, broker, settings) == 0  # the API draws nothing for GP
        assert waiting(s) == [study.id]
    for _ in range(4):
        made = draw_next(sessions, settings, study.id)
        assert len(made) == 2  # one configuration, a trial per seed
        assert draw_next(sessions, settings, study.id) == []  # one ahead, no more
        with sessions() as s:
            assert waiting(s) == []
            before = len(broker.sent)
            dispatch(s, broker, settings)
        assert sorted(broker.sent[before:]) == sorted(made)
        _finish_sent(sessions, broker, before)
    with sessions() as s:
        assert waiting(s) == []  # the budget is spent
        rows = s.execute(select(Trial.cell_key, Trial.params).where(Trial.study_id == study.id)
                         ).all()  # fmt: skip
    configs: dict[str, list[int]] = {}
    for key, p in rows:
        configs.setdefault(key, []).append(p["seed"])
        assert 1e-3 <= p["lr"] <= 0.3 and (p["rho"] == 0 or 0.01 <= p["rho"] <= 0.5), p
    assert len(rows) == 8 and len(configs) == 4
    assert all(sorted(seeds) == [0, 1] for seeds in configs.values())
    frozen = optuna.load_study(study_name=study.optuna_study_name,
                               storage=settings.resolved_optuna_url).trials  # fmt: skip
    assert len(frozen) == 4  # the asked trials of the configurations' first seeds


def test_the_drawer_thread_stops_when_asked(settings):  # noqa: F811
    drawer = Drawer(settings, period=0.01)
    drawer.start()
    drawer.stopped.set()
    drawer.join(timeout=5)
    assert not drawer.is_alive()


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_other_samplers_are_not_the_drawers(settings, name):  # noqa: F811
    sessions = session_factory(settings.resolved_database_url)
    with sessions() as s:
        insert_study(s, settings, searched(name=name, n=2))
        assert waiting(s) == []


# docs/faults.md: a GP draw that fails after Optuna's ask commits nothing, and the next
# round draws the configuration again
def test_a_draw_that_fails_midway_leaves_nothing_and_is_drawn_again(settings, monkeypatch):  # noqa: F811
    from samsweep.core import optuna_store

    sessions = session_factory(settings.resolved_database_url)
    with sessions() as s:
        study, _ = insert_study(s, settings, searched(name="gp", n=2))
    real = optuna_store.tag

    def dies(*args, **kwargs):  # after the ask and the rows' flush, before the commit
        raise ConnectionError("the database went away")

    monkeypatch.setattr(optuna_store, "tag", dies)
    with pytest.raises(ConnectionError):
        draw_next(sessions, settings, study.id)
    with sessions() as s:
        assert s.scalars(select(Trial.id).where(Trial.study_id == study.id)).all() == []
        assert waiting(s) == [study.id]
    monkeypatch.setattr(optuna_store, "tag", real)
    assert len(draw_next(sessions, settings, study.id)) == 2
