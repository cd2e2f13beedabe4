"""The samsweep API over HTTP: `Client`, the one code path the CLI, the tests and users'
scripts call it through.

    from samsweep import Client

    with Client("http://127.0.0.1:8000", token) as api:
        study = api.submit(spec)
        api.wait(study.id)
        report = api.report(study.id)        # samsweep.report.Report
        df = report.to_dataframe()           # with pandas installed

Every error answer of the API becomes an `ApiError` (a subclass per status: NotFound,
Unauthorized, InvalidRequest, Conflict, ServerError) carrying the API's code, message
and field; a server that cannot be reached is `Unreachable`. Reads are retried on a
lost connection and on 502/503/504 (honouring Retry-After); a submission is retried
only with an Idempotency-Key (the client makes one when none is given), so a retry
never creates a second study; a cancel is retried (cancelling twice is cancelling once).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from samsweep.client.models import Best, StudyCreated, StudyDetail, StudySummary, Trial, Trials
from samsweep.ids import is_study_id
from samsweep.report import Report

RETRY_STATUSES = frozenset({502, 503, 504})
PAGE = 1000  # the API's largest page


class ClientError(Exception):
    """Anything the client raises about the API: an error answer or no answer."""


class ApiError(ClientError):
    """The API answered with an error status; `code`, `message` and `field` are the API's
    own (`{"error": {"code", "message", "field", "details"}}`)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        self.status, self.code, self.message, self.field = status, code, message, field
        self.details = details or []
        self.method, self.path = method, path
        where = f" ({field})" if field and field not in message else ""
        super().__init__(f"{status} {code}: {message}{where}")


class InvalidRequest(ApiError):
    """400, 413, 422: the request (a spec, a parameter) was refused; see `field`/`details`."""


class Unauthorized(ApiError):
    """401, 403: no token, or a wrong one."""


class NotFound(ApiError):
    """404: no such study (or not yours)."""


class Conflict(ApiError):
    """409: e.g. a stored spec this version of samsweep cannot read."""


