"""The samsweep API over HTTP: `Client`, the one code path the CLI, the tests and users'
scripts call it through.

    from samsweep import Client

    with Client("http://127.0.0.1:8000", token) as api:
        study = api.submit(spec)
        api.wait(study.id)
        report = api.report(study.id)        # samsweep.core.report.Report
        df = report.to_dataframe()           # with pandas installed

Every error answer of the API becomes an `ApiError` (a subclass per status: NotFound,
Unauthorized, InvalidRequest, Conflict, ServerError) carrying the API's code, message
and field; a server that cannot be reached is `Unreachable`; an answer that is not the
API's (HTML from a proxy, JSON of another shape, a body over `max_answer_bytes`) is
`BadAnswer`; a URL that is not one is `BadUrl`. All are `ClientError`s, nothing else
escapes a call for anything the server does. Reads are retried on a
lost connection and on 502/503/504 (honouring Retry-After); a submission is retried
only with an Idempotency-Key (the client makes one when none is given), so a retry
never creates a second study; so is a patch (`extend`, `patch`); a cancel, a retry and a
delete are retried (doing them twice is doing them once).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import httpx

from samsweep.core.ids import is_study_id
from samsweep.core.report import Report
from samsweep.core.wire import (
    Best,
    StudyCreated,
    StudyDetail,
    StudyExtended,
    StudyRetried,
    StudySummary,
    TrialPublic,
    Trials,
)

RETRY_STATUSES = frozenset({502, 503, 504})
PAGE = 1000  # the API's largest page
# The largest answer read: a page of 1000 trials with long curves is tens of MB; a
# server that sends more (or says it will) is not answering as samsweep does.
MAX_ANSWER_BYTES = 256 * 2**20
_SHOWN = 300  # characters of a server's text repeated in a message


def one_line(text: str, limit: int = _SHOWN) -> str:
    """`text` as one line of printable characters (a server's text goes to a terminal:
    no newline, no escape sequence), at most `limit` characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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
        where = f" ({one_line(field, 80)})" if field and field not in message else ""
        super().__init__(f"{status} {one_line(code, 80)}: {one_line(message)}{where}")


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


class BadAnswer(ClientError):
    """The server answered, but not as the samsweep API does: not JSON, JSON of another
    shape, or a body larger than the client reads (a proxy's page, another service)."""

    def __init__(self, url: str, what: str) -> None:
        super().__init__(f"{url} did not answer as a samsweep API: {what}")
        self.url = url


