"""Processes the CLI starts, and how they stop with it: `up` starts a worker, `run` may
start `up`; a child stops when its parent dies, however it dies."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import lru_cache

# How long a stopping process waits for what it started before killing it: `up` gives its
# worker's warm shutdown (the running trial finishes its epoch) this long, and `run` gives
# `up` its uvicorn shutdown plus that. A child whose parent died allows itself the same.
WORKER_STOP_GRACE = 15.0
UP_STOP_GRACE = 30.0

PR_SET_PDEATHSIG = 1


@lru_cache
def prctl_function() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    return prctl


def terminate_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux send the child SIGTERM when this process dies, however
    it dies (SIGKILL included). The death is that of the thread that forks: call Popen
    from the main thread. Elsewhere None; the child's --parent-pid watch still applies."""
    prctl = prctl_function()  # looked up here: the child, between fork and exec, only calls it
    if prctl is None:
        return None
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), sigterm)

    return preexec


def stop_after_parent(parent_pid: int, grace: float) -> None:
    """For a process started by another samsweep process: once that parent is gone (the
    kernel has sent SIGTERM here, PR_SET_PDEATHSIG, and a graceful stop has begun), allow
    `grace` seconds, then SIGKILL this process, as the parent would have. Bounds how long
    an orphan lives even if its graceful stop waits on a long epoch or a stuck request."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        if prctl_function() is None:  # no PR_SET_PDEATHSIG here: begin the graceful stop ourselves
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    threading.Thread(target=watch, name="stop-after-parent", daemon=True).start()