class ServerError(ApiError):
    """5xx: the API (or its database) failed; reads were retried before this was raised."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
}


class Unreachable(ClientError):
    """No answer: the connection failed or timed out (after the retries that were safe)."""

    def __init__(self, url: str, error: Exception) -> None:
        super().__init__(f"cannot reach the samsweep API at {url}: {type(error).__name__}: {error}")
        self.url, self.error = url, error


class NotAStudyId(ClientError, ValueError):
    """Refused before any request: not 32 hex digits, so no study has it."""


def _checked(study_id: str) -> str:
    """`study_id` if it is one, checked before any URL is built with it: an id like
    `../x` or `a?b` would reach another path or query of the server."""
    if not is_study_id(study_id):
        raise NotAStudyId(f"not a study id (32 hex digits): {study_id[:64]!r}")
    return study_id


def error_from(response: httpx.Response) -> ApiError:
    """The typed exception for an error answer (a proxy's non-JSON page included)."""
    status = response.status_code
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    request = response.request
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        field, details = error.get("field"), error.get("details") or []
    except (ValueError, KeyError, TypeError):
        code, message, field, details = f"http_{status}", response.text.strip()[:300], None, []
        message = message or response.reason_phrase
    return kind(status, code, message, field, details, request.method, request.url.path)


class Client:
    """The samsweep HTTP API, typed. `url` is the API's root (SAMSWEEP_API_URL), `token`
    its bearer token (SAMSWEEP_API_TOKEN) where the API has tokens configured."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retries = retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers=headers, transport=transport
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r}{', token=***' if self.token else ''})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the routes ---------------------------------------------------------------------

    def is_up(self) -> bool:
        """GET /health answers 200 (no retries, no exception)."""
        try:
            return self._http.get("/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def studies(self) -> list[StudySummary]:
        """Every study, newest first (GET /studies, page by page)."""
        out: list[StudySummary] = []
        while True:
            page = self._get("/studies", params={"limit": PAGE, "offset": len(out)}).json()
            out += [StudySummary.model_validate(s) for s in page["items"]]
            if not page["items"] or len(out) >= page["total"]:
                return out

    def study(self, study_id: str) -> StudyDetail:
        """Status, counts per trial state, progress, timings and the spec."""
        return StudyDetail.model_validate(self._get(f"/studies/{_checked(study_id)}").json())

    def trials(self, study_id: str, curves: bool = True) -> Trials:
        """Every trial in grid order, page by page; `curves=False` leaves out the per-epoch
        curves (much less to read)."""
        out = Trials()
        while True:
            page = self._get(
                f"/studies/{_checked(study_id)}/trials",
                params={"limit": PAGE, "offset": len(out), "curves": curves},
            ).json()
            out += [Trial.model_validate(t) for t in page["trials"]]
            if not page["trials"] or len(out) >= page["total"]:
                return out

    def best(self, study_id: str) -> Best:
        """The best grid cell by its mean objective over seeds (`cell`), the single best
        trial (`best`), and which metric selected (`objective`, `selected_on_test`)."""
        return Best.model_validate(self._get(f"/studies/{_checked(study_id)}/best").json())

    def report(self, study_id: str) -> Report:
        """The generalization-gap report (samsweep.report.Report; `.to_dataframe()`)."""
        return Report.model_validate(self._get(f"/studies/{_checked(study_id)}/report").json())

    def report_csv(self, study_id: str) -> str:
        """The report as CSV text (one line per row, samsweep.report.CSV_COLUMNS)."""
        return self._get(f"/studies/{_checked(study_id)}/report", params={"format": "csv"}).text

    def report_json(self, study_id: str) -> dict[str, Any]:
        """The report's JSON as the API sends it (for export)."""
        return self._get(f"/studies/{_checked(study_id)}/report").json()

    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> StudyCreated:
        """POST /studies. The same key (per owner) with the same spec returns the study it
        created (`replayed` is then true); without a key, one is made for this call, so
        the client's own retries never create two studies."""
        key = idempotency_key or f"samsweep-client-{uuid.uuid4()}"
        r = self._request(
            "POST", "/studies", json=spec, headers={"Idempotency-Key": key}, retry=True
        )
        return StudyCreated.model_validate({**r.json(), "replayed": r.status_code == 200})

    def cancel(self, study_id: str) -> StudyDetail:
        """Cancel: queued trials now, running ones at their next epoch; results stay."""
        r = self._request("POST", f"/studies/{_checked(study_id)}/cancel", retry=True)
        return StudyDetail.model_validate(r.json())

    # --- helpers ------------------------------------------------------------------------

    def page_url(self, study_id: str) -> str:
        """The study's page in a browser."""
        return f"{self.url}/studies/{_checked(study_id)}/page"

    def watch(self, study_id: str, poll: float = 1.0) -> Iterator[StudyDetail]:
        """The study's detail every `poll` seconds, the last one finished (complete or
        cancelled)."""
        while True:
            detail = self.study(study_id)
            yield detail
            if detail.finished:
                return
            time.sleep(poll)

    def wait(
        self,
        study_id: str,
        poll: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[StudyDetail], object] | None = None,
    ) -> StudyDetail:
        """Block until the study is finished; returns its last detail. `on_progress` sees
        each poll's detail; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for detail in self.watch(study_id, poll):
            if on_progress is not None:
                on_progress(detail)
            if detail.finished:
                return detail
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"study {study_id} not finished after {timeout:.0f}s")
        raise AssertionError("unreachable")  # watch() ends on a finished detail

    def wait_stopped(self, study_id: str, timeout: float, poll: float = 0.5) -> bool:
        """Wait (at most `timeout` s) until no trial of the study is QUEUED or RUNNING."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.study(study_id).counts
            if counts.get("RUNNING", 0) == 0 and counts.get("QUEUED", 0) == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)

    # --- the one request loop -----------------------------------------------------------

    def _get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        return self._request("GET", path, params=params, retry=True)

    def _request(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> httpx.Response:
        """One request; retried (`retry`: it is safe to) on a lost connection and on
        502/503/504, with a growing pause or the server's Retry-After. A connection that
        was never made is retried whatever the request: nothing was sent."""
        attempt = 0
        while True:
            try:
                r = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt >= self.retries:
                    raise Unreachable(self.url, e) from None
            except httpx.TransportError as e:
                if not retry or attempt >= self.retries:
                    raise Unreachable(self.url, e) from None
            else:
                if r.status_code < 400:
                    return r
                if not (retry and r.status_code in RETRY_STATUSES and attempt < self.retries):
                    raise error_from(r)
                pause = _retry_after(r)
                if pause is not None:
                    time.sleep(pause)
                    attempt += 1
                    continue
            time.sleep(min(0.25 * 2**attempt, 4.0))
            attempt += 1


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return min(float(r.headers["Retry-After"]), 10.0)
    except (KeyError, ValueError):
        return None


# --- for processes that start a server and wait for it ------------------------------------

if TYPE_CHECKING:
    from subprocess import Popen


def is_up(url: str) -> bool:
    with Client(url, retries=0) as api:
        return api.is_up()


class ServerExited(RuntimeError):
    """The server process being waited for ended before it answered."""


def wait_until_up(
    url: str, timeout: float, process: Popen[Any] | None = None, poll: float = 0.3
) -> None:
    """Poll GET /health until it answers 200 (the one "wait until healthy" loop: the CLI,
    the tests and the benchmarks use it). Raises ServerExited if `process` (a Popen)
    ends first, TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with Client(url, retries=0) as api:
        while not api.is_up():
            if process is not None and process.poll() is not None:
                raise ServerExited(f"{process.args!r} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not healthy after {timeout:.0f}s")
            time.sleep(poll)


def cancel_command(url: str, study_id: str, token: bool) -> str:
    """The shell line that cancels a study (the token is referred to, never printed)."""
    auth = ' -H "Authorization: Bearer $SAMSWEEP_API_TOKEN"' if token else ""
    return f"curl -X POST{auth} {url}/studies/{_checked(study_id)}/cancel"
