"""The worker's Celery app (`celery -A worker.app worker`, or `samsweep worker`).

torch is imported lazily inside the task, so the parent process that forks or
spawns pool children never initializes CUDA.
"""

from samsweep.core.queue import make_celery
from samsweep.core.settings import get_settings

app = make_celery(get_settings(), include=["worker.tasks"])
