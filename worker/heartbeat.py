"""The heartbeat: a claimed trial's `heartbeat_at` touched every period, so the
sweeper can tell a dead worker's trial from a slow one (docs/DESIGN.md §5)."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from samsweep.core.db import utcnow
from worker.claim import Claim, write_claimed

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Beats until `stopped` is set; sets `lost` (and stops) if the claim was taken."""

    def __init__(self, sessions: sessionmaker[Session], c: Claim, period: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{c.trial_id}")
        self.sessions, self.claim, self.period = sessions, c, period
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                if not write_claimed(self.sessions, self.claim, heartbeat_at=utcnow()):
                    self.lost.set()
                    return
            except OperationalError as e:  # a database blip: the next beat may get through
                log.warning("heartbeat for trial %s failed: %s", self.claim.trial_id, e.orig)
