"""`samsweep run`: submit a spec, follow it, print the results; start the embedded server
for the duration if none answers, and on Ctrl-C (or SIGTERM, SIGHUP) undo what only this
command would have left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from samsweep.cli.processes import UP_STOP_GRACE, terminate_with_parent

if TYPE_CHECKING:
    from samsweep.client import Client

# httpx and the client are imported where used: `samsweep worker` and `api` never need them.

# `run` interrupted: how long it waits for the cancelled study's running trials to stop.
CANCEL_WAIT = 60.0


class Interrupted(BaseException):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP during `samsweep run`. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

# What signal.signal takes and returns (typeshed's private _HANDLER).
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Signals:
    """While active, each stop signal raises Interrupted in the main thread, except inside
    `deferred()`: there the first one waits for the block to end (a request in flight is
    answered, so its effect is known) and only a further one raises at once."""

    def __init__(self) -> None:
        self.first: int | None = None
        self._deferring = False
        self._pending: int | None = None
        self._previous: dict[int, _Handler] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *_: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.first is None:
            self.first = signum
        if self._deferring and self._pending is None:
            self._pending = signum
            return
        raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring, self._pending = True, None
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            raise Interrupted(self._pending)

    def ignore(self) -> None:
        """The last step of a cleanup: further signals have nothing left to hurry."""
        if self._previous:
            for s in STOP_SIGNALS:
                signal.signal(s, signal.SIG_IGN)


def say(message: str) -> None:
    print(f"samsweep: {message}", file=sys.stderr, flush=True)


def follow_study(api: Client, study_id: str, poll: float = 1.0) -> None:
    """Show the study's progress until it is complete or cancelled."""
    from samsweep.cli.tables import ProgressView

    with ProgressView() as view:
        api.wait(study_id, poll=poll, on_progress=view.update)


def results(api: Client, study_id: str, seconds: float, embedded: bool = False) -> int:
    """Print the trials, the report, the best cell and the study's page; 1 when nothing
    completed. `embedded`: the server stops with this command, so say how to reopen it."""
    from samsweep.cli.tables import (
        best_lines,
        console,
        report_renderables,
        trials_table,
    )

    trials = api.trials(study_id, curves=False)  # the tables need no curves
    report, best = api.report(study_id), api.best(study_id)
    out = console()
    for r in [trials_table(trials), *report_renderables(report), "", *best_lines(best)]:
        out.print(r)
    complete = best.counts.get("COMPLETE", 0)
    out.print(f"{len(trials)} trials, {complete} complete, in {seconds:.0f}s")
    page = api.page_url(study_id)
    if embedded:  # the embedded server stops with `run`: its files stay in the state dir
        page += "  (served while `samsweep up` runs: start it to open the page)"
    out.print(f"page: {page}")
    return 0 if best.best is not None else 1


