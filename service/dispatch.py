"""The dispatcher: the database is the queue; the broker holds a small window of it.

Every trial is a row; the broker only carries messages that name one (samsweep.core.queue).
`dispatch` keeps at most a *window* of trials sent but not yet claimed (QUEUED with
`enqueued_at` set): the setting SAMSWEEP_DISPATCH_WINDOW, or by default the number of
trials running now (about the worker slots that are busy), at least 2, so a worker that
frees its slot finds its next trial waiting. Each free place goes to the study that is
next in turn, asked at that moment what it runs next (`next_trials`: for a grid, its
lowest-numbered unsent trial):

- studies of higher `priority` first; between equals, round robin: the study sent a
  trial least recently (`dispatched_at`) goes first, so a 2-trial study posted after a
  1 000-trial one is sent its first trial at the next place that frees;
- a study with `max_concurrent_trials` is sent nothing while that many of its trials are
  running or sent, so no more than that can ever run at once;
- a cancelled study is sent nothing.

A sampler's study (spec `sampler`: random, tpe) has no trials until they are asked for:
`next_trials` then draws its next configuration from its Optuna sampler, which sees
every result recorded by then, and creates one trial per seed (samsweep.core.draws).
Configurations alternate between SAM and the baseline (ρ = 0), so each has its half of
the budget and the baseline is tuned over the same search as SAM. GP's configurations
are drawn beside the workers (it needs torch: worker/drawer.py) and sent from here.

The API calls it after a create and every SAMSWEEP_DISPATCH_SECONDS (service/sweeper.py).
One round at a time per deployment: a PostgreSQL advisory lock held for the round's
transaction (another API process or replica skips the round; the lock dies with a killed
one), and on SQLite an exclusive flock on a file beside the database, held for the round.
The periodic rounds run in the deployment's one leading API process (service/leader.py).
A trial is marked sent after the broker took it: a round that dies mid-send leaves the
rest unmarked, and the next round sends them again, which the worker's claim absorbs if
the first message lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from celery import Celery
from sqlalchemy import ColumnElement, case, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from samsweep.core import draws
from samsweep.core.db import Study, Trial, utcnow
from samsweep.core.draws import DRAWN_BY_WORKERS, budgets
from samsweep.core.queue import enqueue_trial
from samsweep.core.settings import Settings
from samsweep.core.states import TrialState
from service.leader import lock_file

log = logging.getLogger(__name__)

MIN_WINDOW = 2
# pg_try_advisory_xact_lock's key for a dispatch round (any constant of this deployment).
ROUND_LOCK = 0x5A3_D15
_round = threading.Lock()  # one round at a time in this process
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass
class Candidate:
    """A study with trials to send, as one round sees it."""

    study_id: str
    priority: int
    bound: int | None  # max_concurrent_trials
    last_sent: datetime | None
    busy: int  # running or sent, not yet finished
    unsent: int

    @property
    def can_take(self) -> bool:
        return self.unsent > 0 and (self.bound is None or self.busy < self.bound)


def choose(candidates: list[Candidate], places: int) -> list[str]:
    """Which study gets each of `places` free places, in order: higher priority first,
    then the study sent a trial least recently; each pick moves it to the back of its
    priority's turn. A study at its bound or out of unsent trials takes no more."""
    order = 0
    heap = []
    for c in candidates:
        if c.can_take:
            heap.append((-c.priority, c.last_sent or _NEVER, order, c))
            order += 1
    heapq.heapify(heap)
    picks: list[str] = []
    while heap and len(picks) < places:
        priority, _, _, c = heapq.heappop(heap)
        picks.append(c.study_id)
        c.busy, c.unsent = c.busy + 1, c.unsent - 1
        if c.can_take:  # back of the turn: after every study of its priority sent before
            order += 1
            heapq.heappush(heap, (priority, datetime.max.replace(tzinfo=UTC), order, c))
    return picks


def next_trials(session: Session, settings: Settings, study_id: str, n: int) -> list[int]:
    """What the study runs next, asked now: its lowest-numbered unsent trials, and for a
    sampler's study, new configurations drawn now when those are not enough."""
    ids = list(
        session.scalars(
            select(Trial.id)
            .where(
                Trial.study_id == study_id,
                Trial.state == TrialState.QUEUED,
                Trial.enqueued_at.is_(None),
            )
            .order_by(Trial.number)
            .limit(n)
        )
    )
    if len(ids) < n:
        ids += draw(session, settings, study_id, n - len(ids))
    return ids


def draw(session: Session, settings: Settings, study_id: str, n: int) -> list[int]:
    """A sampler's new trials, drawn here (random, tpe: samsweep.core.draws). GP needs
    torch, which the API never loads: its configurations are drawn beside the workers
    (worker/drawer.py) and sent from here like a grid's trials."""
    study = session.get(Study, study_id)
    if study is None or study.sampler is None or study.sampler in DRAWN_BY_WORKERS:
        return []
    return draws.draw(session, settings.resolved_optuna_url, study, n)


