"""The service's Alembic migrations beside Optuna's storage, on PostgreSQL and SQLite:
both migrate in any order and repeatedly, neither touches the other's tables, and the
models match the migrations (no autogenerate drift)."""

from __future__ import annotations

import optuna
import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from samsweep.migrate import alembic_config, migrate
from samsweep.settings import Settings

SERVICE_TABLES = {"samsweep_studies", "samsweep_trials", "samsweep_alembic_version"}


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


# README "The CLI": `samsweep migrate` runs the service's migrations, then Optuna's
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


# README "Production": the dashboard's role may only read Optuna's schema: its DELETE fails
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