class Run:
    """One `samsweep run`: what it started and submitted, so an interrupt can undo it."""

    def __init__(self, url: str, token: str | None, state_dir: Path, timeout: float = 30.0) -> None:
        self.url, self.token, self.state_dir = url, token, state_dir
        self.timeout = timeout
        self.server: subprocess.Popen | None = None
        self.study_id: str | None = None
        self.finished = False

    def submit_and_follow(self, spec: dict, follow: bool, signals: Signals, url_given: bool) -> int:
        from samsweep import client

        try:
            if not client.is_up(self.url):
                if url_given:
                    say(f"no samsweep API answers at {self.url}")
                    return 1
                if not follow:  # the server would stop at once, leaving the study for later
                    say(
                        f"no samsweep API answers at {self.url}, and --no-follow needs one that"
                        " outlives this command: start `samsweep up` first"
                    )
                    return 1
                self.start_server()
            with client.Client(self.url, self.token, timeout=self.timeout) as api:
                # A Ctrl-C during the POST waits for its answer: the study's id is then
                # known, so the study can be cancelled (or named) rather than lost.
                with signals.deferred():
                    created = api.submit(spec)
                    self.study_id = created.id
                page = api.page_url(created.id)
                say(f"study {created.id}: {created.n_trials} trials; page: {page}")
                if not follow:
                    print(self.study_id)
                    return 0
                started = time.monotonic()
                follow_study(api, self.study_id)
                self.finished = True
                elapsed = time.monotonic() - started
                return results(api, self.study_id, elapsed, embedded=self.server is not None)
        except client.ApiError as e:
            say(f"the API at {self.url} answered {e}")
            return 1
        except client.Unreachable as e:
            say(f"lost the API at {self.url}: {type(e.error).__name__}: {e.error}")
            return 1
        except client.ClientError as e:  # not a samsweep answer, or not a URL
            say(str(e))
            return 1

    def start_server(self) -> None:
        import httpx

        from samsweep import client

        api = httpx.URL(self.url)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "up.log"
        say(f"starting the embedded samsweep at {self.url} (log: {log_path})")
        with open(log_path, "ab") as log:
            self.server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "samsweep.cli",
                    "up",
                    f"--host={api.host}",
                    f"--port={api.port or 80}",
                    f"--parent-pid={os.getpid()}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C at the terminal reaches this process only, which
                # then cancels the study while the server still answers, and stops it.
                start_new_session=True,
                # Killed without cleaning up (SIGKILL), this process still stops it.
                preexec_fn=terminate_with_parent(),
            )
        try:
            client.wait_until_up(self.url, timeout=120, process=self.server, poll=0.5)
        except (client.ServerExited, TimeoutError):
            raise SystemExit(
                f"samsweep: the embedded server did not start; see {log_path}"
            ) from None

    def interrupted(self, signals: Signals) -> None:
        """After the first stop signal: cancel what only this command would have run."""
        from samsweep import client

        if sys.stderr.isatty():
            print(file=sys.stderr)  # end the progress bar's line
        sid = self.study_id
        if sid is None:
            say("interrupted before the study was submitted")
            return
        if self.finished:
            say(f"interrupted; study {sid} had finished")
            return
        hint = client.cancel_command(self.url, sid, token=bool(self.token))
        if self.server is None:
            say(f"interrupted; study {sid} keeps running on {self.url}. To cancel it:\n  {hint}")
            return
        say(f"interrupted; cancelling study {sid} (this command started the server it runs on)")
        cancelled = False
        try:
            with client.Client(self.url, self.token, timeout=self.timeout) as api:
                with signals.deferred():
                    detail = api.cancel(sid)
                    cancelled = True
                running = detail.counts.get("RUNNING", 0)
                if not running:
                    say(f"cancelled study {sid}")
                    return
                say(
                    f"cancelled study {sid}; waiting up to {CANCEL_WAIT:.0f}s for its {running}"
                    " running trial(s) to stop at the end of their epoch (Ctrl-C again: stop now)"
                )
                if not api.wait_stopped(sid, CANCEL_WAIT):
                    say(
                        "a trial is still running; it stops at its next epoch boundary when"
                        " `samsweep up` runs again"
                    )
        except Interrupted:
            say(f"{'cancelled study ' + sid + '; ' if cancelled else ''}not waiting any longer")
        except client.ClientError as e:
            say(
                f"could not cancel study {sid} ({e}); cancel it with `samsweep up` running:"
                f"\n  {hint}"
            )

    def stop_server(self, signals: Signals) -> None:
        server = self.server
        if server is None or server.poll() is not None:
            return
        if signals.first is not None:
            say("stopping the embedded server (Ctrl-C again: kill it)")
        try:
            server.terminate()  # `up` stops uvicorn, then its worker (warm shutdown)
            server.wait(timeout=UP_STOP_GRACE + 5)
        except (Interrupted, subprocess.TimeoutExpired):
            signals.ignore()
            server.kill()  # the kernel then sends its worker SIGTERM (PR_SET_PDEATHSIG)
            server.wait()