class BadUrl(ClientError, ValueError):
    """The server's URL is not an http(s) URL."""


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
        code, field, details = f"http_{status}", None, []
        kind_of = one_line(response.headers.get("content-type", "no content type"), 60)
        text = one_line(response.text, 120) if "html" not in kind_of else "an HTML page"
        message = f"{response.reason_phrase or 'error'} ({kind_of}: {text or 'empty'})"
    return kind(status, code, message, field, details, request.method, request.url.path)


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _answers(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """A route's answer that does not decode (not JSON, another shape) is BadAnswer."""

    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except ClientError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            client = args[0]
            url = client.url if isinstance(client, Client) else "the server"
            raise BadAnswer(url, f"{type(e).__name__}: {one_line(str(e), 160)}") from None

    return call


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
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.retries = retries
        self.max_answer_bytes = max_answer_bytes
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            parsed = httpx.URL(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise httpx.InvalidURL("needs http:// or https:// and a host")
            self._http = httpx.Client(
                base_url=self.url, timeout=timeout, headers=headers, transport=transport
            )
        except (httpx.InvalidURL, TypeError, ValueError) as e:
            raise BadUrl(f"not a server URL: {one_line(url, 100)!r} ({e})") from None

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
            return self._send("GET", "/health", timeout=2).status_code == 200
        except (httpx.HTTPError, BadAnswer):
            return False

    @_answers
    def studies(self) -> list[StudySummary]:
        """Every study, newest first (GET /studies, page by page)."""
        out: list[StudySummary] = []
        while True:
            page = self._get("/studies", params={"limit": PAGE, "offset": len(out)}).json()
            items, total = _page(page, "items")
            out += [StudySummary.model_validate(s) for s in items]
            if not items or len(out) >= total:
                return out

    @_answers
    def study(self, study_id: str) -> StudyDetail:
        """Status, counts per trial state, progress, timings and the spec."""
        return StudyDetail.model_validate(self._get(f"/studies/{_checked(study_id)}").json())

    @_answers
    def trials(self, study_id: str, curves: bool = True) -> Trials:
        """Every trial in grid order, page by page; `curves=False` leaves out the per-epoch
        curves (much less to read)."""
        out = Trials()
        while True:
            page = self._get(
                f"/studies/{_checked(study_id)}/trials",
                params={"limit": PAGE, "offset": len(out), "curves": curves},
            ).json()
            items, total = _page(page, "trials")
            out += [TrialPublic.model_validate(t) for t in items]
            if not items or len(out) >= total:
                return out

    @_answers
    def best(self, study_id: str) -> Best:
        """The best grid cell by its mean objective over seeds (`cell`), the single best
        trial (`best`), and which metric selected (`objective`, `selected_on_test`)."""
        return Best.model_validate(self._get(f"/studies/{_checked(study_id)}/best").json())

    @_answers
    def report(self, study_id: str) -> Report:
        """The generalization-gap report (samsweep.core.report.Report; `.to_dataframe()`)."""
        return Report.model_validate(self._get(f"/studies/{_checked(study_id)}/report").json())

    @_answers
    def report_csv(self, study_id: str) -> str:
        """The report as CSV text (one line per row, samsweep.core.report.CSV_COLUMNS)."""
        r = self._get(f"/studies/{_checked(study_id)}/report", params={"format": "csv"})
        if not r.headers.get("content-type", "").startswith("text/csv"):
            raise TypeError(f"a {r.headers.get('content-type', 'untyped')} answer, not text/csv")
        return r.text

    @_answers
    def report_json(self, study_id: str) -> dict[str, Any]:
        """The report's JSON as the API sends it (for export)."""
        data = self._get(f"/studies/{_checked(study_id)}/report").json()
        Report.model_validate(data)  # a report's shape, else ValueError: BadAnswer
        return data

    @_answers
    def submit(self, spec: dict[str, Any], idempotency_key: str | None = None) -> StudyCreated:
        """POST /studies. The same key (per owner) with the same spec returns the study it
        created (`replayed` is then true); without a key, one is made for this call, so
        the client's own retries never create two studies."""
        key = idempotency_key or f"samsweep-client-{uuid.uuid4()}"
        r = self._request(
            "POST", "/studies", json=spec, headers={"Idempotency-Key": key}, retry=True
        )
        return StudyCreated.model_validate({"replayed": r.status_code == 200, **r.json()})

    @_answers
    def cancel(self, study_id: str) -> StudyDetail:
        """Cancel: queued trials now, running ones at their next epoch; results stay."""
        r = self._request("POST", f"/studies/{_checked(study_id)}/cancel", retry=True)
        return StudyDetail.model_validate(r.json())

    @_answers
    def patch(
        self, study_id: str, patch: dict[str, Any], idempotency_key: str | None = None
    ) -> StudyExtended:
        """PATCH /studies/{id} with `patch` as the API takes it: the spec's shape, only
        what changes, each list given whole (`{"seeds": [0, 1, 2]}`,
        `{"max_concurrent_trials": None}` to remove the bound). Retried under an
        Idempotency-Key (made for this call when none is given)."""
        key = idempotency_key or f"samsweep-client-{uuid.uuid4()}"
        r = self._request("PATCH", f"/studies/{_checked(study_id)}", json=patch,
                          headers={"Idempotency-Key": key}, retry=True)  # fmt: skip
        return StudyExtended.model_validate(r.json())

    def extend(
        self,
        study_id: str,
        *,
        seeds: list[int] | None = None,
        max_concurrent_trials: int | None = None,
        unbounded: bool = False,
        priority: int | None = None,
        idempotency_key: str | None = None,
        **axes: list[Any],
    ) -> StudyExtended:
        """Grow a study by these values: `extend(id, seeds=[3, 4], rho=[0.2])` adds seeds 3
        and 4 and ρ = 0.2 to what the study has (values it has already are skipped), and
        sets `max_concurrent_trials` / `priority` when given (`unbounded` removes the
        bound on running trials). Grid axes are keyword
        arguments named as in the spec's `search` (rho, batch_size, base_optimizer,
        sam_variant, m). Only the new cells' trials run; nothing is ever taken away."""
        spec = self.study(study_id).spec
        patch: dict[str, Any] = {}
        if seeds:
            patch["seeds"] = _grown(spec.get("seeds", [0]), seeds)
        search = spec.get("search", {})
        grown = {axis: _grown(search.get(axis, []), values) for axis, values in axes.items()}
        if grown:
            patch["search"] = grown
        if max_concurrent_trials is not None or unbounded:
            patch["max_concurrent_trials"] = None if unbounded else max_concurrent_trials
        if priority is not None:
            patch["priority"] = priority
        return self.patch(study_id, patch, idempotency_key=idempotency_key)

    @_answers
    def retry(self, study_id: str, infeasible: bool = False) -> StudyRetried:
        """Queue the study's FAILED and CANCELLED trials again (INFEASIBLE ones too with
        `infeasible`), each for a fresh attempt; a cancelled study resumes."""
        r = self._request("POST", f"/studies/{_checked(study_id)}/retry",
                          params={"infeasible": infeasible}, retry=True)  # fmt: skip
        return StudyRetried.model_validate(r.json())

    def delete(self, study_id: str, missing_ok: bool = False) -> None:
        """Delete the study: its trials stop at their next epoch; its rows, Optuna study
        and checkpoints are removed. NotFound if there is none (unless `missing_ok`:
        then a retried DELETE whose first answer was lost is not an error either)."""
        try:
            self._request("DELETE", f"/studies/{_checked(study_id)}", retry=True)
        except NotFound:
            if not missing_ok:
                raise

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
                r = self._send(method, path, **kwargs)
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

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, its answer read whole but never past `max_answer_bytes` (said by
        Content-Length or counted as it arrives, decompressed)."""
        request = self._http.build_request(method, path, **kwargs)
        response = self._http.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_answer_bytes:
                raise BadAnswer(self.url, f"an answer of {declared} bytes (Content-Length)")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > self.max_answer_bytes:
                    raise BadAnswer(self.url, f"an answer over {self.max_answer_bytes} bytes")
        except httpx.DecodingError as e:  # a Content-Encoding its body does not follow
            raise BadAnswer(self.url, f"an undecodable answer ({one_line(str(e), 100)})") from None
        finally:
            response.close()
        # The body as read (decoded): a new response without the encoding headers.
        drop = {"content-encoding", "content-length", "transfer-encoding"}
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in drop]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=bytes(body),
            request=request,
            extensions=response.extensions,
        )


def _grown(current: list[Any], more: list[Any]) -> list[Any]:
    """`current` and then each value of `more` it does not have."""
    return [*current, *(v for v in dict.fromkeys(more) if v not in current)]


def _page(page: Any, key: str) -> tuple[list[Any], int]:
    """A page's items and total; TypeError if the answer is not shaped as one."""
    items, total = page[key], page["total"]
    if not isinstance(items, list) or type(total) is not int:
        raise TypeError(f"not a page of {key}: {key} and total must be a list and an int")
    return items, total


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
