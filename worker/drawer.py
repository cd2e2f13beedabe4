"""GP's configurations, drawn beside the workers (docs/spec.md "Search").

Optuna's GPSampler runs on torch, which the API never loads (docs/DESIGN.md §6), so the
API's dispatcher does not draw a GP study's configurations: a thread of every worker's
main process (`Drawer`) does, one configuration ahead. When a GP study with budget left
has no QUEUED trial (its last configuration's trials are all running or finished), the
thread runs `python -m worker.drawer STUDY_ID` in a process of its own: torch is loaded
there and gone with it, never in the process that forks the pool. That process locks
the study's row, checks again, and draws one configuration (samsweep.core.draws), whose
trials the API's dispatcher then sends like a grid's. Several hosts may run a drawer:
the lock makes their draws take turns, and the check keeps one configuration ahead.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

from sqlalchemy import exists, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from samsweep.core import draws
from samsweep.core.db import Study, Trial, rows_updated, session_factory
from samsweep.core.settings import Settings, get_settings
from samsweep.core.states import TrialState

log = logging.getLogger(__name__)

DRAW_TIMEOUT = 600.0  # seconds one draw (a GP fit on the study's results) may take


def waiting(session: Session) -> list[str]:
    """GP studies (DRAWN_BY_WORKERS) with budget left and no QUEUED trial: each needs its
    next configuration drawn."""
    t = aliased(Trial)  # the budget's query joins Trial itself
    queued = exists().where(t.study_id == Study.id, t.state == TrialState.QUEUED)
    room = draws.budgets(session, Study.sampler.in_(draws.DRAWN_BY_WORKERS) & ~queued)
    return [sid for sid, _ in room]


def draw_next(sessions: sessionmaker[Session], settings: Settings, study_id: str) -> list[int]:
    """Draw the study's next configuration if it still waits for one (study row locked:
    drawers take turns); its new trial ids."""
    with sessions() as session:
        # A write first: it locks the study's row on PostgreSQL and takes SQLite's write
        # lock, so a second drawer waits here and then sees this one's trials.
        hold = update(Study).where(Study.id == study_id).values(n_trials=Study.n_trials)
        if rows_updated(session, hold) != 1 or study_id not in waiting(session):
            return []
        study = session.get(Study, study_id)
        assert study is not None
        made = draws.draw(session, settings.resolved_optuna_url, study, 1)
        session.commit()
        return made


class Drawer(threading.Thread):
    """Every `period` seconds, a drawing process for each GP study that waits (above)."""

    def __init__(self, settings: Settings, period: float = 1.0) -> None:
        super().__init__(name="samsweep-drawer", daemon=True)
        self.settings, self.period = settings, period
        self.sessions = session_factory(settings.resolved_database_url)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                with self.sessions() as session:
                    studies = waiting(session)
            except Exception as e:  # the database is down: the next round tries again
                log.warning("drawer: could not read the studies to draw for: %s", e)
                continue
            for study_id in studies:
                self._draw(study_id)

    def _draw(self, study_id: str) -> None:
        cmd = [sys.executable, "-m", "worker.drawer", study_id]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=DRAW_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("drawer: study %s: the draw took over %.0f s", study_id, DRAW_TIMEOUT)
            return
        if done.returncode != 0:
            log.warning("drawer: study %s: the draw failed:\n%s", study_id, done.stderr[-2000:])


def main(argv: list[str]) -> int:
    """`python -m worker.drawer STUDY_ID`: one draw, in this process (it loads torch)."""
    (study_id,) = argv
    settings = get_settings()
    made = draw_next(session_factory(settings.resolved_database_url), settings, study_id)
    print(f"study {study_id}: {len(made)} trial(s) drawn")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main(sys.argv[1:]))
