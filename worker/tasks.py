"""Celery tasks: like web views, they take ids and hand the work to the runner."""

from __future__ import annotations

from samsweep.core.settings import get_settings
from samsweep.core.tasks import RUN_TRIAL
from worker.app import app


@app.task(name=RUN_TRIAL, acks_late=True, reject_on_worker_lost=True)
def run_trial(trial_id: int) -> str:
    # torch loads here, in the pool process, never in the parent that forks it
    from worker.runner import run_trial as run

    return str(run(trial_id, get_settings()))
