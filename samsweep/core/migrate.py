"""`samsweep migrate`: the service's Alembic migrations, then Optuna's storage schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command
from alembic.config import Config

from samsweep.core.settings import Settings


def alembic_config(database_url: str) -> Config:
    spec = importlib.util.find_spec("migrations")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the migrations package is not installed")
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(list(spec.submodule_search_locations)[0])))
    cfg.attributes["url"] = database_url  # not set_main_option: URLs may contain '%'
    return cfg


def migrate(settings: Settings) -> None:
    from samsweep.core import optuna_store

    if settings.resolved_database_url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings.resolved_database_url), "head")
    optuna_store.prepare_storage(settings)
