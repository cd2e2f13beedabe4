"""The worker's Celery app (`celery -A worker.app worker`, or `samsweep worker`).

torch is imported lazily inside the task, so the parent process that forks or
spawns pool children never initializes CUDA. Each pool process is pinned to its
slot's GPU as it starts (worker/slots.py).
"""

import logging

from celery.signals import worker_process_init

from samsweep.core.queue import make_celery
from samsweep.core.settings import get_settings
from worker.slots import pin

app = make_celery(get_settings(), include=["worker.tasks"])


@worker_process_init.connect
def _pin_to_the_slots_gpu(**_: object) -> None:
    """Each pool process sees only its slot's GPU, set before torch is imported."""
    from billiard.process import current_process  # type: ignore[import-untyped]

    index = getattr(current_process(), "index", 0) or 0
    gpu = pin(index)
    if gpu is not None:
        logging.getLogger(__name__).info("slot %d pinned to GPU %s", index, gpu)
