"""What recording one epoch costs the database, at epoch 10, 1 000 and 10 000 (the
longest a spec may ask for), on PostgreSQL: the trial's whole `curves` JSON array
rewritten on every epoch (as the worker did before migration 0004) against one row
appended per epoch (samsweep_trial_epochs, now).

    python -m benchmarks.epochs [--repeat 21] [--epochs 10,1000,10000]

Both run in this one process against the same server. The old way runs on a
database migrated to revision 0003, where the array is a column of the trial row: a
guarded UPDATE of the row's epoch, heartbeat and an array of n epochs for epoch n, as
worker/recorder.py wrote it (through the worker's engine and sessions). The new way
runs on a database at head, through the worker's own guarded write
(`worker.claim.write_claimed` with one epoch record). For each epoch count n both
trials first hold n-1 epochs (not timed) and write epoch n (a warm-up, not counted);
then --repeat rounds each write one more epoch the old way (an array of n epochs) and
the new way (one row), interleaved so both see the same load. It prints the medians
of the milliseconds one epoch's write takes (statement and commit, seen by the
client) and of the bytes of write-ahead log it adds (`pg_current_wal_insert_lsn()`
before and after), old/new ratios, and the range of the per-round time ratio. The log
is the server's: other activity on it can only add bytes to a sample, which the
median resists. Needs PostgreSQL as for the tests (SAMSWEEP_TEST_POSTGRES).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from benchmarks.live import PG_ADMIN, grid_spec
from samsweep.core.db import JsonType, TrialEpoch, put_epochs, session_factory, utcnow
from samsweep.core.migrate import alembic_config
from samsweep.core.spec import StudySpec
from worker.claim import Claim, write_claimed

TOKEN = "b" * 32
# The trial row as revision 0003 left it: the curves array a column of its own
OLD_TRIALS = sa.table(
    "samsweep_trials", sa.column("id"), sa.column("claim_token"), sa.column("epoch"),
    sa.column("heartbeat_at"), sa.column("curves", JsonType),
)  # fmt: skip


def record(epoch: int) -> dict[str, Any]:
    """One epoch as the trainer reports it (trainer.EpochMetrics.to_dict()): full-precision
    floats that differ from epoch to epoch, as real metrics do (identical ones would let
    PostgreSQL's compression of the array flatter the old way)."""
    rng = random.Random(epoch)
    return {
        "epoch": epoch, "train_loss": rng.uniform(0, 2), "train_accuracy": rng.random(),
        "test_loss": rng.uniform(0, 2), "test_accuracy": rng.random(),
        "seconds": rng.uniform(1, 2), "val_accuracy": rng.random(), "lr": rng.uniform(0, 0.1),
    }  # fmt: skip


@contextmanager
def database(revision: str) -> Iterator[str]:
    """A fresh database migrated to `revision` with one study and one claimed trial."""
    name = f"samsweep_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    try:
        command.upgrade(alembic_config(url), revision)
        engine = create_engine(url)
        spec = StudySpec.model_validate(grid_spec(1, 1, 1, epochs=10_000))
        params = spec.trials()[0]
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO samsweep_studies (id, name, spec, n_trials, optuna_study_name,"
                    " created_at) VALUES ('s1', 'bench', '{}', 1, 'bench-s1', now())"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO samsweep_trials (id, study_id, number, cell_key, seed, params,"
                    " state, attempts, claim_token, epoch"
                    + (", curves" if revision == "0003" else "")
                    + ") VALUES (1, 's1', 0, :cell, 0, CAST(:params AS jsonb), 'RUNNING', 1,"
                    " :token, 0" + (", '[]'" if revision == "0003" else "") + ")"
                ),
                {"cell": params.cell_key, "params": params.model_dump_json(), "token": TOKEN},
            )
        engine.dispose()
        yield url
    finally:
        from samsweep.core.db import engine_for

        engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _lsn(engine: Engine) -> int:
    with engine.connect() as conn:
        hi, lo = conn.execute(text("SELECT pg_current_wal_insert_lsn()")).scalar_one().split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def old_way(url: str, n: int, repeat: int) -> Callable[[int], None]:
    """Before 0004: epoch n's write is an array of n epochs on the trial row. Each write
    is an array of exactly n epochs, its content new each time (epochs e-n+1..e for the
    e-th write), as a growing array's is: PostgreSQL logs only the changed middle of a
    row updated on its page, and rewriting identical content would flatter the old way.
    The trial holds n-1 epochs on return."""
    sessions = session_factory(url)  # the worker's engine and sessions, as write_claimed
    guarded = sa.update(OLD_TRIALS).where(OLD_TRIALS.c.id == 1, OLD_TRIALS.c.claim_token == TOKEN)
    curves = [record(e) for e in range(1, n + 2 + repeat)]  # the recorder's list
    with sessions() as session:  # the epochs before it, not timed
        session.execute(guarded.values(curves=curves[: n - 1], epoch=n - 1))
        session.commit()

    def write(epoch: int) -> None:
        window = curves[epoch - n : epoch]
        with sessions() as session:
            session.execute(guarded.values(epoch=epoch, curves=window, heartbeat_at=utcnow()))
            session.commit()

    return write


def new_way(url: str, n: int) -> Callable[[int], None]:
    """Now: epoch e's write is one row appended through the worker's guarded write. The
    trial holds epochs 1..n-1 on return."""
    spec = StudySpec.model_validate(grid_spec(1, 1, 1, epochs=10_000))
    claim = Claim(1, TOKEN, spec, spec.trials()[0], "bench-s1", "s1", [], 1)
    sessions = session_factory(url)
    with sessions() as session:  # the epochs before it, not timed
        session.execute(sa.delete(TrialEpoch))
        put_epochs(session, 1, [record(e) for e in range(1, n)])
        session.commit()

    def write(epoch: int) -> None:
        assert write_claimed(sessions, claim, [record(epoch)], epoch=epoch, heartbeat_at=utcnow())

    return write


def timed(wal: Engine, write: Callable[[int], None], epoch: int) -> tuple[float, int]:
    """Milliseconds of one write, and the bytes of write-ahead log it added."""
    before = _lsn(wal)
    t = time.perf_counter()
    write(epoch)
    ms = 1000 * (time.perf_counter() - t)
    return ms, _lsn(wal) - before


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=21)
    p.add_argument("--epochs", default="10,1000,10000")
    args = p.parse_args()
    counts = [int(n) for n in args.epochs.split(",")]
    head = f"{'epoch':>6} {'old ms':>8} {'new ms':>8} {'old/new':>8} {'per-round range':>16}"
    print(f"{head} {'old WAL B':>10} {'new WAL B':>10} {'old/new':>8}")
    with database("0003") as old_url, database("head") as new_url:
        wal = create_engine(new_url)
        for n in counts:
            old, new = old_way(old_url, n, args.repeat), new_way(new_url, n)
            old(n), new(n)  # warm-up, not counted
            rounds = []
            for epoch in range(n + 1, n + 1 + args.repeat):  # interleaved: the same load
                rounds.append((*timed(wal, old, epoch), *timed(wal, new, epoch)))
            old_ms, old_b, new_ms, new_b = (statistics.median(c) for c in zip(*rounds, strict=True))
            ratios = sorted(r[0] / r[2] for r in rounds)
            spread = f"{ratios[0]:.1f}–{ratios[-1]:.1f}x"
            print(
                f"{n:>6} {old_ms:>8.2f} {new_ms:>8.2f} {old_ms / new_ms:>7.1f}x {spread:>16}"
                f" {old_b:>10.0f} {new_b:>10.0f} {old_b / new_b:>7.1f}x"
            )
        wal.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
