"""The service's Alembic migrations beside Optuna's storage, on PostgreSQL and SQLite:
both migrate in any order and repeatedly, neither touches the other's tables, and the
models match the migrations (no autogenerate drift). Trials' curves arrays move into
per-epoch rows and back (0004)."""

from __future__ import annotations

from datetime import UTC, datetime

import optuna
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import create_engine, inspect
from sqlalchemy.orm import Session

from samsweep.core.db import JsonType, curves_for, make_engine
from samsweep.core.migrate import alembic_config, migrate
from samsweep.core.settings import Settings

SERVICE_TABLES = {
    "samsweep_studies",
    "samsweep_trials",
    "samsweep_trial_epochs",
    "samsweep_alembic_version",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def settings(request, tmp_path) -> Settings:
    if request.param == "sqlite":
        return Settings(state_dir=tmp_path / "state")
    return Settings(database_url=request.getfixturevalue("pg_url"))


def _tables(url: str, schema: str | None = None) -> set[str]:
    engine = create_engine(url)
    names = set(inspect(engine).get_table_names(schema=schema))
    engine.dispose()
    return names


# docs/cli.md "The CLI": `samsweep migrate` runs the service's migrations, then Optuna's
def test_migrate_twice_then_no_drift(settings):
    migrate(settings)
    migrate(settings)  # idempotent: the compose migration job may run on every start
    cfg = alembic_config(settings.resolved_database_url)
    command.check(cfg)  # raises if models and migrations disagree
    service = _tables(settings.resolved_database_url)
    assert service >= SERVICE_TABLES
    optuna_tables = _tables(
        settings.resolved_optuna_url,
        "optuna" if "postgresql" in settings.resolved_optuna_url else None,
    )
    assert {"studies", "trials", "alembic_version"} <= optuna_tables
    if "postgresql" in settings.resolved_database_url:
        assert not {"studies", "trials", "alembic_version"} & service  # kept apart


def test_downgrade_leaves_optuna_alone(settings):
    migrate(settings)
    optuna.create_study(storage=settings.resolved_optuna_url, study_name="kept")
    cfg = alembic_config(settings.resolved_database_url)
    command.downgrade(cfg, "base")
    assert not {"samsweep_studies", "samsweep_trials"} & _tables(settings.resolved_database_url)
    assert optuna.get_all_study_names(storage=settings.resolved_optuna_url) == ["kept"]
    command.upgrade(cfg, "head")
    assert _tables(settings.resolved_database_url) >= SERVICE_TABLES


# The tables as revision 0003 left them (a trial's curves a JSON array on its row)
STUDIES = sa.table(
    "samsweep_studies", sa.column("id"), sa.column("name"), sa.column("spec", JsonType),
    sa.column("n_trials"), sa.column("optuna_study_name"), sa.column("created_at"),
)  # fmt: skip
TRIALS = sa.table(
    "samsweep_trials", sa.column("id"), sa.column("study_id"), sa.column("number"),
    sa.column("cell_key"), sa.column("seed"), sa.column("params", JsonType),
    sa.column("state"), sa.column("attempts"), sa.column("epoch"),
    sa.column("curves", JsonType),
)  # fmt: skip


def _record(epoch: int, test_accuracy: float) -> dict:
    return {"epoch": epoch, "train_accuracy": 0.9, "test_accuracy": test_accuracy,
            "val_accuracy": None, "train_loss": 0.25, "test_loss": 0.5, "lr": 0.1}  # fmt: skip


# issue 14 item 4: 0004 moves each trial's curves array into per-epoch rows (read back
# the same by curves_for, as the API reads them) and drops the column; its downgrade
# restores the arrays in epoch order; deleting a study deletes its trials' rows
def test_curves_arrays_move_to_epoch_rows_and_back(settings):
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    cfg = alembic_config(url)
    command.upgrade(cfg, "0003")
    arrays = {
        1: [_record(e, e / 10) for e in range(1, 12)],  # 1..11: numeric, not text, order
        2: [],  # queued: nothing trained
        3: [_record(1, 0.5)],
    }
    engine = make_engine(url)  # as the service connects: SQLite enforces foreign keys
    with engine.begin() as conn:
        conn.execute(sa.insert(STUDIES).values(
            id="s1", name="s", spec={}, n_trials=3, optuna_study_name="o-s1",
            created_at=datetime.now(UTC)))  # fmt: skip
        conn.execute(sa.insert(TRIALS), [
            {"id": i, "study_id": "s1", "number": i, "cell_key": "c", "seed": i, "params": {},
             "state": "COMPLETE", "attempts": 1, "epoch": len(c), "curves": c}
            for i, c in arrays.items()
        ])  # fmt: skip
    command.upgrade(cfg, "head")
    assert "curves" not in {c["name"] for c in inspect(engine).get_columns("samsweep_trials")}
    with Session(engine) as session:
        assert curves_for(session, arrays) == arrays
    command.downgrade(cfg, "0003")
    with engine.connect() as conn:
        restored = dict(conn.execute(sa.select(TRIALS.c.id, TRIALS.c.curves)).all())
    assert restored == arrays
    command.upgrade(cfg, "head")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM samsweep_studies"))
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM samsweep_trial_epochs")).scalar_one()
    assert left == 0
    engine.dispose()


# issue 16: 0005 gives studies the dispatcher's columns, from their stored spec (absent
# there: priority 0, no bound); a downgrade drops them and keeps every trial (no table copy
# on SQLite: recreating samsweep_studies would cascade to its trials)
def test_dispatch_columns_come_from_the_stored_spec(settings):
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    cfg = alembic_config(url)
    command.upgrade(cfg, "0004")
    engine = make_engine(url)
    with engine.begin() as conn:
        for sid, spec in [("s1", {}), ("s2", {"priority": 3, "max_concurrent_trials": 2})]:
            conn.execute(sa.insert(STUDIES).values(
                id=sid, name="s", spec=spec, n_trials=1, optuna_study_name=f"o-{sid}",
                created_at=datetime.now(UTC)))  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO samsweep_trials (study_id, number, cell_key, seed, params, state,"
                    " attempts, epoch) VALUES (:s, 0, 'c', 0, '{}', 'QUEUED', 0, 0)"
                ),
                {"s": sid},
            )
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, priority, max_concurrent_trials, dispatched_at FROM samsweep_studies"
            " ORDER BY id")).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [("s1", 0, None, None), ("s2", 3, 2, None)]
    command.downgrade(cfg, "0004")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM samsweep_trials")).scalar_one() == 2
    command.upgrade(cfg, "head")
    engine.dispose()


