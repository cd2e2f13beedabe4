"""What became of one delivery of a trial's task (the task's return value, in its log),
and what a failed trial's `error` tells a client (`public_error`)."""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path

from samsweep.core.states import TrialState


class Outcome(enum.StrEnum):
    COMPLETE = "complete"  # trained and recorded
    ADOPTED = "adopted"  # an earlier attempt's Optuna result, recorded without retraining
    SKIPPED = "skipped"  # not QUEUED: another worker has it, or it is finished
    CLAIM_LOST = "claim lost"  # the sweeper gave it to another worker mid-training
    CANCELLED = "cancelled"  # its study was cancelled
    PRUNED = "pruned"  # the study's pruner stopped it: a worse start than its group's
    DELETED = "deleted"  # its study was deleted: nothing left to record it in
    DIVERGED = "diverged"  # the loss became NaN or infinite (trainer.DivergedError)
    INFEASIBLE = "infeasible"  # out of memory at this batch size on this device
    ERROR = "error"  # any other failure, recorded with its exception

    @property
    def state(self) -> TrialState | None:
        """The trial's final state for this outcome; None where this worker records
        nothing (another worker owns the trial, or nothing was claimed)."""
        return _STATES.get(self)


_STATES = {
    Outcome.COMPLETE: TrialState.COMPLETE,
    Outcome.ADOPTED: TrialState.COMPLETE,
    Outcome.CANCELLED: TrialState.CANCELLED,
    Outcome.DIVERGED: TrialState.FAILED,
    Outcome.INFEASIBLE: TrialState.INFEASIBLE,
    Outcome.PRUNED: TrialState.PRUNED,
    Outcome.ERROR: TrialState.FAILED,
}


# An absolute path: a slash that starts a word (not `a/b`, `1/2`, a URL's `//`), then
# anything up to a space, a quote or punctuation that ends a path in a message.
_SERVER_PATH = re.compile(r"(?<![\w.~:/-])/[^\s'\"`,;()\[\]{}<>]+")
# Exceptions of the infrastructure's clients: their text names hosts, ports, SQL and
# parameters. The type says enough to the client; the worker's log has the rest.
_INFRASTRUCTURE = frozenset({"sqlalchemy", "psycopg", "psycopg2", "redis", "kombu", "amqp"})


def public_text(text: str, data_dir: Path | None = None) -> str:
    """`text` with no server path in it: a path under the data root becomes relative to
    it (as `dataset.path` is written: `cifar10/cifar-10-batches-py/data_batch_1`), any
    other absolute path (the checkpoint directory, the installation) `<server path>`."""
    if data_dir is not None:
        for root in sorted({os.path.realpath(data_dir), os.path.abspath(data_dir)}, key=len)[::-1]:
            text = text.replace(root.rstrip("/") + "/", "")
    return _SERVER_PATH.sub("<server path>", text)


def public_error(e: BaseException, data_dir: Path | None = None) -> str:
    """`Type: message` for a trial's `error`, which the API returns to any reader: about
    the trial, never about the host (no server path, no database or broker address).
    The full exception, traceback included, goes to the worker's log."""
    name = type(e).__name__
    if type(e).__module__.split(".")[0] in _INFRASTRUCTURE:
        return f"{name} (details in the worker's log)"
    message = public_text(str(e), data_dir)
    return f"{name}: {message}" if message else name
