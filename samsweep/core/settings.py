"""Process settings, read from `SAMSWEEP_*` environment variables or a `.env` file.

With nothing set, the embedded default applies: SQLite files and an embedded
(SQLite-backed) broker under one state directory, so `samsweep up` needs no server.
In production set at least `SAMSWEEP_DATABASE_URL` (PostgreSQL) and
`SAMSWEEP_BROKER_URL` (Redis).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

OPTUNA_SCHEMA = "optuna"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAMSWEEP_", env_file=".env", extra="ignore")

    state_dir: Path = Field(Path(".samsweep"), description="embedded default's files")
    database_url: str | None = Field(None, description="service tables; default SQLite")
    optuna_url: str | None = Field(None, description="Optuna storage; derived if unset")
    broker_url: str | None = Field(None, description="Celery broker; default embedded")
    queue: str = Field("samsweep", description="Celery queue the trials go to")
    data_dir: Path = Field(Path("data"), description="root every dataset.path resolves under")
    max_grid_trials: int = Field(2000, ge=1, description="largest grid x seeds accepted")
    device: str = Field("auto", description="worker's torch device: auto | cpu | cuda[:N]")
    torch_threads: int = Field(
        0, ge=0, description="CPU threads per trial; 0 = the host's cores split between the slots"
    )
    slots_per_gpu: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        1,
        description="a worker's trials on each GPU: N, or auto (packed by measured memory, "
        "up to max_slots_per_gpu)",
    )
    max_slots_per_gpu: int = Field(4, ge=1, le=64, description="auto packing's slots per GPU")

    @property
    def gpu_slots(self) -> int:
        """Slots per GPU: slots_per_gpu, or max_slots_per_gpu when packing by memory."""
        return self.max_slots_per_gpu if self.slots_per_gpu == "auto" else self.slots_per_gpu

    db_retry_seconds: float = Field(
        300.0, gt=0, description="workers retry database writes this long before giving up"
    )
    stale_seconds: float | None = Field(
        None, gt=0, description="no heartbeat this long = worker lost; default max(30, 6 beats)"
    )
    heartbeat_seconds: float = Field(5.0, gt=0, description="worker heartbeat period")
    max_attempts: int = Field(3, ge=1, description="runs of a trial whose worker died")
    sweep_seconds: float = Field(10.0, gt=0, description="API re-sends never-queued trials")
    # The dispatcher (service/dispatch.py): the broker holds at most `dispatch_window` trials
    # sent but not yet claimed; the API tops it up every `dispatch_seconds`.
    dispatch_window: int | None = Field(
        None, ge=1, le=10_000,
        description="trials sent but not yet claimed, at most; default: the trials running "
        "now (about the worker slots busy), at least 2",
    )  # fmt: skip
    dispatch_seconds: float = Field(0.25, gt=0, le=60, description="the dispatcher's period")
    unclaimed_seconds: float = Field(
        30.0, gt=0, description="a trial a consumer took but nobody claimed this long is re-sent"
    )
    api_url: str = Field("http://127.0.0.1:8000", description="where `samsweep run` submits")
    api_token: SecretStr | None = Field(None, description="bearer token `samsweep run` sends")
    # Credentials. With tokens configured, every write needs `Authorization: Bearer <token>`;
    # with private_studies, reads need one too and each owner sees only their studies.
    api_tokens: SecretStr | None = Field(None, description="comma-separated owner:token pairs")
    private_studies: bool = Field(False, description="studies visible to their owner only")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="largest request body")
    # The door's bounds (docs/api.md "The door"): what one request, one client or one owner
    # may cost the API.
    max_studies_per_owner: int = Field(
        50, ge=1, description="unfinished studies one owner may have (429 beyond)"
    )
    max_pending_trials_per_owner: int = Field(
        10_000, ge=1, description="queued or running trials one owner may have (429 beyond)"
    )
    cache_bytes: int = Field(
        64 * 2**20, ge=0, description="API: reports, /best and plots kept per process"
    )
    plot_workers: int = Field(2, ge=1, description="API: processes drawing plots")
    plot_queue: int = Field(
        8, ge=0, description="API: plots waiting for a drawing process (503 beyond)"
    )
    plot_timeout_seconds: float = Field(
        20.0, gt=0, description="API: a plot not drawn in this time is refused (422)"
    )
    max_page_bytes: int = Field(
        4_000_000, ge=10_000, description="API: a page of trials ends before this size"
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="API: a request's headers must arrive within this"
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="API: a request's body must arrive within this"
    )
    max_connections: int = Field(
        900, ge=1, description="API: open connections per process (503 beyond)"
    )
    broker_visibility_timeout: float = Field(
        24 * 3600, gt=0, description="Redis re-delivers an unacked task after this"
    )
    broker_transport_options: dict[str, Any] = Field(
        default_factory=dict, description="extra kombu transport options (JSON), e.g. Redis's"
    )
    dashboard_db_password: SecretStr | None = Field(
        None,
        description="PostgreSQL: `samsweep migrate` makes a read-only login role for "
        "optuna-dashboard with this password (SELECT on Optuna's schema only)",
    )
    dashboard_db_role: str = Field(
        "samsweep_dashboard", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="its name"
    )
    checkpoint_dir: Path | None = Field(
        None, description="per-epoch checkpoints (shared by all workers); default state_dir"
    )

    # --- derived URLs -------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir.resolve()}/samsweep.sqlite"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.state_dir.resolve()}/broker.sqlite"

    @property
    def resolved_optuna_url(self) -> str:
        """Optuna's storage, kept apart from the service's tables (docs/DESIGN.md §4, §7).

        SQLite: its own file beside the service's. PostgreSQL: the same database,
        in its own schema via the connection's search_path.
        """
        if self.optuna_url:
            return self.optuna_url
        try:
            url = make_url(self.resolved_database_url)
        except ArgumentError:
            raise ValueError("SAMSWEEP_DATABASE_URL is not a database URL") from None
        backend = url.get_backend_name()
        if backend == "sqlite" and url.database not in (None, "", ":memory:"):
            return f"sqlite:///{Path(url.database).with_name('optuna.sqlite')}"
        if backend == "postgresql":
            return with_search_path(self.resolved_database_url, OPTUNA_SCHEMA)
        raise ValueError(f"unsupported SAMSWEEP_DATABASE_URL: {redact(self.resolved_database_url)}")

    @property
    def resolved_checkpoint_dir(self) -> Path:
        return self.checkpoint_dir or self.state_dir / "checkpoints"

    @field_validator("api_tokens")
    @classmethod
    def _well_formed_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        parse_tokens(reveal(value))  # a malformed list stops every process at start-up
        return value

    def tokens(self) -> dict[str, str]:
        """owner -> token, from `api_tokens`; empty when no credentials are configured."""
        return parse_tokens(reveal(self.api_tokens))

    @property
    def stale_after_seconds(self) -> float:
        """A RUNNING trial with no heartbeat for this long has lost its worker."""
        return self.stale_seconds or max(30.0, 6 * self.heartbeat_seconds)

    @property
    def is_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("sqla+")


def reveal(secret: SecretStr | None) -> str | None:
    """The secret's text, where it is used (secrets print as ********** elsewhere)."""
    return None if secret is None else secret.get_secret_value()


def parse_tokens(value: str | None) -> dict[str, str]:
    """`owner:token,owner:token` -> {owner: token}; raises ValueError on a malformed pair."""
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in (value or "").split(","))):
        owner, sep, token = item.partition(":")
        if not sep or not owner or len(token) < 16:
            raise ValueError(
                "SAMSWEEP_API_TOKENS must be owner:token pairs, tokens of 16+ characters"
            )
        pairs[owner] = token
    return pairs


def with_search_path(url: str, schema: str) -> str:
    """Set `options=-csearch_path=<schema>` in a PostgreSQL URL (replacing any options)."""
    parsed = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """A database URL with its password (if any) shown as ***, for logs and terminals;
    one without a password is returned as given."""
    parsed = make_url(url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
