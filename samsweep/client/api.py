"""The samsweep API over HTTP: submit a study, follow it, cancel it, read its trials."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import httpx

from samsweep.client.tables import format_results, progress
from samsweep.states import StudyStatus

if TYPE_CHECKING:
    from subprocess import Popen


def is_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Refused(Exception):
    """The API answered a submission with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the API refused the study ({status}): {body}")
        self.status = status


def connect(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, timeout=30, headers=headers)


def submit(http: httpx.Client, spec: dict[str, Any]) -> str:
    """POST the study; returns its id."""
    r = http.post("/studies", json=spec)
    if r.status_code not in (200, 201):
        raise Refused(r.status_code, r.text)
    print(f"study {r.json()['id']}: {r.json()['n_trials']} trials", file=sys.stderr)
    return r.json()["id"]


def follow(http: httpx.Client, study_id: str, poll: float = 1.0) -> None:
    """Show progress until the study is complete or cancelled."""
    started, last = time.monotonic(), None
    while True:
        detail = http.get(f"/studies/{study_id}").raise_for_status().json()
        last = progress(detail, time.monotonic() - started, last)
        if StudyStatus(detail["status"]).finished:
            break
        time.sleep(poll)
    print(file=sys.stderr)


def results(http: httpx.Client, study_id: str, seconds: float) -> int:
    """Print the trials, the per-cell summary and the best; 1 when nothing completed."""
    trials = all_trials(http, study_id, curves=False)  # the tables need no curves
    best = http.get(f"/studies/{study_id}/best").raise_for_status().json()
    print(format_results(trials, best, seconds))
    return 0 if best["best"] is not None else 1


class ServerExited(RuntimeError):
    """The server process being waited for ended before it answered."""


def wait_until_up(
    url: str, timeout: float, process: Popen[Any] | None = None, poll: float = 0.3
) -> None:
    """Poll GET /health until it answers 200 (the one "wait until healthy" loop: the CLI,
    the tests and the benchmarks use it). Raises ServerExited if `process` (a Popen)
    ends first, TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not is_up(url):
        if process is not None and process.poll() is not None:
            raise ServerExited(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy after {timeout:.0f}s")
        time.sleep(poll)


def cancel(http: httpx.Client, study_id: str) -> dict[str, Any]:
    """POST /studies/{id}/cancel; returns the study's detail."""
    return http.post(f"/studies/{study_id}/cancel", timeout=10).raise_for_status().json()


def wait_stopped(http: httpx.Client, study_id: str, timeout: float, poll: float = 0.5) -> bool:
    """Wait (at most `timeout` s) until no trial of the study is QUEUED or RUNNING."""
    deadline = time.monotonic() + timeout
    while True:
        detail = http.get(f"/studies/{study_id}", timeout=10).raise_for_status().json()
        if detail["counts"]["RUNNING"] == 0 and detail["counts"]["QUEUED"] == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)


def cancel_command(url: str, study_id: str, token: bool) -> str:
    """The shell line that cancels a study (the token is referred to, never printed)."""
    auth = ' -H "Authorization: Bearer $SAMSWEEP_API_TOKEN"' if token else ""
    return f"curl -X POST{auth} {url}/studies/{study_id}/cancel"


def all_trials(http: httpx.Client, study_id: str, curves: bool = True) -> list[dict[str, Any]]:
    """Every trial of a study, page by page (GET /studies/{id}/trials is paginated)."""
    trials: list[dict[str, Any]] = []
    while True:
        page = (
            http.get(
                f"/studies/{study_id}/trials",
                params={"limit": 1000, "offset": len(trials), "curves": curves},
            )
            .raise_for_status()
            .json()
        )
        trials += page["trials"]
        if not page["trials"] or len(trials) >= page["total"]:
            return trials
