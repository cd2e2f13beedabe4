"""Alembic environment for the service's own tables.

Optuna keeps its own tables and its own `alembic_version` (in its own schema on
PostgreSQL, its own file on SQLite), so this environment uses a distinct version
table and tells autogenerate to look only at the service's tables.
"""

from alembic import context

from samsweep.core.db import Base, make_engine

VERSION_TABLE = "samsweep_alembic_version"


def include_name(name, type_, parent_names):  # noqa: ARG001 - alembic's hook signature
    if type_ == "schema":
        return name in (None, "public")  # never Optuna's schema
    if type_ == "table":
        return name in Base.metadata.tables  # never Optuna's tables (SQLite, or misconfigured)
    return True


def run_migrations() -> None:
    config = context.config
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    connectable = config.attributes.get("connection") or make_engine(url)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=VERSION_TABLE,
            include_name=include_name,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
