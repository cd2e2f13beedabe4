"""Real samsweep processes, as in production: the API (uvicorn) and workers (Celery),
started through the CLI (`python -m samsweep.cli`) as subprocesses. Only tests under
tests/e2e/ may start them (tests/conftest.py refuses it elsewhere)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.http import free_port
from tests.support.paths import SHARED_DATA


@dataclass
class Deployment:
    """Environment for one samsweep deployment, and the processes started for it."""

    env: dict[str, str]
    tmp: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    api_url: str | None = None

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "samsweep.cli", *args],
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, name: str, *args: str, memory_limit: int | None = None) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "ab") as log:  # the child keeps its own fd
            proc = subprocess.Popen(
                [sys.executable, "-m", "samsweep.cli", *args],
                env=self.env,
                cwd=self.tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so a test can signal the whole process group
                preexec_fn=None if memory_limit is None else _limit_memory(memory_limit),
            )
        proc.log_path = self.tmp / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start_api(self, workers: int = 1) -> str:
        """`samsweep api` on a free port: one process unless asked (the default is the
        host's cores; tests/e2e/service/test_api_processes.py runs several)."""
        port = free_port()
        proc = self.spawn("api", "api", "--port", str(port), "--workers", str(workers))
        self.api_url = f"http://127.0.0.1:{port}"
        wait_healthy(self.api_url, proc)
        return self.api_url

    def start_worker(
        self, name: str = "worker", *extra: str, memory_limit: int | None = None
    ) -> subprocess.Popen:
        return self.spawn(name, "worker", *extra, memory_limit=memory_limit)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_path.read_text()[-4000:]}"  # type: ignore[attr-defined]
            for p in self.procs
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _limit_memory(limit: int):
    """An address-space limit for a child (and its children): real allocation failures."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    from samsweep.client import ServerExited, wait_until_up

    try:
        wait_until_up(url, timeout, process=proc)
    except ServerExited as e:
        raise RuntimeError(f"{e}: {proc.log_path.read_text()}") from None  # type: ignore[attr-defined]


def base_env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMSWEEP_")}
    env.update(
        PYTHONUNBUFFERED="1",
        SAMSWEEP_STATE_DIR=str(tmp / "state"),
        SAMSWEEP_DATA_DIR=str(SHARED_DATA),
        SAMSWEEP_SWEEP_SECONDS="1",
        SAMSWEEP_HEARTBEAT_SECONDS="1",
        SAMSWEEP_DEVICE="cpu",
        SAMSWEEP_TORCH_THREADS="1",
    )
    env.update({f"SAMSWEEP_{k.upper()}": v for k, v in settings.items()})
    return env


@dataclass
class FinishedStudy:
    """A study that really ran, on an API and a worker kept for the whole test session."""

    deployment: Deployment
    api: str
    study_id: str
    spec: dict