def window(session: Session, settings: Settings) -> tuple[int, int]:
    """(the window's size, the trials in it now: sent but not yet claimed)."""
    sent = (Trial.state == TrialState.QUEUED) & Trial.enqueued_at.is_not(None)
    running, in_flight = session.execute(
        select(
            func.count().filter(Trial.state == TrialState.RUNNING), func.count().filter(sent)
        ).where(Trial.state.in_([TrialState.QUEUED, TrialState.RUNNING]))
    ).one()
    return settings.dispatch_window or max(MIN_WINDOW, running), in_flight


def candidates(session: Session) -> list[Candidate]:
    """Every study that is not cancelled and has a QUEUED trial never sent, or is a
    sampler's study with configurations still to draw, with its running-or-sent count:
    one grouped query over the QUEUED and RUNNING trials, one over the sampler studies."""
    unsent = (Trial.state == TrialState.QUEUED) & Trial.enqueued_at.is_(None)
    found = {c.study_id: c for c in _with_queued(session, unsent)}
    rooms = dict(budgets(session, Study.sampler.not_in(DRAWN_BY_WORKERS)))
    for sid, room in rooms.items():
        if sid in found:
            found[sid].unsent += room
    new = [sid for sid in rooms if sid not in found]
    for sid, priority, bound, last in session.execute(
        select(Study.id, Study.priority, Study.max_concurrent_trials, Study.dispatched_at)
        .where(Study.id.in_(new))
    ) if new else ():  # fmt: skip
        found[sid] = Candidate(sid, priority, bound, last, 0, rooms[sid])
    return [c for c in found.values() if c.unsent]


def _with_queued(session: Session, unsent: ColumnElement[bool]) -> list[Candidate]:
    rows = session.execute(
        select(
            Study.id,
            Study.priority,
            Study.max_concurrent_trials,
            Study.dispatched_at,
            func.sum(case((unsent, 0), else_=1)),
            func.sum(case((unsent, 1), else_=0)),
        )
        .join(Trial, Trial.study_id == Study.id)
        .where(
            Study.cancelled_at.is_(None),
            Trial.state.in_([TrialState.QUEUED, TrialState.RUNNING]),
        )
        .group_by(Study.id, Study.priority, Study.max_concurrent_trials, Study.dispatched_at)
    )
    return [Candidate(*row) for row in rows]


@contextlib.contextmanager
def _take_round(session: Session, settings: Settings) -> Iterator[bool]:
    """This deployment's one dispatch round: True while this process holds it, False if
    another API process does. PostgreSQL: an advisory lock for the current transaction;
    SQLite: an exclusive flock on a file beside the database, for the block."""
    if session.get_bind().dialect.name == "postgresql":
        yield bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ROUND_LOCK}))
        return
    with open(lock_file(settings, "dispatch.lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def dispatch(session: Session, celery: Celery, settings: Settings) -> int:
    """One round: fill the window's free places fairly; returns how many trials were sent.

    The broker is written to while the round's transaction (and so its lock) is held: a
    round sends at most a window of trials, so it is short."""
    if not _round.acquire(blocking=False):
        return 0
    try:
        with _take_round(session, settings) as ours:
            return _dispatch_round(session, celery, settings) if ours else _skip(session)
    except Exception:
        session.rollback()
        raise
    finally:
        _round.release()


def _skip(session: Session) -> int:
    session.rollback()
    return 0


def _dispatch_round(session: Session, celery: Celery, settings: Settings) -> int:
    """The round itself, with the round's lock held."""
    size, in_flight = window(session, settings)
    places = size - in_flight
    picks = choose(candidates(session), places) if places > 0 else []
    if not picks:
        session.rollback()
        return 0
    ids: list[tuple[str, int]] = []
    wanted: dict[str, int] = {}
    for study_id in picks:
        wanted[study_id] = wanted.get(study_id, 0) + 1
    found = {s: iter(next_trials(session, settings, s, n)) for s, n in wanted.items()}
    for study_id in picks:  # in the order chosen: the broker delivers in that order
        trial_id = next(found[study_id], None)
        if trial_id is not None:
            ids.append((study_id, trial_id))
    sent: list[tuple[str, int]] = []
    try:
        with celery.producer_or_acquire() as producer:
            for study_id, trial_id in ids:
                enqueue_trial(celery, settings.queue, trial_id, producer=producer)
                sent.append((study_id, trial_id))
    except Exception as e:  # broker unreachable: the unsent stay unmarked
        log.warning("could not send %d trial(s): %s", len(ids) - len(sent), e)
    now = utcnow()
    if sent:
        session.execute(
            update(Trial)
            .where(Trial.id.in_([t for _, t in sent]), Trial.enqueued_at.is_(None))
            .values(enqueued_at=now),
            execution_options={"synchronize_session": False},
        )
        session.execute(
            update(Study).where(Study.id.in_({s for s, _ in sent})).values(dispatched_at=now),
            execution_options={"synchronize_session": False},
        )
    session.commit()
    return len(sent)


def dispatch_now(db: sessionmaker[Session], celery: Celery, settings: Settings) -> None:
    """After a create's 201 is sent: a round, so the new study's first trials go out
    without waiting for the next period. If it fails, the next round sends them."""
    with db() as session:
        dispatch(session, celery, settings)