# docs/deploy.md "Production": the dashboard's role may only read Optuna's schema: its DELETE fails
# and the study stays; it cannot read the service's tables
def test_dashboard_role_reads_optuna_and_changes_nothing(pg_url):
    """optuna-dashboard has no authentication and a DELETE button: its role may read
    Optuna's schema and nothing else, so the DELETE cannot reach the storage."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ProgrammingError

    settings = Settings(database_url=pg_url, dashboard_db_password="dash-pw-1")
    migrate(settings)
    migrate(Settings(database_url=pg_url, dashboard_db_password="dash-pw-2"))  # idempotent
    owner = optuna.create_study(storage=settings.resolved_optuna_url, study_name="kept")
    owner.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    dash = make_url(settings.resolved_optuna_url).set(
        username="samsweep_dashboard", password="dash-pw-2"
    )
    url = dash.render_as_string(hide_password=False)
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["kept"]
    with pytest.raises(optuna.exceptions.StorageInternalError) as refused:
        optuna.delete_study(study_name="kept", storage=url)
    assert "permission denied" in str(refused.value.__cause__)
    assert optuna.get_all_study_names(storage=settings.resolved_optuna_url) == ["kept"]
    engine = create_engine(dash)
    with engine.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):
        conn.execute(text("SELECT count(*) FROM public.samsweep_studies"))  # private specs
    engine.dispose()


@pytest.mark.parametrize("role", ["postgres", "samsweep_dash_priv"])
def test_dashboard_role_is_never_a_privileged_or_own_role(pg_url, role):
    """An existing role with privileges (or the one migrate runs as) is refused, never
    silently given a new password and reused."""
    from sqlalchemy import text

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP ROLE IF EXISTS samsweep_dash_priv"))
        conn.execute(text("CREATE ROLE samsweep_dash_priv LOGIN CREATEDB"))
    try:
        settings = Settings(database_url=pg_url, dashboard_db_password="pw", dashboard_db_role=role)
        with pytest.raises(RuntimeError, match="not a plain login role"):
            migrate(settings)
    finally:
        with admin.connect() as conn:
            conn.execute(text("DROP ROLE IF EXISTS samsweep_dash_priv"))
        admin.dispose()
