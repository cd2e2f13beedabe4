"""The Celery app configuration shared by the API (producer) and the worker (consumer).

Delivery is at-least-once (late acks, redelivery of a lost worker's task), so the
task itself must be idempotent: it claims its trial row in the database first
(worker/claim.py). The broker carries only trial ids.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from celery import Celery

from samsweep.core.settings import Settings
from samsweep.core.tasks import RUN_TRIAL

if TYPE_CHECKING:
    from kombu import Producer

# kombu's SQLAlchemy transport passes every transport option to create_engine, so
# its polling interval is set on the class (docs/DESIGN.md §7); 0.1 s gives ~60 ms latency.
EMBEDDED_POLLING_INTERVAL = 0.1


def make_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    app = Celery("samsweep", broker=settings.resolved_broker_url, include=list(include))
    app.conf.update(
        task_default_queue=settings.queue,
        task_routes={RUN_TRIAL: {"queue": settings.queue}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if settings.is_embedded_broker:
        from kombu.transport import sqlalchemy as sqla_transport

        sqla_transport.Transport.polling_interval = EMBEDDED_POLLING_INTERVAL
        app.conf.broker_transport_options = {"connect_args": {"timeout": 30}}
    else:
        # Redis re-delivers an unacked task after this; trials run for hours, and the
        # database claim makes a re-delivery harmless (it is skipped), so it is long.
        app.conf.broker_transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout,
            **settings.broker_transport_options,
        }
    return app


def declare_queue(app: Celery, name: str) -> None:
    """Declare the trial queue once, before workers start.

    Workers started together on a fresh embedded broker can otherwise race on
    `UNIQUE constraint failed: kombu_queue.name` (docs/DESIGN.md §7).
    """
    with app.connection_for_write() as conn:
        app.amqp.queues[name](conn.default_channel).declare()


def broker_identity(app: Celery) -> str | None:
    """An id that changes when the broker restarts (Redis's run_id); None if unknown.

    A Redis restarted without its data has lost every queued message: the sweeper
    compares this id between rounds and re-sends all QUEUED trials when it changes.
    """
    with app.connection_for_write() as conn:
        client = getattr(conn.default_channel, "client", None)
        if client is None or not hasattr(client, "info"):
            return None  # the embedded broker: its messages live in a file
        return str(client.info("server")["run_id"])


def waiting_trial_ids(app: Celery, queue: str) -> set[int]:
    """The trials whose messages wait in the queue, not yet delivered to any consumer
    (Redis: the queue's list; the embedded broker: its visible rows). A trial that was
    sent, is not claimed and is not here was taken by a consumer (service/sweeper.py)."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = getattr(channel, "client", None)
        if client is not None and hasattr(client, "lrange"):  # Redis
            payloads = client.lrange(queue, 0, -1)
        else:  # kombu's SQLAlchemy transport: delivered rows are kept, not visible
            rows = channel._query_all(queue).filter(channel.message_cls.visible.is_(True))
            payloads = [row.payload for row in rows]
    ids = set()
    for payload in payloads:
        trial_id = _trial_id(payload)
        if trial_id is not None:
            ids.add(trial_id)
    return ids


def _trial_id(payload: bytes | str) -> int | None:
    """The trial a message names (Celery's protocol 2: a base64 JSON body [args, ...])."""
    try:
        message = json.loads(payload)
        if message.get("headers", {}).get("task") != RUN_TRIAL:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None  # not a message of ours


def enqueue_trial(app: Celery, queue: str, trial_id: int, producer: Producer | None = None) -> None:
    """Send one trial id; pass `producer` to send many over one broker connection."""
    app.send_task(RUN_TRIAL, args=[trial_id], queue=queue, producer=producer)
