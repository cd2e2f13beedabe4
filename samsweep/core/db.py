"""The service's tables and engine. Migrations (Alembic) own the schema.

The database is the source of truth for every trial's state: the broker only
carries ids, and a task re-reads (and claims) its trial row before training.
Optuna's tables live elsewhere (samsweep.core.optuna_store).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.sql.dml import Update
from sqlalchemy.types import TypeDecorator

from samsweep.core.states import TrialState

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite would return naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JsonType, list[Any]: JsonType, datetime: UtcDateTime}


class Study(Base):
    __tablename__ = "samsweep_studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]]
    n_trials: Mapped[int] = mapped_column(Integer)
    optuna_study_name: Mapped[str] = mapped_column(String(100), unique=True)
    owner: Mapped[str | None] = mapped_column(String(200), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    cancelled_at: Mapped[datetime | None]
    # The dispatcher's inputs (service/dispatch.py), from the spec: its priority and bound
    # on running trials; and when it was last sent a trial (round robin between equals).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_concurrent_trials: Mapped[int | None] = mapped_column(Integer)
    dispatched_at: Mapped[datetime | None]
    # A sampler's study (NULL: a grid): its configurations are drawn one at a time, so
    # it has fewer rows than n_trials until its budget is spent.
    sampler: Mapped[str | None] = mapped_column(String(16))

    trials: Mapped[list[Trial]] = relationship(back_populates="study", order_by="Trial.number")

    __table_args__ = (UniqueConstraint("owner", "idempotency_key", name="uq_study_idempotency"),)


class Trial(Base):
    """One (grid cell, seed). Unique per study: a cell is trained and recorded once."""

    __tablename__ = "samsweep_trials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("samsweep_studies.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)  # position in the study's grid order
    cell_key: Mapped[str] = mapped_column(String(300))
    seed: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16), default=TrialState.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(200))
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # epochs done so far
    optuna_trial_id: Mapped[int | None] = mapped_column(Integer)
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)  # the study's objective
    metrics: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="trials")

    __table_args__ = (
        UniqueConstraint("study_id", "cell_key", "seed", name="uq_trial_cell_seed"),
        UniqueConstraint("study_id", "number", name="uq_trial_number"),
    )


class TrialEpoch(Base):
    """One epoch a trial trained: its record (the trainer's per-epoch metrics, `epoch`
    included), appended as the epoch ends. A trial's curves are its rows in epoch order
    (`curves_for`). Rows, not a JSON array on the trial: an epoch's write stays the
    same size at epoch 10 000 as at epoch 1 (benchmarks/epochs.py)."""

    __tablename__ = "samsweep_trial_epochs"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("samsweep_trials.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    record: Mapped[dict[str, Any]]


class IdempotencyKey(Base):
    """One row per (owner, Idempotency-Key): its primary key is what makes a create
    atomic. Concurrent requests with the same key insert the same key row; the
    database lets one commit, and the others find its study (tests/e2e/service/test_idempotency.py).

    `owner` is '' on an open API (no tokens). `request_digest` is the SHA-256 of the
    validated spec, so a replay with another body is told apart from a true replay.
    """

    __tablename__ = "samsweep_idempotency_keys"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("samsweep_studies.id", ondelete="CASCADE"))
    request_digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Meta(Base):
    """Small facts the service keeps between restarts (e.g. the broker's identity)."""

    __tablename__ = "samsweep_meta"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def curves_for(session: Session, trial_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """The curves of these trials in one query: each id's per-epoch records in epoch
    order, [] for a trial with none (queued, or its first epoch not done)."""
    curves: dict[int, list[dict[str, Any]]] = {i: [] for i in trial_ids}
    if curves:
        rows = session.execute(
            select(TrialEpoch.trial_id, TrialEpoch.record)
            .where(TrialEpoch.trial_id.in_(list(curves)))
            .order_by(TrialEpoch.trial_id, TrialEpoch.epoch)
        )
        for trial_id, record in rows:
            curves[trial_id].append(record)
    return curves


def put_epochs(
    session: Session, trial_id: int, records: Iterable[dict[str, Any]], drop: Collection[int] = ()
) -> None:
    """Insert these epoch records of one trial, replacing any row of the same epoch
    (an epoch trained again after a resume), and delete the rows of the epochs in
    `drop`. Only the rows named are written: never the trial's whole history. The
    caller guards the write (worker/claim.py) and commits."""
    if drop:
        session.execute(
            delete(TrialEpoch).where(TrialEpoch.trial_id == trial_id, TrialEpoch.epoch.in_(drop))
        )
    rows = [{"trial_id": trial_id, "epoch": r["epoch"], "record": r} for r in records]
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        stmt = insert(TrialEpoch).values(rows[start : start + _ROWS_PER_INSERT])
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[TrialEpoch.trial_id, TrialEpoch.epoch],
                set_={"record": stmt.excluded.record},
            )
        )


_ROWS_PER_INSERT = 1000  # 3 parameters a row, well under SQLite's 32 766 per statement


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; busy_timeout waits instead of
    # failing with "database is locked" when two processes write at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


@lru_cache
def engine_for(url: str) -> Engine:
    return make_engine(url)


@lru_cache
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=engine_for(url), expire_on_commit=False)


def rows_updated(session: Session, statement: Update) -> int:
    """Run an UPDATE in the session; how many rows it matched."""
    # Session.execute is typed to return a Result; an UPDATE's is a CursorResult.
    return cast(CursorResult[Any], session.execute(statement)).rowcount
